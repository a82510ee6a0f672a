"""The touch-point engine through its plain functions, time driven by a test clock:
each step once at its time, transient errors (nothing taken: 429) retried, permanent
ones recorded, and an ambiguous outcome (crash, dropped connection, 5xx) never sent a
second time."""
from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest

from lead_orchestrator.services.touch_sweep import send_due_touches
from lead_orchestrator.services.touches import STALE_RESERVATION, send_touch
from tests.conftest import emails_to, sms_to
from tests.support import wait_for
from tests.touchpoint_support import (UTC, RecordingVendors, SimClock, SimulatedCrash, events_of, insert_lead,
                                      kill_a_sender_mid_send, lead_row, touches_of, unique_email, unique_phone)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)  # a Tuesday, 09:00 in Chicago


def tick(db, vendors, clock, shop):
    return send_due_touches(db, vendors, now=clock(), due_before=clock(), clock=clock, tenant_ids=[shop.id],
                            sleep=clock.sleep)


@pytest.fixture
def rig(db, vendors, connected_shop, standins):
    """A shop open around the clock, a lead with phone and email, and a clock at its creation."""
    shop = connected_shop()
    clock = SimClock(T0)
    recording = RecordingVendors(vendors, clock)
    phone, email = unique_phone(), unique_email()
    lead = insert_lead(db, shop, first_seen=T0, phone=phone, email=email)
    return shop, clock, recording, lead, phone, email


def test_default_sequence_sends_each_step_once_at_its_time_then_completes(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, email = rig
    for offset in (dt.timedelta(0), dt.timedelta(minutes=59), dt.timedelta(hours=1), dt.timedelta(hours=2),
                   dt.timedelta(days=1), dt.timedelta(days=3), dt.timedelta(days=4)):
        clock.set(T0 + offset)
        tick(db, vendors, clock, shop)
        tick(db, vendors, clock, shop)  # a second run at the same moment owes nothing
    sent = [(c.at - T0, c.channel) for c in vendors.calls]
    assert sent == [(dt.timedelta(0), "sms"), (dt.timedelta(0), "email"), (dt.timedelta(hours=1), "sms"),
                    (dt.timedelta(days=1), "email"), (dt.timedelta(days=3), "sms")]
    assert len(sms_to(standins, phone)) == 3 and len(emails_to(standins, email)) == 2
    sms_bodies = [c.body for c in vendors.calls if c.channel == "sms"]
    assert "Reply STOP to opt out." in sms_bodies[0]
    assert all("Reply STOP" not in b for b in sms_bodies[1:])
    assert {t["status"] for t in touches_of(admin, lead["id"]).values()} == {"sent"}
    assert lead_row(admin, lead["id"])["status"] == "completed"
    assert events_of(admin, lead["id"])[-1]["kind"] == "lead_completed"


def test_throttled_sends_retry_inside_the_run_with_backoff(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, _ = rig
    standins.twilio.throttle_next(2)  # 429 twice, then accepted
    tick(db, vendors, clock, shop)
    assert clock.slept == [1, 2]
    assert len([c for c in vendors.calls if c.channel == "sms"]) == 3
    assert len(sms_to(standins, phone)) == 1
    assert touches_of(admin, lead["id"])[(0, "sms")]["status"] == "sent"


def test_transient_errors_beyond_the_run_go_back_to_the_schedule(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, _ = rig
    standins.twilio.throttle_next(3)  # the run's three quick attempts are all refused with 429
    tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    assert (touch["status"], touch["reason"], touch["error_code"]) == ("scheduled", "retry:20429", "20429")
    assert touch["send_after"] == T0 + dt.timedelta(minutes=1)  # backoff counts from the reservation
    clock.advance(seconds=30)
    tick(db, vendors, clock, shop)
    assert sms_to(standins, phone) == []  # not yet: the backoff holds
    clock.advance(seconds=40)
    tick(db, vendors, clock, shop)
    assert len(sms_to(standins, phone)) == 1
    assert touches_of(admin, lead["id"])[(0, "sms")]["status"] == "sent"


def test_transient_errors_give_up_after_five_reservations(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, _ = rig
    standins.twilio.throttle_next(1000)
    try:
        for _ in range(8):
            tick(db, vendors, clock, shop)
            clock.advance(minutes=20)
    finally:
        with standins.twilio._lock:
            standins.twilio.modes.throttle = 0
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    assert (touch["status"], touch["reason"], touch["attempts"]) == ("failed", "transient_errors_exhausted", 5)
    assert len([c for c in vendors.calls if c.to == phone and c.body == touch["body"]]) == 5 * 3
    assert sms_to(standins, phone) == []


def test_invalid_number_is_recorded_and_later_texts_are_skipped(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, email = rig
    standins.twilio.add_invalid(phone)
    tick(db, vendors, clock, shop)
    touches = touches_of(admin, lead["id"])
    assert (touches[(0, "sms")]["status"], touches[(0, "sms")]["error_code"]) == ("failed", "21211")
    assert "Invalid 'To'" in touches[(0, "sms")]["reason"]
    assert {touches[(1, "sms")]["status"], touches[(3, "sms")]["status"]} == {"skipped"}
    assert touches[(1, "sms")]["reason"] == "sms_unreachable:21211"
    clock.advance(days=1)
    tick(db, vendors, clock, shop)
    assert len(emails_to(standins, email)) == 2  # email goes on
    assert len([c for c in vendors.calls if c.channel == "sms"]) == 1


def test_carrier_opt_out_21610_stops_the_lead_and_opts_the_number_out(db, rig, admin, standins, connected_shop):
    shop, clock, vendors, lead, phone, email = rig
    other = insert_lead(db, shop, first_seen=T0, phone=phone, email=unique_email())  # same customer, 2nd estimate
    standins.twilio.add_opted_out(phone)
    clock.advance(seconds=1)
    send_due_touches(db, vendors, now=clock(), due_before=clock(), tenant_ids=[shop.id])
    contact = admin.execute("SELECT opted_out, change_source FROM contacts WHERE tenant_id = %s AND address = %s",
                            (shop.id, phone)).fetchone()
    assert contact == {"opted_out": True, "change_source": "twilio_21610"}
    for lead_id in (lead["id"], other["id"]):
        row = lead_row(admin, lead_id)
        assert (row["status"], row["status_reason"]) == ("stopped", "opted_out")
        assert not {t["status"] for t in touches_of(admin, lead_id).values()} & {"scheduled", "deferred"}
    clock.advance(days=4)
    before = len(vendors.calls)
    tick(db, vendors, clock, shop)
    assert len(vendors.calls) == before


def test_dropped_connection_after_send_is_unknown_and_never_resent(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, _ = rig
    standins.twilio.drop_next(1)  # Twilio takes the message, the answer never arrives
    tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    assert touch["status"] in ("unknown", "sent")  # sent only if a status callback proved it
    assert len(sms_to(standins, phone)) == 1
    for _ in range(5):
        clock.advance(minutes=3)
        tick(db, vendors, clock, shop)
    assert len(sms_to(standins, phone)) == 1
    assert len([c for c in vendors.calls if c.to == phone and c.at == T0]) == 1


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_crash_between_provider_call_and_commit_never_sends_twice(db, rig, admin, standins, channel):
    shop, clock, vendors, lead, phone, email = rig
    address = phone if channel == "sms" else email
    vendors.crash_after[(channel, address)] = 1
    with pytest.raises(SimulatedCrash):
        for _ in range(2):  # the crash ends the run wherever it happens
            tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, channel)]
    assert touch["status"] == "sending"
    key = "body" if channel == "sms" else "text"
    messages = sms_to(standins, phone) if channel == "sms" else emails_to(standins, email)
    delivered = (lambda: [m for m in (sms_to(standins, phone) if channel == "sms" else emails_to(standins, email))
                          if m[key] == touch["body"]])
    assert len(messages) == 1 and len(delivered()) == 1

    # Runs go on: this process (the sender) is alive, so inside the stale window the
    # reservation is left alone; after it the outcome is unknown and the vendor is asked.
    # Twilio's list shows the message: sent. This SendGrid account has no Email Activity
    # add-on: the outcome stays unknown, with that reason.
    if channel == "sms":  # simulated days pass in milliseconds: let Twilio send it first
        wait_for(lambda: delivered()[0]["date_sent"], timeout=10, message="the stand-in sending the SMS")
    for minutes in (1, 1, 1, 30, 60 * 24, 60 * 24 * 3):
        clock.advance(minutes=minutes)
        tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, channel)]
    if channel == "email":
        assert (touch["status"], touch["reason"]) == ("unknown", "unresolved:email_activity_unavailable")
        assert touch["resolve_after"] is None
    else:
        assert (touch["status"], touch["reason"]) == ("sent", "confirmed_by_provider")
        assert touch["provider_message_id"] == delivered()[0]["sid"]
    assert len(delivered()) == 1
    assert len([c for c in vendors.calls if c.to == address and c.body == touch["body"]]) == 1
    kinds = [e["kind"] for e in events_of(admin, lead["id"])]
    assert "touch_unknown" in kinds or "touch_sent" in kinds


def test_status_callback_proves_a_crashed_send_was_sent(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, _ = rig
    vendors.crash_after[("sms", phone)] = 1
    with pytest.raises(SimulatedCrash):
        tick(db, vendors, clock, shop)
    # The stand-in calls back `sent` then `delivered` with the touch id in the URL.
    wait_for(lambda: touches_of(admin, lead["id"])[(0, "sms")]["delivery_status"] == "delivered",
             timeout=10, message="status callbacks")
    clock.advance(minutes=3)
    tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    assert (touch["status"], touch["reason"]) == ("sent", "confirmed_by_provider")
    assert touch["provider_message_id"] == sms_to(standins, phone)[0]["sid"]


def test_concurrent_senders_of_one_touch_send_it_once(db, rig, admin, standins):
    shop, clock, vendors, lead, phone, _ = rig
    touch_id = touches_of(admin, lead["id"])[(0, "sms")]["id"]
    barrier = threading.Barrier(6)
    outcomes = []

    def sender():
        barrier.wait()
        outcomes.append(send_touch(db, shop, touch_id, vendors, now=T0))

    threads = [threading.Thread(target=sender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 6
    assert [o.status for o in outcomes if o.reason != "not_pending"] == ["sent"]
    assert len([c for c in vendors.calls if c.channel == "sms"]) == 1
    assert len(sms_to(standins, phone)) == 1


def test_concurrent_runs_send_every_touch_exactly_once(db, vendors, connected_shop, standins, admin):
    shop = connected_shop()
    clock = SimClock(T0)
    recording = RecordingVendors(vendors, clock)
    leads = [insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=unique_email()) for _ in range(12)]
    barrier = threading.Barrier(4)

    def run():
        barrier.wait()
        send_due_touches(db, recording, now=T0, due_before=T0, tenant_ids=[shop.id])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(recording.calls) == 24
    assert len({(c.channel, c.to) for c in recording.calls}) == 24
    for lead in leads:
        assert len(sms_to(standins, lead["phone_e164"])) == 1


def test_the_database_refuses_to_make_a_sent_touch_due_again(db, rig, admin):
    shop, clock, vendors, lead, phone, _ = rig
    tick(db, vendors, clock, shop)
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    for status in ("scheduled", "deferred", "sending", "unknown"):
        with pytest.raises(psycopg.errors.CheckViolation):
            admin.execute("UPDATE touches SET status = %s WHERE id = %s", (status, touch["id"]))


def test_missing_credentials_and_missing_postal_address_are_recorded(db, vendors, make_shop, admin):
    shop = make_shop(send_window_start="00:00", send_window_end="23:59:59", settings={"holiday_country": None})
    # Removed after set-up (a new shop that cannot send anything is refused).
    admin.execute("UPDATE tenants SET twilio_account_sid = NULL, postal_address = NULL WHERE id = %s", (shop.id,))
    clock = SimClock(T0)
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=unique_email())
    tick(db, vendors, clock, shop)
    touches = touches_of(admin, lead["id"])
    assert (touches[(0, "sms")]["status"], touches[(0, "sms")]["error_code"]) == ("failed", "missing_credentials")
    assert (touches[(0, "email")]["status"], touches[(0, "email")]["reason"]) == ("skipped", "no_postal_address")


def test_daily_limit_defers_texts_beyond_it(db, vendors, connected_shop, admin):
    steps = [{"step": i, "offset_minutes": 10 * i, "channel": "sms", "template": "followup_sms"} for i in range(5)]
    shop = connected_shop(settings={"holiday_country": None, "max_sms_per_24h": 3, "sequence": steps})
    clock = SimClock(T0)
    recording = RecordingVendors(vendors, clock)
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone())
    for minutes in range(0, 60, 10):
        clock.set(T0 + dt.timedelta(minutes=minutes))
        tick(db, recording, clock, shop)
    assert [c.at - T0 for c in recording.calls] == [dt.timedelta(minutes=m) for m in (0, 10, 20)]
    touch = touches_of(admin, lead["id"])[(3, "sms")]
    assert (touch["status"], touch["reason"]) == ("deferred", "daily_limit")
    assert touch["send_after"] == T0 + dt.timedelta(hours=24)
    clock.set(T0 + dt.timedelta(hours=24))
    tick(db, recording, clock, shop)
    assert [c.at - T0 for c in recording.calls][3:] == [dt.timedelta(hours=24)]


def test_stale_threshold_is_well_above_a_provider_call():
    # 3 attempts x 10 s SDK timeout + 1 s + 2 s of backoff < the stale threshold.
    assert STALE_RESERVATION > dt.timedelta(seconds=3 * 10 + 3) * 2


def test_a_killed_sender_process_never_causes_a_second_message(db, rig, admin, standins, database_url, settings):
    shop, clock, vendors, lead, phone, _ = rig
    touch = touches_of(admin, lead["id"])[(0, "sms")]
    kill_a_sender_mid_send(database_url, settings.secret_key(), standins, vendors.public_base_url, shop, touch["id"],
                           "sms", T0)
    assert touches_of(admin, lead["id"])[(0, "sms")]["status"] == "sending"
    assert len(sms_to(standins, phone)) == 1

    for minutes in (1, 1, 5, 60, 60 * 24 * 4):
        clock.advance(minutes=minutes)
        tick(db, vendors, clock, shop)
    after = touches_of(admin, lead["id"])[(0, "sms")]
    assert after["status"] in ("unknown", "sent") and after["attempts"] == 1
    step0 = [m for m in sms_to(standins, phone) if "Reply STOP" in m["body"]]
    assert len(step0) == 1
    assert not [c for c in vendors.calls if "Reply STOP" in c.body]  # nobody in this process tried again


def test_a_night_lead_gets_its_follow_up_an_hour_after_the_morning_text(db, vendors, connected_shop, admin):
    shop = connected_shop(send_window_start="08:00", send_window_end="21:00")
    night = dt.datetime(2027, 3, 3, 4, 0, tzinfo=UTC)  # 22:00 in Chicago
    clock = SimClock(night)
    recording = RecordingVendors(vendors, clock)
    lead = insert_lead(db, shop, first_seen=night, phone=unique_phone())
    while clock() < night + dt.timedelta(hours=14):
        tick(db, recording, clock, shop)
        clock.advance(minutes=4)
    morning = dt.datetime(2027, 3, 3, 14, 0, tzinfo=UTC)  # 08:00 in Chicago
    assert [c.at for c in recording.calls] == [morning, morning + dt.timedelta(hours=1)]
    step1 = touches_of(admin, lead["id"])[(1, "sms")]
    assert step1["status"] == "sent"
    kinds = [(e["kind"], e["detail"].get("reason")) for e in events_of(admin, lead["id"])]
    assert ("touch_deferred", "quiet_hours") in kinds and ("touch_deferred", "spacing") in kinds
