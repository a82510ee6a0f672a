"""Twilio webhooks over real HTTP: inbound SMS (STOP / START / HELP / replies) and status
callbacks, signed with the shop's auth token over the public URL. A bad request gets a
clear 4xx and changes nothing."""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

import httpx
import pytest
from twilio.request_validator import RequestValidator

from lead_orchestrator.services.touch_sweep import send_due_touches
from tests.support import wait_for
from tests.touchpoint_support import (UTC, RecordingVendors, SimClock, events_of, insert_lead, lead_row, tenant_counts,
                                      touches_of, unique_email, unique_phone)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)


def post_twilio(receiver, shop, kind: str, params: dict, *, token: str | None = None, signed_url: str | None = None,
                headers: dict | None = None, query: str = "") -> httpx.Response:
    path = f"/webhooks/twilio/{shop.slug}/{kind}" + (f"?{query}" if query else "")
    url = receiver.url + path
    token = token or shop.twilio_auth_token.get_secret_value()
    signature = RequestValidator(token).compute_signature(signed_url or url, params)
    return httpx.post(url, content=urlencode(params).encode(), timeout=10, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature, **(headers or {})})


def inbound(shop, phone: str, body: str, **extra) -> dict:
    return {"MessageSid": "SM" + "1" * 32, "AccountSid": shop.twilio_account_sid, "From": phone,
            "To": shop.twilio_sender, "Body": body, "NumMedia": "0", **extra}


def contact(admin, shop, address: str) -> dict | None:
    return admin.execute("SELECT opted_out, change_source FROM contacts WHERE tenant_id = %s AND address = %s",
                         (shop.id, address)).fetchone()


@pytest.fixture
def lead_setup(db, connected_shop):
    shop = connected_shop()
    phone = unique_phone()
    lead = insert_lead(db, shop, first_seen=T0, phone=phone, email=unique_email())
    return shop, phone, lead


@pytest.mark.parametrize("word", ["STOP", "stop", "  Stop\n", "STOPALL", "unsubscribe", "Cancel", "END", "quit",
                                  "REVOKE", "OptOut", "STOP!"])
def test_stop_keywords_opt_out_and_stop_every_lead_of_the_number(receiver, db, connected_shop, admin, word):
    shop = connected_shop()
    phone = unique_phone()
    leads = [insert_lead(db, shop, first_seen=T0, phone=phone, email=unique_email()) for _ in range(2)]
    response = post_twilio(receiver, shop, "inbound", inbound(shop, phone, word))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    assert "<Message>" not in response.text  # Twilio confirms the opt-out itself
    assert contact(admin, shop, phone) == {"opted_out": True, "change_source": "sms_keyword"}
    for lead in leads:
        row = lead_row(admin, lead["id"])
        assert (row["status"], row["status_reason"]) == ("stopped", "opted_out")
        assert {t["status"] for t in touches_of(admin, lead["id"]).values()} == {"cancelled"}


def test_a_sentence_is_a_reply_not_a_keyword(receiver, lead_setup, admin):
    shop, phone, lead = lead_setup
    response = post_twilio(receiver, shop, "inbound", inbound(shop, phone, "Stop by Tuesday? Is 10am ok"))
    assert response.status_code == 200
    row = lead_row(admin, lead["id"])
    assert (row["status"], row["status_reason"]) == ("stopped", "replied")
    assert contact(admin, shop, phone) is None  # a reply is not an opt-out
    stopped = [e for e in events_of(admin, lead["id"]) if e["kind"] == "lead_stopped"][0]
    assert stopped["detail"]["body"] == "Stop by Tuesday? Is 10am ok"


def test_yes_from_a_subscribed_number_is_an_answer(receiver, lead_setup, admin):
    shop, phone, lead = lead_setup
    assert post_twilio(receiver, shop, "inbound", inbound(shop, phone, "Yes")).status_code == 200
    assert lead_row(admin, lead["id"])["status_reason"] == "replied"


def test_start_re_subscribes_and_later_leads_are_texted_again(receiver, db, vendors, connected_shop, admin, standins):
    shop = connected_shop()
    phone = unique_phone()
    clock = SimClock(T0)
    recording = RecordingVendors(vendors, clock)
    first = insert_lead(db, shop, first_seen=T0, phone=phone, email=unique_email())
    send_due_touches(db, recording, now=T0, due_before=T0, tenant_ids=[shop.id])
    assert post_twilio(receiver, shop, "inbound", inbound(shop, phone, "STOP")).status_code == 200

    # Opted out: a new estimate's texts are skipped (the email still goes).
    clock.set(T0 + dt.timedelta(hours=2))
    second = insert_lead(db, shop, first_seen=clock(), phone=phone, email=unique_email())
    send_due_touches(db, recording, now=clock(), due_before=clock(), tenant_ids=[shop.id])
    skipped = touches_of(admin, second["id"])[(0, "sms")]
    assert (skipped["status"], skipped["reason"]) == ("skipped", "opted_out")
    assert len([c for c in recording.to(phone)]) == 1

    assert post_twilio(receiver, shop, "inbound", inbound(shop, phone, "start")).status_code == 200
    assert contact(admin, shop, phone) == {"opted_out": False, "change_source": "sms_keyword"}
    assert lead_row(admin, first["id"])["status"] == "stopped"  # an old sequence is not resumed
    assert lead_row(admin, second["id"])["status"] == "active"  # START is consent, not a reply

    clock.set(T0 + dt.timedelta(hours=3))
    third = insert_lead(db, shop, first_seen=clock(), phone=phone, email=unique_email())
    send_due_touches(db, recording, now=clock(), due_before=clock(), tenant_ids=[shop.id])
    assert touches_of(admin, third["id"])[(0, "sms")]["status"] == "sent"
    # Due at T0+3h: the second lead's step 1 and the third lead's step 0. Each is the
    # first text its lead sends, so each says how to opt out.
    texts = recording.to(phone)
    assert len(texts) == 3
    assert all("Reply STOP to opt out." in t.body for t in texts[1:])


def test_help_answers_with_the_shops_name_and_phone(receiver, lead_setup, admin):
    shop, phone, lead = lead_setup
    response = post_twilio(receiver, shop, "inbound", inbound(shop, phone, "help"))
    assert response.status_code == 200
    assert "<Message>" in response.text and shop.name in response.text and shop.shop_phone in response.text
    assert lead_row(admin, lead["id"])["status"] == "active"


def test_the_stand_in_signs_inbound_like_twilio_and_the_receiver_accepts_it(receiver, lead_setup, admin, standins):
    shop, phone, lead = lead_setup
    status = standins.twilio.simulate_inbound(f"{receiver.url}/webhooks/twilio/{shop.slug}/inbound", phone,
                                              shop.twilio_sender, "UNSUBSCRIBE", account_sid=shop.twilio_account_sid)
    assert status == 200
    assert lead_row(admin, lead["id"])["status_reason"] == "opted_out"


@pytest.mark.parametrize("case", ["bad_signature", "missing_signature", "other_token", "internal_url",
                                  "wrong_content_type", "too_large", "unknown_shop", "no_from"])
def test_bad_inbound_requests_are_refused_and_change_nothing(receiver, lead_setup, admin, case):
    shop, phone, lead = lead_setup
    before = tenant_counts(admin, shop.id)
    params = inbound(shop, phone, "STOP")
    expected = {"bad_signature": 401, "missing_signature": 401, "other_token": 401, "internal_url": 401,
                "wrong_content_type": 415, "too_large": 413, "unknown_shop": 404, "no_from": 422}[case]
    if case == "bad_signature":
        response = post_twilio(receiver, shop, "inbound", params, headers={"X-Twilio-Signature": "bm9wZQ=="})
    elif case == "missing_signature":
        response = httpx.post(f"{receiver.url}/webhooks/twilio/{shop.slug}/inbound", content=urlencode(params),
                              headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    elif case == "other_token":
        response = post_twilio(receiver, shop, "inbound", params, token="0" * 32)
    elif case == "internal_url":  # signed for a URL other than the public one
        response = post_twilio(receiver, shop, "inbound", params,
                               signed_url=f"http://10.0.0.7:8000/webhooks/twilio/{shop.slug}/inbound")
    elif case == "wrong_content_type":
        response = post_twilio(receiver, shop, "inbound", params, headers={"Content-Type": "application/json"})
    elif case == "too_large":
        response = post_twilio(receiver, shop, "inbound", {**params, "Body": "x" * 300_000})
    elif case == "unknown_shop":
        response = httpx.post(f"{receiver.url}/webhooks/twilio/no-such-shop/inbound", content=urlencode(params),
                              headers={"Content-Type": "application/x-www-form-urlencoded",
                                       "X-Twilio-Signature": "x"}, timeout=10)
    else:
        response = post_twilio(receiver, shop, "inbound", {k: v for k, v in params.items() if k != "From"})
    assert response.status_code == expected, response.text
    assert set(response.json()) == {"error"} and set(response.json()["error"]) == {"code", "message"}
    assert tenant_counts(admin, shop.id) == before
    assert lead_row(admin, lead["id"])["status"] == "active"


def test_status_callbacks_track_delivery_and_accept_unknown_parameters(receiver, db, vendors, connected_shop, admin,
                                                                       standins):
    shop = connected_shop()
    ok, bad = unique_phone(), unique_phone()
    standins.twilio.add_undeliverable(bad, 30007)
    leads = {p: insert_lead(db, shop, first_seen=T0, phone=p) for p in (ok, bad)}
    send_due_touches(db, vendors, now=T0, due_before=T0, tenant_ids=[shop.id])

    def statuses():
        return {p: touches_of(admin, lead["id"])[(0, "sms")]["delivery_status"] for p, lead in leads.items()}

    wait_for(lambda: statuses() == {ok: "delivered", bad: "undelivered"}, timeout=15, message="status callbacks")
    failed = touches_of(admin, leads[bad]["id"])[(0, "sms")]
    assert (failed["status"], failed["error_code"]) == ("sent", "30007")
    assert "sms_undelivered" in [e["kind"] for e in events_of(admin, leads[bad]["id"])]
    callbacks = [c for c in standins.twilio.callbacks.items() if c["params"]["To"] in (ok, bad)]
    assert callbacks and all(c["response_status"] == 204 for c in callbacks)
    assert all("ApiVersion" in c["params"] for c in callbacks)  # a parameter we do not use

    # A late `sent` never overwrites `delivered`.
    touch = touches_of(admin, leads[ok]["id"])[(0, "sms")]
    late = {"MessageSid": touch["provider_message_id"], "MessageStatus": "sent", "To": ok, "SomethingNew": "1"}
    assert post_twilio(receiver, shop, "status", late, query=f"touch={touch['id']}").status_code == 204
    assert touches_of(admin, leads[ok]["id"])[(0, "sms")]["delivery_status"] == "delivered"


def test_status_callback_with_21610_opts_the_number_out(receiver, lead_setup, admin):
    shop, phone, lead = lead_setup
    params = {"MessageSid": "SM" + "2" * 32, "MessageStatus": "failed", "ErrorCode": "21610", "To": phone}
    assert post_twilio(receiver, shop, "status", params).status_code == 204
    assert contact(admin, shop, phone) == {"opted_out": True, "change_source": "twilio_21610"}
    assert lead_row(admin, lead["id"])["status_reason"] == "opted_out"


def test_status_callback_needs_a_message_sid(receiver, lead_setup):
    shop, phone, _ = lead_setup
    response = post_twilio(receiver, shop, "status", {"MessageStatus": "sent", "To": phone})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_payload"
