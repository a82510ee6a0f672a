"""Bulk work on the stored shop secrets, run with the owner's connection (all tenants):

- `encrypt_plaintext_secrets`: the migration step for rows written before encryption
  at rest existed; runs after every `apply_migrations` and does nothing once done.
- `rotate_secrets`: re-encrypts every secret under the first key in force (the
  `rotate-encryption-key` command), then checks each one reads with that key alone.

Each runs in one transaction that locks the tenant rows it rewrites, so a shop
updated at the same moment is neither lost nor left under an old key.
"""
from __future__ import annotations

from collections import Counter

import psycopg
from psycopg import sql

from lead_orchestrator.store.secret_box import SecretBox, SecretKeyError
from lead_orchestrator.store.shops import SECRET_FIELDS


def _rewrite(conn: psycopg.Connection, box: SecretBox, *, only_plaintext: bool) -> Counter:
    counts: Counter = Counter()
    columns = sql.SQL(", ").join(sql.Identifier(f) for f in SECRET_FIELDS)
    with conn.transaction():
        where = sql.SQL("true")
        if only_plaintext:  # lock only the rows that need it: this runs at every start
            where = sql.SQL(" OR ").join(sql.SQL("{} NOT LIKE 'fernet:%%'").format(sql.Identifier(f))
                                         for f in SECRET_FIELDS)
        rows = conn.execute(sql.SQL("SELECT id, {} FROM tenants WHERE {} ORDER BY id FOR UPDATE")
                            .format(columns, where)).fetchall()
        for row in rows:
            changed = {}
            for name in SECRET_FIELDS:
                stored = row[name]
                if stored is None or (only_plaintext and box.is_encrypted(stored)):
                    continue
                changed[name] = box.rotate(stored)
                counts[name] += 1
            if changed:
                sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n in changed)
                conn.execute(sql.SQL("UPDATE tenants SET {} WHERE id = %s").format(sets),
                             (*changed.values(), row["id"]))
    return counts


def encrypt_plaintext_secrets(conn: psycopg.Connection, box: SecretBox) -> Counter:
    """Encrypts the secrets still stored in plain text; returns how many per field."""
    return _rewrite(conn, box, only_plaintext=True)


def rotate_secrets(conn: psycopg.Connection, box: SecretBox) -> Counter:
    """Re-encrypts every secret under the box's first key; raises SecretKeyError if any
    stored value cannot be read with the keys given (nothing is changed then)."""
    counts = _rewrite(conn, box, only_plaintext=False)
    columns = sql.SQL(", ").join(sql.Identifier(f) for f in SECRET_FIELDS)
    for row in conn.execute(sql.SQL("SELECT {} FROM tenants").format(columns)).fetchall():
        for name in SECRET_FIELDS:
            if row[name] is not None and not box.readable_with_primary(row[name]):
                raise SecretKeyError(f"a {name} is not readable with the new key after rotation")
    return counts
