"""SendGrid's signed Event Webhook over real HTTP: events update the email's delivery
status; bounce, dropped, spam report and unsubscribe stop the lead and opt the address
out. Unknown kinds and fields are accepted; a bad request changes nothing."""
from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import pytest

from lead_orchestrator.services.touch_sweep import send_due_touches
from standins.sendgrid_events import EventSigner, make_event
from tests.conftest import emails_to
from tests.touchpoint_support import (UTC, events_of, insert_lead, lead_row, settle_sms_callbacks,
                                      tenant_counts, touches_of, unique_email, unique_phone)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def emailed(db, vendors, connected_shop, standins, admin):
    """A lead whose first email went out through the SendGrid stand-in."""
    shop = connected_shop()
    email = unique_email()
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=email)
    send_due_touches(db, vendors, now=T0, due_before=T0, tenant_ids=[shop.id])
    sent = emails_to(standins, email)
    assert len(sent) == 1
    settle_sms_callbacks(admin, lead["id"])  # they arrive in the background
    return shop, lead, email, sent[0]["message_id"]


def events_url(receiver, shop) -> str:
    return f"{receiver.url}/webhooks/sendgrid/{shop.slug}/events"


def contact(admin, shop, address):
    return admin.execute("SELECT opted_out, change_source FROM contacts WHERE tenant_id = %s AND address = %s",
                         (shop.id, address)).fetchone()


def test_delivered_event_updates_the_touch(receiver, emailed, admin, standins):
    shop, lead, email, message_id = emailed
    status = standins.sendgrid.post_events(events_url(receiver, shop), standins.sendgrid.events_for(message_id))
    assert status == 200
    touch = touches_of(admin, lead["id"])[(0, "email")]
    assert (touch["delivery_status"], touch["provider_message_id"]) == ("delivered", message_id)
    assert lead_row(admin, lead["id"])["status"] == "active"


@pytest.mark.parametrize("kind,reason", [("bounce", "email_bounced"), ("dropped", "email_dropped"),
                                         ("spamreport", "spam_report"), ("unsubscribe", "unsubscribed"),
                                         ("group_unsubscribe", "unsubscribed")])
def test_stop_events_opt_the_address_out_and_stop_the_lead(receiver, emailed, admin, standins, kind, reason):
    shop, lead, email, message_id = emailed
    events = standins.sendgrid.events_for(message_id, kind)
    assert standins.sendgrid.post_events(events_url(receiver, shop), events) == 200
    row = lead_row(admin, lead["id"])
    assert (row["status"], row["status_reason"]) == ("stopped", reason)
    assert contact(admin, shop, email) == {"opted_out": True, "change_source": f"sendgrid_{kind}"}
    pending = [t for t in touches_of(admin, lead["id"]).values() if t["status"] in ("scheduled", "deferred")]
    assert pending == []


def test_a_soft_bounce_is_recorded_but_stops_nothing(receiver, emailed, admin, standins):
    shop, lead, email, message_id = emailed
    event = {**standins.sendgrid.events_for(message_id, "bounce")[0], "type": "blocked"}
    assert standins.sendgrid.post_events(events_url(receiver, shop), [event]) == 200
    assert touches_of(admin, lead["id"])[(0, "email")]["delivery_status"] == "blocked"
    assert lead_row(admin, lead["id"])["status"] == "active"
    assert contact(admin, shop, email) is None


def test_events_match_by_message_id_and_unknown_kinds_and_fields_are_accepted(receiver, emailed, admin, standins):
    shop, lead, email, message_id = emailed
    delivered = make_event("delivered", email, message_id, 0)  # no custom args: matched by sg_message_id
    novel = {**make_event("processed", email, message_id, 0), "event": "machine_opened", "brand_new_field": [1, 2]}
    opened = {**make_event("open", email, message_id, 0), "useragent": "Mozilla/5.0", "ip": "203.0.113.9"}
    assert standins.sendgrid.post_events(events_url(receiver, shop), [delivered, novel, opened]) == 200
    assert touches_of(admin, lead["id"])[(0, "email")]["delivery_status"] == "delivered"
    assert lead_row(admin, lead["id"])["status"] == "active"
    assert "email_delivered" in [e["kind"] for e in events_of(admin, lead["id"])]


def test_events_for_another_shops_touch_change_nothing(receiver, emailed, connected_shop, admin, standins):
    shop, lead, email, message_id = emailed
    other = connected_shop()
    events = [{**e, "email": "someone-else@example.com"} for e in standins.sendgrid.events_for(message_id, "delivered")]
    assert standins.sendgrid.post_events(events_url(receiver, other), events) == 200
    assert touches_of(admin, lead["id"])[(0, "email")]["delivery_status"] is None  # RLS: not the other shop's


def _signed(signer: EventSigner, payload: str, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    return {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": signer.sign(payload, ts),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts}


@pytest.mark.parametrize("case", ["other_key", "missing_headers", "tampered_body", "stale", "future", "no_key",
                                  "invalid_json", "not_an_array", "event_without_name", "wrong_content_type",
                                  "too_large"])
def test_bad_event_posts_are_refused_and_change_nothing(receiver, emailed, connected_shop, admin, standins, case):
    shop, lead, email, message_id = emailed
    signer = standins.sendgrid.signer
    payload = json.dumps(standins.sendgrid.events_for(message_id, "bounce"))
    url = events_url(receiver, shop)
    headers = _signed(signer, payload)
    expected = 401
    if case == "other_key":
        headers = _signed(EventSigner(), payload)
    elif case == "missing_headers":
        headers = {"Content-Type": "application/json"}
    elif case == "tampered_body":
        payload = payload.replace("bounce", "delivered")
    elif case == "stale":
        headers = _signed(signer, payload, int(time.time()) - 27 * 3600)
    elif case == "future":
        headers = _signed(signer, payload, int(time.time()) + 3600)
    elif case == "no_key":
        url = events_url(receiver, connected_shop(sendgrid_event_public_key=None))
    elif case == "invalid_json":
        payload, expected = "[{not json", 400
        headers = _signed(signer, payload)
    elif case == "not_an_array":
        payload, expected = json.dumps({"event": "bounce", "email": email}), 422
        headers = _signed(signer, payload)
    elif case == "event_without_name":
        payload, expected = json.dumps([{"email": email}]), 422
        headers = _signed(signer, payload)
    elif case == "wrong_content_type":
        headers, expected = {**headers, "Content-Type": "text/plain"}, 415
    else:
        payload, expected = json.dumps([{"event": "open", "pad": "x" * (3 * 1024 * 1024)}]), 413
        headers = _signed(signer, payload)
    before = tenant_counts(admin, shop.id)
    response = httpx.post(url, content=payload.encode(), headers=headers, timeout=10)
    assert response.status_code == expected, response.text
    assert set(response.json()["error"]) == {"code", "message"}
    assert tenant_counts(admin, shop.id) == before
    assert lead_row(admin, lead["id"])["status"] == "active"
    assert touches_of(admin, lead["id"])[(0, "email")]["delivery_status"] is None
