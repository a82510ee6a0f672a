"""Tenant isolation enforced by PostgreSQL: what a connection acting as `lead_app` can
see and change with no tenant, with its own tenant, and against another tenant; the
catalog facts that keep it so as tables are added; and the same behaviour when the
migrating user is not a superuser (as on an external server)."""
from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support import session_box
from lead_orchestrator.store.db import Database, NotAppRole
from lead_orchestrator.store.inbox import store_event
from lead_orchestrator.services.touches import set_opt_out
from lead_orchestrator.services.shop_clients import read_unsubscribe_token, unsubscribe_token
from tests.conftest import TENANT_TABLES

CHILD_TABLES = [t for t in TENANT_TABLES if t != "tenants"]
NOW = dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.timezone.utc)


def seed(conn, tenant_id: int) -> dict[str, int]:
    """One row in every tenant-owned table for `tenant_id`, written as the owner."""
    order_id = "o-" + uuid.uuid4().hex[:12]
    event = conn.execute(
        "INSERT INTO inbox_events (tenant_id, source, dedup_key, operation, table_name, object_id, payload) "
        "VALUES (%s, 'manual', %s, 'INSERT', 'order', %s, '{}') RETURNING id",
        (tenant_id, f"order:{order_id}:", order_id)).fetchone()["id"]
    lead = conn.execute(
        "INSERT INTO leads (tenant_id, order_id, status, source, first_seen_at, phone_e164, email) "
        "VALUES (%s, %s, 'active', 'manual', %s, '+15125550123', 'same@example.com') RETURNING id",
        (tenant_id, order_id, NOW)).fetchone()["id"]
    conn.execute("INSERT INTO contacts (tenant_id, channel, address) VALUES (%s, 'email', 'same@example.com') "
                 "ON CONFLICT DO NOTHING", (tenant_id,))
    conn.execute("INSERT INTO touches (tenant_id, lead_id, step, channel, status, due_at, send_after) "
                 "VALUES (%s, %s, 0, 'sms', 'scheduled', %s, %s)", (tenant_id, lead, NOW, NOW))
    conn.execute("INSERT INTO lead_events (tenant_id, lead_id, kind) VALUES (%s, %s, 'seeded')", (tenant_id, lead))
    conn.execute("INSERT INTO poll_state (tenant_id) VALUES (%s) ON CONFLICT DO NOTHING", (tenant_id,))
    return {"event": event, "lead": lead}


@pytest.fixture
def two_tenants(make_shop, admin):
    a, b = make_shop(), make_shop()
    return a, b, seed(admin, a.id), seed(admin, b.id)


def tenant_column(table: str) -> str:
    return "id" if table == "tenants" else "tenant_id"


def test_unscoped_select_as_the_app_role_sees_no_rows(db, two_tenants, admin):
    for table in TENANT_TABLES:
        assert admin.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] >= 2, table
    with db.system_tx() as conn:
        assert conn.execute("SELECT current_user AS u").fetchone()["u"] == "lead_app"
        for table in TENANT_TABLES:
            assert conn.execute(f"SELECT * FROM {table}").fetchall() == [], table


def test_select_in_a_tenant_transaction_sees_only_that_tenant(db, two_tenants, admin):
    a, b, _, _ = two_tenants
    with db.tenant_tx(a.id) as conn:
        for table in TENANT_TABLES:
            column = tenant_column(table)
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()  # deliberately no WHERE
            assert rows and {r[column] for r in rows} == {a.id}, table
            owner_count = admin.execute(f"SELECT count(*) AS n FROM {table} WHERE {column} = %s",
                                        (a.id,)).fetchone()["n"]
            assert len(rows) == owner_count, table
            # Asking for the other tenant by name finds nothing either.
            assert conn.execute(f"SELECT * FROM {table} WHERE {column} = %s", (b.id,)).fetchall() == [], table


def _fingerprint(admin) -> dict[str, str]:
    return {t: admin.execute(f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) AS h "
                             f"FROM {t} x").fetchone()["h"] for t in TENANT_TABLES}


def test_writes_with_no_tenant_fail_or_change_nothing(db, two_tenants, admin):
    a, _, rows_a, _ = two_tenants
    before = _fingerprint(admin)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.system_tx() as conn:
            store_event(conn, source="manual", operation="INSERT", table="order", data={"id": "x1"}, payload={})
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.system_tx() as conn:
            conn.execute("INSERT INTO contacts (tenant_id, channel, address) VALUES (%s, 'sms', '+15125550000')",
                         (a.id,))
    with db.system_tx() as conn:
        for table in CHILD_TABLES:
            assert conn.execute(f"UPDATE {table} SET tenant_id = tenant_id").rowcount == 0, table
            assert conn.execute(f"DELETE FROM {table}").rowcount == 0, table
    assert _fingerprint(admin) == before


def test_a_tenant_cannot_write_into_another(db, two_tenants, admin):
    a, b, rows_a, rows_b = two_tenants
    before = _fingerprint(admin)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # WITH CHECK
        with db.tenant_tx(a.id) as conn:
            conn.execute("INSERT INTO lead_events (tenant_id, kind) VALUES (%s, 'forged')", (b.id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # moving a row out of the tenant
        with db.tenant_tx(a.id) as conn:
            conn.execute("UPDATE leads SET tenant_id = %s WHERE id = %s", (b.id, rows_a["lead"]))
    with db.tenant_tx(a.id) as conn:
        assert conn.execute("UPDATE leads SET status = 'stopped' WHERE id = %s", (rows_b["lead"],)).rowcount == 0
        assert conn.execute("DELETE FROM touches WHERE lead_id = %s", (rows_b["lead"],)).rowcount == 0
        assert conn.execute("UPDATE inbox_events SET status = 'done' WHERE id = %s", (rows_b["event"],)).rowcount == 0
    assert _fingerprint(admin) == before


def test_the_app_role_cannot_create_or_change_shops(db, two_tenants):
    a, *_ = two_tenants
    attempts = [
        "UPDATE tenants SET name = 'x', crm = 'tekmetric' WHERE id = current_tenant_id()",
        "UPDATE shopmonkey_credentials SET webhook_secret = 'whsec_x' WHERE tenant_id = current_tenant_id()",
        "INSERT INTO tekmetric_credentials (tenant_id, shop_id) VALUES (current_tenant_id(), 1)",
        "DELETE FROM shopmonkey_credentials",
        "SELECT client_secret FROM crm_apps",  # the app's read goes through crm_app_credentials()
        "INSERT INTO tenants (slug, name) VALUES ('forged-shop', 'Forged')",
        "DELETE FROM tenants",
        "SELECT nextval('tenants_id_seq')",
    ]
    for statement in attempts:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with db.tenant_tx(a.id) as conn:
                conn.execute(statement)


def test_every_tenant_table_has_row_level_security(admin):
    """Guards tables added by later migrations: a table with a tenant_id column must
    have RLS enabled and a policy, and lead_app may touch no table without RLS."""
    tables = admin.execute(
        """SELECT c.relname, c.relrowsecurity,
                  EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy,
                  EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                          AND NOT a.attisdropped) AS has_tenant,
                  has_table_privilege('lead_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE') AS app_can_use
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')""").fetchall()
    by_name = {t["relname"]: t for t in tables}
    assert set(TENANT_TABLES) <= set(by_name)
    for t in tables:
        if t["has_tenant"] or t["relname"] == "tenants":
            assert t["relrowsecurity"] and t["has_policy"], f"{t['relname']} lacks row-level security"
        if t["app_can_use"]:
            assert t["relrowsecurity"], f"lead_app may use {t['relname']}, which has no row-level security"
    views = admin.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm') "
                          "AND has_table_privilege('lead_app', c.oid, 'SELECT') "
                          "AND NOT coalesce('security_invoker=true' = ANY(c.reloptions), false)").fetchall()
    # A view runs as its owner unless security_invoker is set: it would bypass RLS.
    assert views == [], f"views readable by lead_app without security_invoker: {views}"


def test_unique_keys_of_tenant_tables_include_the_tenant(admin):
    """A unique key without tenant_id would let one tenant learn another's values
    from conflicts; only the surrogate `id` may stand alone."""
    rows = admin.execute(
        """SELECT c.relname AS table, i.relname AS index,
                  array(SELECT a.attname FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum = ANY(x.indkey)) AS columns
             FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indisunique AND c.relname = ANY(%s)""", (CHILD_TABLES,)).fetchall()
    assert rows
    for r in rows:
        assert "tenant_id" in r["columns"] or r["columns"] == ["id"], r


def test_security_definer_functions_are_pinned_and_not_public(admin):
    funcs = admin.execute(
        """SELECT p.proname, p.proconfig,
                  has_function_privilege('lead_app', p.oid, 'EXECUTE') AS app,
                  EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) e
                           WHERE e.grantee = 0) AS public_exec
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND p.prosecdef""").fetchall()
    names = {f["proname"] for f in funcs}
    assert {"tenant_id_for_slug", "active_tenant_ids", "inbox_backlog", "claim_inbox_events"} <= names
    for f in funcs:
        assert "search_path=public, pg_temp" in (f["proconfig"] or []), f
        assert f["app"] and not f["public_exec"], f


def test_the_app_role_cannot_create_objects(admin):
    row = admin.execute("SELECT has_schema_privilege('lead_app', 'public', 'CREATE') AS c, "
                        "has_database_privilege('lead_app', current_database(), 'CREATE') AS d").fetchone()
    assert row == {"c": False, "d": False}


def test_the_tenant_does_not_outlive_its_transaction(database_url, two_tenants):
    a, *_ = two_tenants
    single = Database(database_url, min_size=1, max_size=1, name="one-connection", box=session_box()).open()
    try:
        with single.tenant_tx(a.id) as conn:
            assert conn.execute("SELECT current_tenant_id() AS t").fetchone()["t"] == a.id
            backend = conn.info.backend_pid
        with single.system_tx() as conn:
            assert conn.info.backend_pid == backend  # the same pooled connection
            assert conn.execute("SELECT current_tenant_id() AS t").fetchone()["t"] is None
            assert conn.execute("SELECT count(*) AS n FROM leads").fetchone()["n"] == 0
    finally:
        single.close()


def test_a_connection_that_left_the_app_role_is_refused_and_dropped(database_url, two_tenants):
    a, *_ = two_tenants
    single = Database(database_url, min_size=1, max_size=1, name="one-connection", box=session_box()).open()
    try:
        with single.tenant_tx(a.id) as conn:
            conn.execute("RESET ROLE")  # a bug (or injected SQL) leaving the role behind
            first = conn.info.backend_pid
        with pytest.raises(NotAppRole):
            with single.tenant_tx(a.id):
                pass
        with single.system_tx() as conn:  # a fresh connection, acting as lead_app again
            assert conn.info.backend_pid != first
            assert conn.execute("SELECT count(*) AS n FROM leads").fetchone()["n"] == 0
    finally:
        single.close()


# --- one tenant's credentials against another tenant --------------------------------

def test_an_unsubscribe_token_stops_only_its_own_tenant(db, two_tenants, admin, settings):
    a, b, _, _ = two_tenants
    token = unsubscribe_token(settings.secret_key(), a.id, "same@example.com")
    tenant_id, address = read_unsubscribe_token(settings.secret_key(), token)
    assert tenant_id == a.id
    with db.tenant_tx(tenant_id) as conn:
        set_opt_out(conn, "email", address, True, source="unsubscribe")
    opted = {r["tenant_id"]: r["opted_out"] for r in admin.execute(
        "SELECT tenant_id, opted_out FROM contacts WHERE address = 'same@example.com' AND tenant_id = ANY(%s)",
        ([a.id, b.id],)).fetchall()}
    assert opted == {a.id: True, b.id: False}
    # A token naming tenant B that was not signed with the deployment's key is worthless.
    forged = unsubscribe_token("another-deployments-key", b.id, "same@example.com")
    assert read_unsubscribe_token(settings.secret_key(), forged) is None
    # Tenant A's signature on a payload rewritten to name tenant B does not verify.
    signature = token.rsplit(".", 1)[1]
    payload_b = base64.urlsafe_b64encode(json.dumps([b.id, "same@example.com"], separators=(",", ":")).encode())
    tampered = payload_b.decode().rstrip("=") + "." + signature
    assert tampered != token
    assert read_unsubscribe_token(settings.secret_key(), tampered) is None


def test_an_event_of_tenant_a_cannot_close_tenant_b_lead(db, vendors, connected_shop, standins, admin):
    """Tenant A's event naming tenant B's order (a DELETE, which would end the lead) is
    processed inside A's transaction and A's ShopMonkey account: B's lead stays active."""
    from lead_orchestrator.services.ingest import process_event

    a, b = connected_shop(), connected_shop()
    created = standins.shopmonkey.create_order(b.shopmonkey_api_key.get_secret_value(), emit_webhook=False)
    order = created["order"]
    with db.tenant_tx(b.id) as conn:
        event_b = store_event(conn, source="manual", operation="INSERT", table="order", data=order, payload={"data": order})
    assert process_event(db, vendors, b.id, event_b).outcome == "new_lead"
    lead_b = admin.execute("SELECT id, status FROM leads WHERE tenant_id = %s AND order_id = %s",
                           (b.id, order["id"])).fetchone()
    touches_before = admin.execute("SELECT id, status FROM touches WHERE tenant_id = %s ORDER BY id",
                                   (b.id,)).fetchall()
    assert lead_b["status"] == "active" and touches_before

    with db.tenant_tx(a.id) as conn:
        event_a = store_event(conn, source="manual", operation="DELETE", table="order",
                              data={**order, "deleted": True}, payload={"data": {**order, "deleted": True}})
    process_event(db, vendors, a.id, event_a)

    assert admin.execute("SELECT status FROM leads WHERE id = %s", (lead_b["id"],)).fetchone()["status"] == "active"
    assert admin.execute("SELECT id, status FROM touches WHERE tenant_id = %s ORDER BY id",
                         (b.id,)).fetchall() == touches_before
    assert admin.execute("SELECT count(*) AS n FROM lead_events WHERE tenant_id = %s AND lead_id = %s "
                         "AND kind LIKE 'lead_%%'", (b.id, lead_b["id"])).fetchone()["n"] == 0


# --- the same with a migrating user that is not a superuser ---------------------------

@pytest.fixture(scope="module")
def plain_owner_url(tmp_path_factory):
    """A separate cluster where the schema is migrated by a plain user (LOGIN CREATEROLE,
    owner of its database), as on a managed external PostgreSQL."""
    from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg_plain")).start()
    try:
        with psycopg.connect(server.url("postgres"), autocommit=True) as su:
            su.execute("CREATE ROLE lead_owner LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS")
            su.execute("CREATE DATABASE lead_plain OWNER lead_owner")
        url = server.url("lead_plain").replace("postgres@", "lead_owner@", 1)
        yield url
    finally:
        server.stop()


def test_a_non_superuser_owner_migrates_and_isolation_holds(plain_owner_url):
    from lead_orchestrator.store.migrations import apply_migrations
    from lead_orchestrator.store.shops import ShopChanges, create_shop, list_shops

    assert apply_migrations(plain_owner_url, session_box())
    assert apply_migrations(plain_owner_url, session_box()) == []  # idempotent
    with psycopg.connect(plain_owner_url, autocommit=True, row_factory=dict_row) as owner:
        assert owner.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
                             ).fetchone() == {"rolsuper": False, "rolbypassrls": False}
        email = {"sendgrid_api_key": "SG.plain-key-0123456789abcdef", "sendgrid_sender": "service@plain.example",
                 "postal_address": "1 Plain St, Austin, TX 78701"}  # an active shop must be able to send
        a = create_shop(owner, "plain-a", "A", ShopChanges(webhook_secret="whsec_plain_a_secret", **email), session_box())
        b = create_shop(owner, "plain-b", "B", ShopChanges(webhook_secret="whsec_plain_b_secret", **email), session_box())
        seed(owner, a.id), seed(owner, b.id)
        assert {s.slug for s in list_shops(owner, session_box())} == {"plain-a", "plain-b"}  # the owner sees all
    database = Database(plain_owner_url, max_size=2, name="plain", box=session_box()).open()
    try:
        with database.system_tx() as conn:
            for table in TENANT_TABLES:
                assert conn.execute(f"SELECT * FROM {table}").fetchall() == [], table
            # The definer functions still see every tenant (no FORCE, owner is not superuser).
            assert conn.execute("SELECT tenant_id_for_slug('plain-b') AS id").fetchone()["id"] == b.id
            claimed = conn.execute("SELECT tenant_id FROM claim_inbox_events('t', 10, interval '1 minute')"
                                   ).fetchall()
            assert {r["tenant_id"] for r in claimed} == {a.id, b.id}
        with database.tenant_tx(a.id) as conn:
            for table in TENANT_TABLES:
                rows = conn.execute(f"SELECT * FROM {table}").fetchall()
                assert rows and {r[tenant_column(table)] for r in rows} == {a.id}, table
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with database.system_tx() as conn:
                conn.execute("INSERT INTO lead_events (tenant_id, kind) VALUES (%s, 'x')", (a.id,))
    finally:
        database.close()
