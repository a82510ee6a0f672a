"""The inbox names the CRM: migration 0016 rewrites the keys of events stored before it
the way `NewEvent` spells new ones, so an old pending, parked or dead event and a new
sighting of the same change still meet (a duplicate, or a revival), through both the
single insert and the receiver's group-commit function. Real PostgreSQL: a database
migrated to 0015, filled with old-style events, then upgraded."""
from __future__ import annotations

import json
import uuid

import psycopg
from psycopg.rows import dict_row
from yoyo import get_backend, read_migrations

from tests.support import session_box
from lead_orchestrator.store.db import Database, libpq_url
from lead_orchestrator.store.inbox import NewEvent, insert_event
from lead_orchestrator.store.migrations import apply_migrations, migrations_dir

# (object id, table, operation, stamp as ShopMonkey sent it, status)
OLD_EVENTS = [
    ("o1", "order", "UPDATE", "2026-10-01T15:02:11.000Z", "pending"),
    ("o2", "order", "UPDATE", "2026-10-01T15:02:11Z", "dead"),
    ("o3", "order", "DELETE", "2026-10-01T15:02:11.000Z", "parked"),
    ("o4", "order", "UPDATE", "2026-10-01T15:02:11Z", "done"),
    ("o4", "order", "UPDATE", "2026-10-01T15:02:11.000Z", "done"),  # the same moment spelled twice
    ("o5", "order", "UPDATE", "not a date", "done"),
    ("o6", "order", "INSERT", "", "done"),
    ("o7", "order", "UPDATE", "2026-10-01T10:02:11.1234567-05:00", "done"),
    ("o8", "order", "UPDATE", "2026-10-01 15:02:11", "done"),
    ("o9", "order", "UPDATE", "2026-02-30T15:02:11.000Z", "done"),
    ("c1", "customer", "UPDATE", "2026-10-01T15:02:11.000Z", "done"),
]


def _old_key(object_id: str, table: str, operation: str, stamp: str) -> str:
    """The key NewEvent made before 0016."""
    key = f"{table}:{object_id}:{stamp}"
    return key + ":DELETE" if operation == "DELETE" else key


def _new_event(object_id: str, table: str, operation: str, stamp: str, source: str = "poll") -> NewEvent:
    return NewEvent(source=source, operation=operation, table=table, object_id=object_id, updated_date=stamp or None,
                    payload_json=json.dumps({"operation": operation, "table": table,
                                             "data": {"id": object_id, "updatedDate": stamp}}))


def test_old_keys_are_rewritten_so_old_events_and_new_sightings_meet(pg):
    server = pg[0]
    assert server is not None, "needs the embedded cluster to create a database of its own"
    name = f"inbox_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as su:
        su.execute(f'CREATE DATABASE "{name}"')
    url = server.url(name)
    try:
        backend = get_backend("postgresql+psycopg://" + libpq_url(url).partition("://")[2])
        before = read_migrations(str(migrations_dir())).filter(lambda m: m.id < "0016")
        with backend.lock():
            backend.apply_migrations(backend.to_apply(before))
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as owner:
            tenant = owner.execute("INSERT INTO tenants (slug, name) VALUES ('upgraded', 'Upgraded') "
                                   "RETURNING id").fetchone()["id"]
            ids = [owner.execute(
                "INSERT INTO inbox_events (tenant_id, source, dedup_key, operation, table_name, object_id, payload, "
                "status, error) VALUES (%s, 'webhook', %s, %s, %s, %s, '{}', %s, %s) RETURNING id",
                (tenant, _old_key(o, t, op, s), op, t, o, status, f"was {status}")).fetchone()["id"]
                for o, t, op, s, status in OLD_EVENTS]

        assert "0016_inbox_crm" in apply_migrations(url, session_box())

        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as owner:
            rows = {r["id"]: r for r in owner.execute("SELECT id, dedup_key, crm FROM inbox_events").fetchall()}
            assert owner.execute("SELECT crm FROM leads LIMIT 0").description[0].name == "crm"
        expected = [_new_event(o, t, op, s).dedup_key for o, t, op, s, _ in OLD_EVENTS]
        expected[4] += f":duplicate-{ids[4]}"  # kept as a second event rather than failing the upgrade
        assert [rows[i]["dedup_key"] for i in ids] == expected
        assert expected[0] == "shopmonkey:order:o1:2026-10-01T15:02:11.000Z"
        assert expected[7] == "shopmonkey:order:o7:2026-10-01T15:02:11.123Z"  # UTC, truncated to ms
        assert expected[5] == "shopmonkey:order:o5:not a date"  # not a date: kept as sent
        assert {r["crm"] for r in rows.values()} == {"shopmonkey"}

        db = Database(url, max_size=2, name="upgrade", box=session_box()).open()
        try:
            with db.tenant_tx(tenant) as conn:
                # A new sighting of the pending change merges with it...
                assert insert_event(conn, _new_event("o1", "order", "UPDATE", "2026-10-01T15:02:11Z")) is None
                # ...and one of the dead change revives it, whichever way its stamp is spelled.
                assert insert_event(conn, _new_event("o2", "order", "UPDATE", "2026-10-01T15:02:11.000Z")) == ids[1]
            # The receiver's group commit revives the parked deletion.
            array = "[" + _new_event("o3", "order", "DELETE", "2026-10-01T15:02:11Z", "webhook").batch_item(0, tenant) \
                + "]"
            with db.system_tx() as conn:
                stored = conn.execute("SELECT pos, event_id FROM store_inbox_events(%s::jsonb)", (array,)).fetchall()
            assert [(r["pos"], r["event_id"]) for r in stored] == [(0, ids[2])]
        finally:
            db.close()
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as owner:
            states = owner.execute("SELECT id, status, error FROM inbox_events WHERE id = ANY(%s) ORDER BY id",
                                   (ids[:3],)).fetchall()
            count = owner.execute("SELECT count(*) AS n FROM inbox_events").fetchone()["n"]
        assert [s["status"] for s in states] == ["pending", "pending", "pending"]
        assert states[1]["error"].startswith("revived by a new poll sighting after: was dead")
        assert states[2]["error"].startswith("revived by a new webhook sighting after: was parked")
        assert count == len(OLD_EVENTS)  # nothing stored twice
    finally:
        with psycopg.connect(server.url("postgres"), autocommit=True) as su:
            su.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_the_crm_is_stored_and_keys_of_two_crms_never_meet(db, make_shop, admin):
    shop = make_shop()
    same = dict(source="poll", operation="UPDATE", table="order", object_id="501",
                updated_date="2026-03-02T15:04:05Z", payload_json="{}")
    with db.tenant_tx(shop.id) as conn:
        first = insert_event(conn, NewEvent(**same))
        second = insert_event(conn, NewEvent(**same, crm="tekmetric"))
    assert first and second and first != second
    rows = admin.execute("SELECT crm, dedup_key FROM inbox_events WHERE id IN (%s, %s) ORDER BY id",
                         (first, second)).fetchall()
    assert [r["crm"] for r in rows] == ["shopmonkey", "tekmetric"]
    assert rows[1]["dedup_key"] == "tekmetric:order:501:2026-03-02T15:04:05.000Z"


def test_hints_without_a_version_are_never_swallowed_by_an_earlier_one(db, make_shop, admin):
    import datetime as dt

    from lead_orchestrator.crm.base import ChangeHint, ChangeKind

    shop = make_shop()
    hint = ChangeHint(crm="tekmetric", estimate_id="777", kind=ChangeKind.UPDATED, updated_at=None)
    with db.tenant_tx(shop.id) as conn:
        first = insert_event(conn, NewEvent.from_hint(hint, source="webhook"))
        conn.execute("UPDATE inbox_events SET status = 'done' WHERE id = %s", (first,))
        second = insert_event(conn, NewEvent.from_hint(hint, source="webhook"))  # a later change, no version
        redelivered = [insert_event(conn, NewEvent.from_hint(hint, source="webhook", webhook_id="w-1"))
                       for _ in range(2)]
        versioned = ChangeHint(crm="tekmetric", estimate_id="777", kind=ChangeKind.UPDATED,
                               updated_at=dt.datetime(2026, 3, 2, 15, 4, 5, tzinfo=dt.timezone.utc))
        again = [insert_event(conn, NewEvent.from_hint(versioned, source=s)) for s in ("webhook", "poll")]
    assert first and second and second != first
    assert redelivered[0] and redelivered[1] is None  # the same delivery twice is one event
    assert again[0] and again[1] is None  # a versioned change seen twice is one event


def test_a_batch_item_is_the_json_the_group_commit_function_reads():
    """batch_item writes its object out by hand (it is on the receiver's hot path): it must
    be what json.dumps would write, quotes, backslashes and non-ASCII text included."""
    for webhook_id in (None, "msg_plain", 'msg_"quoted"\\back'):
        event = NewEvent("webhook", "DELETE", "order", 'id"\\\u2028\U0001f600', "2026-10-01T15:02:11Z",
                         '{"a": [1, "b"]}', webhook_id, "crm\u00e9")
        item = json.loads(event.batch_item(3, 12345678901))
        assert item == {"pos": 3, "tenant_id": 12345678901, "source": "webhook", "webhook_id": webhook_id,
                        "dedup_key": event.dedup_key, "operation": "DELETE", "table_name": "order",
                        "object_id": 'id"\\\u2028\U0001f600', "crm": "crm\u00e9", "payload": {"a": [1, "b"]}}
        assert event.batch_item(3, 12345678901).isascii()
