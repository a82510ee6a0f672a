"""Rows written straight into the tables (as the owner), for tests of what the analyst
views, `status` and `why` make of them: every figure is known in advance."""
from __future__ import annotations

import base64
import datetime as dt
import os
import uuid
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.support import session_box
from lead_orchestrator.store.shops import ShopChanges, create_shop

UTC = dt.timezone.utc


def add_shop(admin: psycopg.Connection, slug: str, **overrides):
    changes = ShopChanges(**{
        "time_zone": "America/Chicago",
        "webhook_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
        "shopmonkey_api_key": "sm-key-" + uuid.uuid4().hex,
        "twilio_account_sid": "AC" + uuid.uuid4().hex, "twilio_auth_token": uuid.uuid4().hex,
        "twilio_sender": "+15125550100", "sendgrid_api_key": "SG." + uuid.uuid4().hex,
        "sendgrid_sender": "service@example-shop.com", "postal_address": "100 Main St, Austin, TX 78701",
        **overrides,
    })
    return create_shop(admin, slug, f"Shop {slug}", changes, session_box())


def add_lead(admin, shop_id: int, *, status: str = "active", reason: str | None = None, source: str = "webhook",
             created: dt.datetime | None = None, first_seen: dt.datetime, phone: str | None = "+13125550100",
             email: str | None = "dana@example.com", first_name: str = "Dana", last_name: str = "Lopez",
             order_id: str | None = None, ended: dt.datetime | None = None, crm: str = "shopmonkey") -> int:
    return admin.execute(
        """INSERT INTO leads (tenant_id, order_id, order_number, first_name, last_name, vehicle_name, total_cents,
                              phone_e164, email, status, status_reason, source, order_created_at, first_seen_at,
                              ended_at, crm)
           VALUES (%s, %s, %s, %s, %s, '2018 Toyota Camry', 84950, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (shop_id, order_id or uuid.uuid4().hex[:20], str(uuid.uuid4().int % 100000), first_name, last_name, phone,
         email, status, reason, source, created, first_seen, ended, crm),
    ).fetchone()["id"]


def add_touch(admin, shop_id: int, lead_id: int, step: int, channel: str, status: str, *, due: dt.datetime,
              send_after: dt.datetime | None = None, sent_at: dt.datetime | None = None,
              delivery_status: str | None = None, reason: str | None = None, error_code: str | None = None,
              attempts: int = 0) -> int:
    gone = status in ("sending", "sent", "unknown")
    return admin.execute(
        """INSERT INTO touches (tenant_id, lead_id, step, channel, status, reason, due_at, send_after, to_address,
                                delivery_status, error_code, attempts, reserved_at, sent_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'someone', %s, %s, %s, %s, %s) RETURNING id""",
        (shop_id, lead_id, step, channel, status, reason, due, send_after or due, delivery_status, error_code,
         attempts, sent_at if gone else None, sent_at),
    ).fetchone()["id"]


def add_event(admin, shop_id: int, *, source: str = "webhook", status: str = "done", received: dt.datetime,
              order_id: str | None = None, error: str | None = None, changed: dt.datetime | None = None,
              attempts: int = 0, available: dt.datetime | None = None, outcome: str | None = None,
              claimed: dt.datetime | None = None, claimed_by: str | None = None) -> int:
    order_id = order_id or uuid.uuid4().hex[:20]
    return admin.execute(
        """INSERT INTO inbox_events (tenant_id, source, dedup_key, operation, table_name, object_id, payload,
                                     received_at, status, error, status_changed_at, attempts, available_at,
                                     outcome, claimed_at, claimed_by)
           VALUES (%s, %s, %s, 'UPDATE', 'order', %s, '{}'::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           RETURNING id""",
        (shop_id, source, uuid.uuid4().hex, order_id, received, status, error, changed or received, attempts,
         available or received, outcome, claimed, claimed_by),
    ).fetchone()["id"]


def add_decision(admin, shop_id: int, lead_id: int | None, kind: str, at: dt.datetime, **detail) -> None:
    admin.execute("INSERT INTO lead_events (tenant_id, lead_id, at, kind, detail) VALUES (%s, %s, %s, %s, %s)",
                  (shop_id, lead_id, at, kind, Jsonb(detail)))


def set_poll_state(admin, shop_id: int, **values) -> None:
    cols = ["tenant_id", *values]
    admin.execute(f"INSERT INTO poll_state ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                  (shop_id, *values.values()))


# --- one data set: every stage, every delivery outcome, a stuck inbox -------------------

T0 = dt.datetime(2027, 3, 1, 15, 0, tzinfo=UTC)  # Monday 09:00 in Chicago
S = dt.timedelta(seconds=1)
H = dt.timedelta(hours=1)
KEY_REFUSED = "ShopMonkey rejected the shop's API key (HTTP 401)"


def build(admin) -> dict:
    """Three shops: alpha with leads at every stage, bravo with a stuck inbox and a
    refused key, charlie with nothing at all."""
    a, b, c = (add_shop(admin, f"{name}-{uuid.uuid4().hex[:6]}") for name in ("alpha", "bravo", "charlie"))
    ids: dict = {"shops": (a, b, c), "outcome": {}, "stage": {}}

    def touch(shop, lead, step, channel, status, outcome, **kw):
        ids["outcome"][add_touch(admin, shop.id, lead, step, channel, status, **kw)] = outcome

    def lead(name, stage, shop=a, **kw):
        ids[name] = add_lead(admin, shop.id, **kw)
        ids["stage"][ids[name]] = stage
        return ids[name]

    n = lead("touched_fast", "delivered", created=T0, first_seen=T0 + S)
    touch(a, n, 0, "sms", "sent", "delivered", due=T0 + S, sent_at=T0 + 1.5 * S, delivery_status="delivered")
    touch(a, n, 0, "email", "sent", "sent", due=T0 + S, sent_at=T0 + 1.6 * S, delivery_status="processed")
    touch(a, n, 1, "sms", "scheduled", "pending", due=T0 + H)
    touch(a, n, 2, "email", "scheduled", "pending", due=T0 + 24 * H)

    n = lead("poll_found", "converted", source="poll", status="converted", reason="authorized", created=T0,
             first_seen=T0 + 35 * S, ended=T0 + 2 * H)
    touch(a, n, 0, "sms", "sent", "sent", due=T0 + 35 * S, sent_at=T0 + 35.5 * S)
    touch(a, n, 1, "sms", "cancelled", "not_sent", due=T0 + H, reason="lead_converted:authorized")

    # From before the shop moved to Tekmetric: a lead keeps the CRM it came from.
    lead("no_contact", "not_qualified", status="disqualified", reason="no_contact", created=T0, first_seen=T0,
         phone=None, email=None, crm="tekmetric")

    night = T0 + 13 * H  # 22:00 in Chicago: the first text waits for 08:00
    n = lead("deferred", "qualified", created=night, first_seen=night, email=None)
    touch(a, n, 0, "sms", "deferred", "pending", due=night, send_after=T0 + 23 * H, reason="quiet_hours")
    add_decision(admin, a.id, n, "touch_deferred", night, step=0, channel="sms", reason="quiet_hours")

    n = lead("replied", "replied", status="stopped", reason="replied", created=T0, first_seen=T0)
    touch(a, n, 0, "sms", "sent", "delivered", due=T0, sent_at=T0 + 2 * S, delivery_status="read")

    n = lead("opted_out", "opted_out", status="stopped", reason="opted_out", created=T0, first_seen=T0)
    touch(a, n, 0, "sms", "sent", "undelivered", due=T0, sent_at=T0 + S, delivery_status="undelivered",
          error_code="30007")
    touch(a, n, 1, "sms", "cancelled", "not_sent", due=T0 + H, reason="lead_stopped:opted_out")

    n = lead("bounced", "bounced", status="stopped", reason="email_bounced", created=T0, first_seen=T0, phone=None)
    touch(a, n, 0, "email", "sent", "bounced", due=T0, sent_at=T0 + S, delivery_status="bounce")

    n = lead("ambiguous", "qualified", created=T0, first_seen=T0)
    touch(a, n, 0, "sms", "unknown", "unknown", due=T0, sent_at=None, reason="no_outcome_recorded")
    touch(a, n, 0, "email", "failed", "failed", due=T0, reason="rejected", error_code="400")

    add_event(admin, a.id, received=T0 + S, outcome="new_lead")
    add_event(admin, a.id, source="poll", received=T0 + 35 * S, outcome="new_lead")
    set_poll_state(admin, a.id, last_polled_at=T0 + 40 * S, last_success_at=T0 + 40 * S, health="ok")

    n = lead("other_shop", "delivered", shop=b, created=T0, first_seen=T0 + 3 * S)
    touch(b, n, 0, "email", "sent", "delivered", due=T0 + 3 * S, sent_at=T0 + 4 * S, delivery_status="delivered")
    touch(b, n, 1, "sms", "scheduled", "pending", due=T0 + 2 * H)
    add_event(admin, b.id, source="poll", status="pending", received=T0 + 50 * S)
    add_event(admin, b.id, source="poll", status="pending", received=T0 + 100 * S)
    add_event(admin, b.id, status="parked", received=T0 + 55 * S, changed=T0 + 60 * S, error=KEY_REFUSED)
    add_event(admin, b.id, status="dead", received=T0 + 20 * S, changed=T0 + 70 * S, error="malformed order")
    add_event(admin, b.id, status="processing", received=T0 + 80 * S, claimed=T0 + 81 * S, claimed_by="dispatcher-1")
    add_event(admin, b.id, received=T0 + 90 * S, outcome="updated")
    set_poll_state(admin, b.id, last_polled_at=T0 + 95 * S, last_success_at=T0 - H, consecutive_errors=3,
                   last_error=KEY_REFUSED, last_error_at=T0 + 95 * S, health="unauthorized")
    return ids


@contextmanager
def built_database(pg, prefix: str):
    """A database of its own holding exactly `build`'s rows: (url, what build returned)."""
    from tests.conftest import scratch_database

    with scratch_database(pg, prefix) as url:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as admin:
            data = build(admin)
        yield url, data
