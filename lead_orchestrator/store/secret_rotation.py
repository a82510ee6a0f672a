"""Bulk work on the stored secrets, run with the owner's connection (all tenants):

- `encrypt_plaintext_secrets`: the migration step for rows written before encryption
  at rest existed; runs after every `apply_migrations` and does nothing once done.
- `rotate_secrets`: re-encrypts every secret under the first key in force (the
  `rotate-encryption-key` command), then checks each one reads with that key alone.

The secrets live in three tables (`SECRET_COLUMNS`): the shops' messaging keys in
`tenants`, their ShopMonkey credentials in `shopmonkey_credentials`, and the
deployment's CRM partner apps in `crm_apps`. Each run is one transaction that locks the
rows it rewrites, so a shop updated at the same moment is neither lost nor left under an
old key.
"""
from __future__ import annotations

from collections import Counter

import psycopg
from psycopg import sql

from lead_orchestrator.store.secret_box import SecretBox, SecretKeyError

# table -> (its key column, {column: the name counts and messages use})
SECRET_COLUMNS = {
    "tenants": ("id", {"twilio_auth_token": "twilio_auth_token", "sendgrid_api_key": "sendgrid_api_key"}),
    "shopmonkey_credentials": ("tenant_id", {"api_key": "shopmonkey_api_key", "webhook_secret": "webhook_secret"}),
    "crm_apps": ("crm", {"client_secret": "crm_app_client_secret"}),
}


def _rewrite(conn: psycopg.Connection, box: SecretBox, *, only_plaintext: bool) -> Counter:
    counts: Counter = Counter()
    with conn.transaction():
        for table, (key, names) in SECRET_COLUMNS.items():
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in names)
            where = sql.SQL("true")
            if only_plaintext:  # lock only the rows that need it: this runs at every start
                where = sql.SQL(" OR ").join(sql.SQL("{} NOT LIKE 'fernet:%%'").format(sql.Identifier(c))
                                             for c in names)
            rows = conn.execute(sql.SQL("SELECT {key}, {cols} FROM {table} WHERE {where} ORDER BY {key} FOR UPDATE")
                                .format(key=sql.Identifier(key), cols=columns, table=sql.Identifier(table),
                                        where=where)).fetchall()
            for row in rows:
                changed = {}
                for column, name in names.items():
                    stored = row[column]
                    if stored is None or (only_plaintext and box.is_encrypted(stored)):
                        continue
                    changed[column] = box.rotate(stored)
                    counts[name] += 1
                if changed:
                    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in changed)
                    conn.execute(sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
                        sql.Identifier(table), sets, sql.Identifier(key)), (*changed.values(), row[key]))
    return counts


def encrypt_plaintext_secrets(conn: psycopg.Connection, box: SecretBox) -> Counter:
    """Encrypts the secrets still stored in plain text; returns how many per field."""
    return _rewrite(conn, box, only_plaintext=True)


def rotate_secrets(conn: psycopg.Connection, box: SecretBox) -> Counter:
    """Re-encrypts every secret under the box's first key; raises SecretKeyError if any
    stored value cannot be read with the keys given (nothing is changed then)."""
    counts = _rewrite(conn, box, only_plaintext=False)
    for table, (_, names) in SECRET_COLUMNS.items():
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in names)
        for row in conn.execute(sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(table))).fetchall():
            for column, name in names.items():
                if row[column] is not None and not box.readable_with_primary(row[column]):
                    raise SecretKeyError(f"a {name} is not readable with the new key after rotation")
    return counts
