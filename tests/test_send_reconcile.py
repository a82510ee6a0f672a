"""At-most-once sending when the answer is lost, end to end: the engine, the real stand-ins
(faults injected after they did the work), the vendors asked about unknown outcomes, and
reservations of a killed sender recovered within seconds (also by the dispatcher alone)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from lead_orchestrator.runtime.dispatcher import Dispatcher
from lead_orchestrator.messaging.senders import EMAIL_SETTLE, SMS_SETTLE
from lead_orchestrator.services.send_reconcile import reconcile_in_flight_sends
from lead_orchestrator.services.timeline import format_timeline, lead_timeline
from lead_orchestrator.store.leads import lead_by_id
from lead_orchestrator.services.touch_sweep import send_due_touches
from tests.conftest import emails_to, sms_to
from tests.faulty_endpoints import Forwarder, refused_url
from tests.support import free_port, wait_for
from tests.touchpoint_support import (UTC, RecordingVendors, SimClock, events_of, insert_lead,
                                      kill_a_sender_mid_send, touches_of, unique_email, unique_phone)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)
SETTLE = {"sms": SMS_SETTLE, "email": EMAIL_SETTLE}


def tick(db, vendors, clock, shop):
    return send_due_touches(db, vendors, now=clock(), due_before=clock(), clock=clock, tenant_ids=[shop.id],
                            sleep=clock.sleep)


@pytest.fixture
def rig(db, vendors, connected_shop):
    """A shop, a lead with phone and email, and vendors whose status callbacks cannot
    reach us: only asking the vendor can tell what became of a message."""
    shop = connected_shop()
    clock = SimClock(T0)
    phone, email = unique_phone(), unique_email()
    lead = insert_lead(db, shop, first_seen=T0, phone=phone, email=email)
    deaf = dataclasses.replace(vendors, public_base_url=refused_url(), _cache={})
    return shop, clock, RecordingVendors(deaf, clock), lead, {"sms": phone, "email": email}


@pytest.fixture
def email_activity(standins):
    standins.sendgrid.enable_email_activity()
    yield
    standins.sendgrid.enable_email_activity(False)


def state_of(standins, channel):
    return standins.twilio if channel == "sms" else standins.sendgrid


def at_vendor(standins, channel, address) -> list[dict]:
    return sms_to(standins, address) if channel == "sms" else emails_to(standins, address)


def copies(standins, channel, address, body) -> list[dict]:
    """What the vendor took of one touch's message (later steps have other texts)."""
    return [m for m in at_vendor(standins, channel, address) if m.get("body", m.get("text")) == body]


def vendor_id(message: dict) -> str:
    return message.get("sid") or message["message_id"]


def wait_until_sent(standins, channel, address):
    """Simulated hours pass in milliseconds here: let Twilio send what it queued (its list
    shows a message once it has a date sent) before the engine asks about it."""
    if channel == "sms":
        wait_for(lambda: all(m["date_sent"] for m in sms_to(standins, address)), timeout=10,
                 message="the stand-in sending the SMS")


def test_sendgrid_closing_the_connection_after_taking_the_mail_sends_it_once(db, rig, admin, standins):
    """The bug seen with 20 % faults: RemoteDisconnected after SendGrid took the mail was
    retried, and the customer got the first email twice."""
    shop, clock, vendors, lead, to = rig
    standins.sendgrid.drop_next(1)
    tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, "email")]
    assert len(emails_to(standins, to["email"])) == 1
    assert touch["status"] == "unknown" and "RemoteDisconnected" in touch["reason"]
    for minutes in (1, 5, 60, 60 * 7, 60 * 24):
        clock.advance(minutes=minutes)
        tick(db, vendors, clock, shop)
    assert len(copies(standins, "email", to["email"], touch["body"])) == 1
    assert len([c for c in vendors.to(to["email"]) if c.body == touch["body"]]) == 1
    # This account has no Email Activity add-on: the outcome cannot be resolved, and `why` says so.
    touch = touches_of(admin, lead["id"])[(0, "email")]
    assert (touch["status"], touch["reason"], touch["resolve_after"]) == (
        "unknown", "unresolved:email_activity_unavailable", None)
    with db.tenant_tx(shop.id) as conn:
        text = format_timeline(shop, lead_timeline(conn, lead_by_id(conn, lead["id"])))
    assert "step 0 email outcome stays unknown (unresolved:email_activity_unavailable)" in text


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_read_timeout_is_unknown_never_resent_and_confirmed_by_the_vendor(db, rig, admin, standins, channel,
                                                                          email_activity):
    shop, clock, vendors, lead, to = rig
    impatient = RecordingVendors(dataclasses.replace(vendors.inner, send_timeout=0.5, _cache={}), clock)
    state_of(standins, channel).drop_next(1, after_seconds=2.0)  # does the work, answers nothing in time
    tick(db, impatient, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, channel)]
    assert touch["status"] == "unknown" and "timed out" in touch["reason"].lower(), touch["reason"]
    assert len(at_vendor(standins, channel, to[channel])) == 1
    wait_until_sent(standins, channel, to[channel])
    clock.advance(seconds=30)
    tick(db, impatient, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, channel)]
    (message,) = at_vendor(standins, channel, to[channel])
    assert (touch["status"], touch["reason"], touch["provider_message_id"]) == (
        "sent", "confirmed_by_provider", vendor_id(message))
    assert len([c for c in impatient.to(to[channel])]) == 1  # asked about, never sent again


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_connection_refused_is_retried_in_the_run_and_sent_once(db, rig, admin, standins, channel):
    shop, clock, vendors, lead, to = rig
    port = free_port()  # nothing listens: refused
    real = standins.twilio_url if channel == "sms" else standins.sendgrid_url
    key = "twilio_base_url" if channel == "sms" else "sendgrid_base_url"
    refusing = RecordingVendors(dataclasses.replace(vendors.inner, _cache={}, **{key: f"http://127.0.0.1:{port}"}),
                                clock)
    forwarders = []

    def vendor_comes_back(seconds):  # the wait between two quick attempts
        clock.sleep(seconds)
        if not forwarders:
            forwarders.append(Forwarder(port, urlsplit(real).port))

    try:
        send_due_touches(db, refusing, now=T0, due_before=T0, clock=clock, tenant_ids=[shop.id],
                         sleep=vendor_comes_back)
    finally:
        for f in forwarders:
            f.close()
    assert clock.slept == [1]
    assert len(refusing.to(to[channel])) == 2 and len(at_vendor(standins, channel, to[channel])) == 1
    assert touches_of(admin, lead["id"])[(0, channel)]["status"] == "sent"


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_429_is_retried_and_sent_once(db, rig, admin, standins, channel):
    shop, clock, vendors, lead, to = rig
    state_of(standins, channel).throttle_next(2)
    tick(db, vendors, clock, shop)
    assert clock.slept == [1, 2]
    assert len(vendors.to(to[channel])) == 3 and len(at_vendor(standins, channel, to[channel])) == 1
    assert touches_of(admin, lead["id"])[(0, channel)]["status"] == "sent"


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_5xx_after_the_vendor_took_it_is_resolved_to_sent_by_asking(db, rig, admin, standins, channel,
                                                                      email_activity):
    shop, clock, vendors, lead, to = rig
    state_of(standins, channel).fail_after_work_next(1, 500)
    tick(db, vendors, clock, shop)
    assert touches_of(admin, lead["id"])[(0, channel)]["status"] == "unknown"
    wait_until_sent(standins, channel, to[channel])
    clock.advance(minutes=1)
    report = tick(db, vendors, clock, shop)
    assert report["reconcile_confirmed"] == 1
    touch = touches_of(admin, lead["id"])[(0, channel)]
    (message,) = at_vendor(standins, channel, to[channel])
    assert (touch["status"], touch["provider_message_id"]) == ("sent", vendor_id(message))
    assert ("touch_sent", "confirmed_by_provider") in [(e["kind"], e["detail"].get("reason"))
                                                       for e in events_of(admin, lead["id"])]


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_send_the_vendor_never_took_is_owed_again_exactly_once(db, rig, admin, standins, channel, email_activity):
    shop, clock, vendors, lead, to = rig
    state = state_of(standins, channel)
    state.fail_next(1, 500)  # refused before doing anything, but a 500 cannot say so
    tick(db, vendors, clock, shop)
    assert touches_of(admin, lead["id"])[(0, channel)]["status"] == "unknown"
    clock.advance(minutes=10)
    tick(db, vendors, clock, shop)  # not in the vendor's list yet: doubt, nothing sent
    touch = touches_of(admin, lead["id"])[(0, channel)]
    assert touch["status"] == "unknown" and touch["resolve_after"] > clock()
    assert at_vendor(standins, channel, to[channel]) == []

    clock.set(T0 + SETTLE[channel])  # the vendor has settled: proof it never took it
    report = tick(db, vendors, clock, shop)
    assert report["reconcile_replanned"] == 1
    touch = touches_of(admin, lead["id"])[(0, channel)]
    assert (touch["status"], touch["replanned"]) == ("sent", True)
    assert len(copies(standins, channel, to[channel], touch["body"])) == 1
    assert "touch_replanned" in [e["kind"] for e in events_of(admin, lead["id"])]
    # The re-planned step went out first; a later step of its channel keeps its spacing from it.
    later = [t for (step, ch), t in touches_of(admin, lead["id"]).items() if ch == channel and step > 0][0]
    assert later["status"] in ("deferred", "scheduled") and later["send_after"] >= clock() + dt.timedelta(hours=1)


def test_a_lost_step_is_not_sent_after_a_later_step_went_out(db, rig, admin, standins, email_activity):
    shop, clock, vendors, lead, to = rig
    standins.twilio.fail_next(1, 500)
    tick(db, vendors, clock, shop)
    clock.set(T0 + dt.timedelta(hours=1))
    tick(db, vendors, clock, shop)  # step 1 goes out on time (an unknown step 0 counts as sent for spacing)
    clock.set(T0 + SMS_SETTLE)
    tick(db, vendors, clock, shop)
    step0 = touches_of(admin, lead["id"])[(0, "sms")]
    assert (step0["status"], step0["reason"]) == ("failed", "not_accepted_by_provider:step_1_went_out_since")
    assert [m["body"] for m in sms_to(standins, to["sms"])] == [touches_of(admin, lead["id"])[(1, "sms")]["body"]]


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_owed_again_only_once_even_if_the_second_send_is_lost_too(db, rig, admin, standins, channel,
                                                                  email_activity):
    shop, clock, vendors, lead, to = rig
    state_of(standins, channel).fail_next(2, 503)
    tick(db, vendors, clock, shop)
    body = touches_of(admin, lead["id"])[(0, channel)]["body"]
    clock.set(T0 + SETTLE[channel])
    tick(db, vendors, clock, shop)  # re-planned, sent again, 503 again: unknown again
    touch = touches_of(admin, lead["id"])[(0, channel)]
    assert (touch["status"], touch["replanned"]) == ("unknown", True)
    clock.set(T0 + 2 * SETTLE[channel] + dt.timedelta(minutes=1))
    tick(db, vendors, clock, shop)
    clock.advance(days=3)
    tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, channel)]
    assert (touch["status"], touch["reason"]) == ("failed", "not_accepted_by_provider:already_replanned")
    assert len([c for c in vendors.to(to[channel]) if c.body == body]) == 2
    assert copies(standins, channel, to[channel], body) == []


def test_the_database_allows_one_replan_only(db, rig, admin):
    shop, clock, vendors, lead, to = rig
    touch_id = touches_of(admin, lead["id"])[(1, "sms")]["id"]

    def make_unknown():
        for status in ("sending", "unknown"):
            admin.execute("UPDATE touches SET status = %s WHERE id = %s", (status, touch_id))

    make_unknown()
    with pytest.raises(psycopg.errors.CheckViolation):
        admin.execute("UPDATE touches SET status = 'scheduled' WHERE id = %s", (touch_id,))
    admin.execute("UPDATE touches SET status = 'scheduled', replanned = true WHERE id = %s", (touch_id,))
    make_unknown()
    with pytest.raises(psycopg.errors.CheckViolation):
        admin.execute("UPDATE touches SET status = 'scheduled', replanned = true WHERE id = %s", (touch_id,))
    with pytest.raises(psycopg.errors.CheckViolation):
        admin.execute("UPDATE touches SET replanned = false WHERE id = %s", (touch_id,))


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_killed_senders_reservation_is_settled_within_seconds(db, rig, admin, standins, database_url, settings,
                                                               channel, email_activity):
    shop, clock, vendors, lead, to = rig
    touch = touches_of(admin, lead["id"])[(0, channel)]
    kill_a_sender_mid_send(database_url, settings.secret_key(), standins, vendors.public_base_url, shop, touch["id"],
                           channel, T0)
    assert touches_of(admin, lead["id"])[(0, channel)]["status"] == "sending"
    wait_until_sent(standins, channel, to[channel])

    # Five seconds later (far inside the 2-minute staleness rule) the reservation's
    # session is gone: it is settled, and the vendor confirms the message.
    soon = T0 + dt.timedelta(seconds=5)
    wait_for(lambda: reconcile_in_flight_sends(db, vendors, soon, tenant_ids=[shop.id])["confirmed"], timeout=10,
             message="the orphaned reservation settled")
    touch = touches_of(admin, lead["id"])[(0, channel)]
    (message,) = at_vendor(standins, channel, to[channel])
    assert (touch["status"], touch["provider_message_id"], touch["attempts"]) == ("sent", vendor_id(message), 1)
    reasons = [(e["kind"], e["detail"].get("reason")) for e in events_of(admin, lead["id"])]
    assert ("touch_unknown", "sender_gone") in reasons and ("touch_sent", "confirmed_by_provider") in reasons
    assert vendors.calls == []  # nothing was sent again by this process


def test_a_reservation_of_a_live_sender_is_left_alone(db, rig, admin):
    shop, clock, vendors, lead, to = rig
    from lead_orchestrator.messaging.sender_session import sender_pid

    touch_id = touches_of(admin, lead["id"])[(0, "sms")]["id"]
    admin.execute("UPDATE touches SET status = 'sending', reserved_at = %s, reserved_by = %s WHERE id = %s",
                  (T0, sender_pid(db), touch_id))
    report = reconcile_in_flight_sends(db, vendors, T0 + dt.timedelta(seconds=30), tenant_ids=[shop.id])
    assert report["orphaned"] == 0
    assert touches_of(admin, lead["id"])[(0, "sms")]["status"] == "sending"
    report = reconcile_in_flight_sends(db, vendors, T0 + dt.timedelta(minutes=3), tenant_ids=[shop.id])
    assert report["orphaned"] == 1  # the staleness backstop still applies


def test_the_dispatcher_settles_a_killed_senders_reservation_by_itself(db, vendors, connected_shop, admin, standins,
                                                                      database_url, settings):
    """No touch-point run: the dispatcher's periodic reconciliation alone finds the
    reservation whose sender died and asks Twilio about it."""
    shop = connected_shop()
    now = dt.datetime.now(UTC)
    phone = unique_phone()
    lead = insert_lead(db, shop, first_seen=now, phone=phone)
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    stop = threading.Event()
    dispatcher = Dispatcher(db, vendors, workers=2)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        kill_a_sender_mid_send(database_url, settings.secret_key(), standins, vendors.public_base_url, shop,
                               touch["id"], "sms", now)
        died = time.monotonic()
        wait_for(lambda: touches_of(admin, lead["id"])[(0, "sms")]["status"] == "sent", timeout=20,
                 message="the dispatcher settling the reservation")
        settled = time.monotonic() - died
        print(f"\nkilled sender's reservation settled by the dispatcher {settled:.1f}s after the kill")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    (message,) = sms_to(standins, phone)
    assert touches_of(admin, lead["id"])[(0, "sms")]["provider_message_id"] == message["sid"]
    assert settled < 15  # the dispatcher reconciles every 3 s (not the 4-minute touch-point tick)
