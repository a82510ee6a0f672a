"""store/touches.py: its rows are the table's columns, typed."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from lead_orchestrator.store.touches import Touch, lead_touches, lock_touch
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
