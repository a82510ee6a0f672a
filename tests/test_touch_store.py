"""store/touches.py: its rows are the table's columns, typed, and its claim of unknown
touches names the message ids other touches already hold."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from lead_orchestrator.store.touches import Touch, UnknownTouch, claim_unknown, lead_touches, lock_touch
from tests.touchpoint_support import UTC, insert_lead, unique_email, unique_phone

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)


def test_touch_has_a_field_per_column_optional_where_the_column_is_nullable(admin):
    columns = admin.execute(
        """SELECT column_name, is_nullable FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = 'touches' ORDER BY ordinal_position""").fetchall()
    fields = {f.name: f.type for f in dataclasses.fields(Touch)}
    assert list(fields) == [c["column_name"] for c in columns]
    optional = {name for name, annotation in fields.items() if annotation.endswith("| None")}
    assert optional == {c["column_name"] for c in columns if c["is_nullable"] == "YES"}


def test_rows_come_back_as_frozen_typed_touches(db, make_shop):
    shop = make_shop()
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=unique_email())
    with db.tenant_tx(shop.id) as conn:
        touches = lead_touches(conn, lead["id"])
        locked = lock_touch(conn, touches[0].id)
    assert [(t.step, t.channel) for t in touches] == sorted((t.step, t.channel) for t in touches)
    first = touches[0]
    assert isinstance(first, Touch) and locked == first
    assert (first.lead_id, first.tenant_id, first.step, first.attempts, first.replanned) == (lead["id"], shop.id, 0, 0,
                                                                                            False)
    assert first.due_at == T0 and isinstance(first.send_after, dt.datetime) and first.reserved_at is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = "sent"


def test_claiming_unknown_touches_leases_them_and_names_ids_other_touches_hold(db, make_shop, admin):
    shop = make_shop()
    phone = unique_phone()
    earlier = insert_lead(db, shop, first_seen=T0, phone=phone)
    later = insert_lead(db, shop, first_seen=T0, phone=phone)
    sent = admin.execute("SELECT id FROM touches WHERE lead_id = %s AND step = 0 AND channel = 'sms'",
                         (earlier["id"],)).fetchone()["id"]
    unknown = admin.execute("SELECT id FROM touches WHERE lead_id = %s AND step = 0 AND channel = 'sms'",
                            (later["id"],)).fetchone()["id"]
    for touch_id, status, message_id in ((sent, "sent", "SM-other"), (unknown, "unknown", "SM-own")):
        admin.execute("UPDATE touches SET status = 'sending', reserved_at = %s WHERE id = %s", (T0, touch_id))
        admin.execute("UPDATE touches SET status = %s, provider_message_id = %s, resolve_after = %s WHERE id = %s",
                      (status, message_id, T0 if status == "unknown" else None, touch_id))
    lease = T0 + dt.timedelta(minutes=2)
    with db.tenant_tx(shop.id) as conn:
        [claimed] = claim_unknown(conn, T0 + dt.timedelta(seconds=1), lease_until=lease, batch=50)
        again = claim_unknown(conn, T0 + dt.timedelta(seconds=2), lease_until=lease, batch=50)
    assert isinstance(claimed, UnknownTouch) and claimed.id == unknown
    assert claimed.taken_ids == frozenset({"SM-other"})  # its own id is not "taken"
    assert (claimed.status, claimed.resolve_after, claimed.resolve_attempts) == ("unknown", lease, 1)
    assert again == []  # leased
