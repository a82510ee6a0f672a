"""store/leads.py: its rows are the table's columns, typed, and its statements find,
write over and close leads as ingest and `why` rely on."""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from lead_orchestrator.store.leads import (Lead, NewLead, close_lead, has_active_lead, lead_by_id, leads_named,
                                           leads_of_email, leads_of_order, leads_of_phone, lock_lead_status,
                                           lock_order, record_order_update, upsert_lead)
from tests.row_support import assert_row_matches_table
from tests.touchpoint_support import UTC, unique_email, unique_phone

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)


def test_lead_has_a_field_per_column_typed_and_optional_where_the_column_is_nullable(admin):
    assert_row_matches_table(admin, Lead, "leads")


def new_lead(**changes) -> NewLead:
    values = dict(order_id=uuid.uuid4().hex[:20], order_number=None, customer_id="c-1", vehicle_id=None,
                  first_name="Dana", last_name="Lopez", vehicle_name="2018 Toyota Camry", total_cents=84950,
                  phone_e164=unique_phone(), email=unique_email(), status="active", status_reason=None,
                  source="webhook", order_created_at=T0 - dt.timedelta(minutes=1), order_updated_at=T0,
                  first_seen_at=T0, crm="tekmetric")
    return NewLead(**{**values, **changes})


def test_rows_come_back_as_frozen_typed_leads_found_by_each_key(db, make_shop):
    shop = make_shop()
    new = new_lead(order_number=f"N{uuid.uuid4().hex[:8]}", first_name="Ayşe", last_name="O'Brien-Kaya")
    with db.tenant_tx(shop.id) as conn:
        assert lock_order(conn, new.order_id) is None
        lead = upsert_lead(conn, new, now=T0 + dt.timedelta(hours=1))
        locked = lock_order(conn, new.order_id)
        found = [leads_of_order(conn, new.order_id), leads_of_order(conn, new.order_number),
                 leads_of_email(conn, new.email), leads_of_phone(conn, new.phone_e164),
                 leads_named(conn, "ayşe o'brien"), [lead_by_id(conn, lead.id)]]
        status = lock_lead_status(conn, lead.id)
        nobody = (lead_by_id(conn, lead.id + 10**9), lock_lead_status(conn, lead.id + 10**9))
    assert isinstance(lead, Lead) and locked == lead and all(rows == [lead] for rows in found)
    assert (lead.tenant_id, lead.order_id, lead.status, lead.crm, lead.source) == (
        shop.id, new.order_id, "active", "tekmetric", "webhook")
    assert lead.first_seen_at == T0  # a new lead counts from the event that found it, not `now`
    assert lead.order_created_at == T0 - dt.timedelta(minutes=1) and lead.ended_at is None
    assert isinstance(lead.created_at, dt.datetime) and lead.total_cents == 84950
    assert status == "active" and nobody == (None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lead.status = "closed"


def test_a_name_matches_by_its_words_in_order_the_exact_name_first(db, make_shop):
    shop = make_shop()
    with db.tenant_tx(shop.id) as conn:
        longer = upsert_lead(conn, new_lead(first_name="Dana Marie", last_name="Lopez"), now=T0)
        exact = upsert_lead(conn, new_lead(first_name="Dana", last_name="Lopez"), now=T0)
        upsert_lead(conn, new_lead(first_name="Lopez", last_name="Dana"), now=T0)
        wildcard = upsert_lead(conn, new_lead(first_name="100%_sure", last_name=None), now=T0)
        upsert_lead(conn, new_lead(first_name="1000 sure", last_name=None), now=T0)
        assert [x.id for x in leads_named(conn, "dana LOPEZ")] == [exact.id, longer.id]
        assert [x.id for x in leads_named(conn, "100%_")] == [wildcard.id]  # % and _ are literal


def test_a_disqualified_lead_written_over_as_active_counts_its_sequence_from_now(db, make_shop):
    shop = make_shop()
    later = T0 + dt.timedelta(hours=2)
    with db.tenant_tx(shop.id) as conn:
        first = upsert_lead(conn, new_lead(status="disqualified", status_reason="no_contact", phone_e164=None), now=T0)
        still = upsert_lead(conn, new_lead(order_id=first.order_id, status="disqualified", status_reason="too_old",
                                           phone_e164=None), now=later)
        active = upsert_lead(conn, new_lead(order_id=first.order_id, first_name="Sam"), now=later)
        assert has_active_lead(conn)
    assert still.id == first.id and (still.status_reason, still.first_seen_at) == ("too_old", T0)
    assert active.id == first.id and (active.status, active.first_name, active.first_seen_at) == ("active", "Sam",
                                                                                                  later)


def test_an_update_keeps_a_total_the_crm_left_out_and_closing_ends_the_lead(db, make_shop):
    shop = make_shop()
    with db.tenant_tx(shop.id) as conn:
        lead = upsert_lead(conn, new_lead(), now=T0)
        record_order_update(conn, lead.id, T0 + dt.timedelta(minutes=5), None)
        kept = lead_by_id(conn, lead.id)
        record_order_update(conn, lead.id, T0 + dt.timedelta(minutes=6), 1200)
        changed = lead_by_id(conn, lead.id)
        close_lead(conn, lead.id, "converted", "approved")
        closed = lead_by_id(conn, lead.id)
        assert not has_active_lead(conn)
    assert (kept.order_updated_at, kept.total_cents) == (T0 + dt.timedelta(minutes=5), 84950)
    assert (changed.order_updated_at, changed.total_cents) == (T0 + dt.timedelta(minutes=6), 1200)
    assert (closed.status, closed.status_reason) == ("converted", "approved") and closed.ended_at is not None
