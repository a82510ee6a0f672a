"""The Twilio stand-in, driven by the official SDK over real HTTP."""
from __future__ import annotations

from urllib.parse import parse_qsl

import httpx
import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from tests.standins.accounts import TWILIO_SID, TWILIO_TOKEN
from lead_orchestrator.messaging.sdk_clients import make_twilio_client

SHOP = "+15125550100"
CUSTOMER = "+15125550143"


@pytest.fixture
def client(servers):
    return make_twilio_client(TWILIO_SID, TWILIO_TOKEN, servers.twilio_url)


def rest_error(call) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as info:
        call()
    return info.value


def test_create_message_answers_201_resource_and_lands_in_outbox(servers, client):
    msg = client.messages.create(to=CUSTOMER, from_=SHOP, body="Hi Dana, your estimate is ready. Reply STOP to opt out.")
    assert msg.sid.startswith("SM") and len(msg.sid) == 34
    assert (msg.status, msg.direction, msg.num_segments, msg.error_code) == ("queued", "outbound-api", "1", None)
    assert msg.account_sid == TWILIO_SID and msg.to == CUSTOMER and msg.from_ == SHOP
    assert msg.date_created is not None  # the SDK parsed the RFC 2822 date
    box = httpx.get(f"{servers.twilio_url}/_outbox.json").json()
    assert [(m["sid"], m["status_callback"]) for m in box] == [(msg.sid, None)]
    assert httpx.get(f"{servers.twilio_url}/_outbox/all.json").json()["rejected"] == []
    page = httpx.get(f"{servers.twilio_url}/_outbox").text
    assert "your estimate is ready" in page


def test_segments_count_gsm7_and_ucs2(client):
    assert client.messages.create(to=CUSTOMER, from_=SHOP, body="x" * 161).num_segments == "2"
    assert client.messages.create(to=CUSTOMER, from_=SHOP, body="👍" * 40).num_segments == "2"


@pytest.mark.parametrize("kwargs, code", [
    ({"to": "5125550143", "from_": SHOP, "body": "x"}, 21211),
    ({"to": CUSTOMER, "body": "x"}, 21603),
    ({"to": CUSTOMER, "from_": "+1-512-bad", "body": "x"}, 21212),
    ({"to": CUSTOMER, "from_": SHOP}, 21602),
    ({"to": CUSTOMER, "from_": SHOP, "body": "x" * 1601}, 21617),
    ({"to": CUSTOMER, "from_": SHOP, "body": "x", "status_callback": "not a url"}, 21609),
])
def test_contract_violations_answer_twilio_error_codes(servers, client, kwargs, code):
    err = rest_error(lambda: client.messages.create(**kwargs))
    assert (err.status, err.code) == (400, code)
    assert servers.twilio.messages.items() == []
    assert servers.twilio.rejected.items()[-1]["code"] == code


def test_missing_to_answers_21604(servers):
    r = httpx.post(f"{servers.twilio_url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                   data={"From": SHOP, "Body": "x"}, auth=(TWILIO_SID, TWILIO_TOKEN))
    assert r.status_code == 400
    assert r.json() == {"code": 21604, "message": "A 'To' phone number is required.",
                        "more_info": "https://www.twilio.com/docs/errors/21604", "status": 400}


def test_messaging_service_sid_replaces_from(client):
    msg = client.messages.create(to=CUSTOMER, messaging_service_sid="MG" + "a" * 32, body="hello")
    assert msg.from_ is None and msg.messaging_service_sid == "MG" + "a" * 32


def test_opted_out_and_invalid_numbers(servers, client):
    servers.twilio.add_opted_out(CUSTOMER)
    assert rest_error(lambda: client.messages.create(to=CUSTOMER, from_=SHOP, body="x")).code == 21610
    assert rest_error(lambda: client.messages.create(to="+15005550001", from_=SHOP, body="x")).code == 21211
    servers.twilio.add_invalid("+15125550199")
    assert rest_error(lambda: client.messages.create(to="+15125550199", from_=SHOP, body="x")).code == 21211


def test_throttle_and_server_errors_then_recovery(servers, client):
    servers.twilio.throttle_next(1)
    servers.twilio.fail_next(1, 503)
    err = rest_error(lambda: client.messages.create(to=CUSTOMER, from_=SHOP, body="x"))
    assert (err.status, err.code) == (429, 20429)
    assert rest_error(lambda: client.messages.create(to=CUSTOMER, from_=SHOP, body="x")).status == 503
    assert client.messages.create(to=CUSTOMER, from_=SHOP, body="x").status == "queued"


def test_throttle_and_fail_through_the_control_routes(servers, client):
    assert httpx.post(f"{servers.twilio_url}/_standin/throttle", json={"count": 1}).json() == {"throttle": 1}
    assert httpx.post(f"{servers.twilio_url}/_standin/fail", json={"count": 1, "status": 500}).json() == \
        {"fail": 1, "status": 500}
    assert rest_error(lambda: client.messages.create(to=CUSTOMER, from_=SHOP, body="x")).status == 429
    assert rest_error(lambda: client.messages.create(to=CUSTOMER, from_=SHOP, body="x")).code == 20500
    assert client.messages.create(to=CUSTOMER, from_=SHOP, body="x").status == "queued"


def test_wrong_credentials_answer_401_20003(servers):
    for sid, token in ((TWILIO_SID, "wrong-token"), ("AC" + "f" * 32, TWILIO_TOKEN)):
        bad = make_twilio_client(sid, token, servers.twilio_url)
        err = rest_error(lambda: bad.messages.create(to=CUSTOMER, from_=SHOP, body="x"))
        assert (err.status, err.code) == (401, 20003)
    # Username must be the AccountSid of the path even when no token is checked.
    r = httpx.post(f"{servers.twilio_url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                   data={"To": CUSTOMER, "From": SHOP, "Body": "x"}, auth=("AC" + "1" * 32, TWILIO_TOKEN))
    assert r.status_code == 401 and r.json()["code"] == 20003


def test_status_callbacks_are_signed_and_progress(servers, client, receiver):
    url = f"{receiver.url}/twilio/status?shop=demo"
    servers.twilio.add_undeliverable("+15125550177", 30007)
    ok = client.messages.create(to=CUSTOMER, from_=SHOP, body="x", status_callback=url)
    bad = client.messages.create(to="+15125550177", from_=SHOP, body="x", status_callback=url)
    calls = receiver.wait_for_count(4)
    validator = RequestValidator(TWILIO_TOKEN)
    seen = {}
    for call in calls:
        params = dict(parse_qsl(call["body"], keep_blank_values=True))
        assert validator.validate(url, params, call["headers"]["X-Twilio-Signature"])
        assert params["AccountSid"] == TWILIO_SID and params["ApiVersion"] == "2010-04-01"
        seen.setdefault(params["MessageSid"], []).append((params["MessageStatus"], params.get("ErrorCode")))
    assert seen[ok.sid] == [("sent", None), ("delivered", None)]
    assert seen[bad.sid] == [("sent", None), ("undelivered", "30007")]
    assert client.messages(bad.sid).fetch().status == "undelivered"
    assert not validator.validate(url, {**params, "Body": "tampered"}, call["headers"]["X-Twilio-Signature"])


def test_inbound_sms_is_signed_and_stop_opts_out(servers, client, receiver):
    url = f"{receiver.url}/twilio/inbound"
    r = httpx.post(f"{servers.twilio_url}/_standin/inbound",
                   json={"url": url, "from": CUSTOMER, "to": SHOP, "body": "stop", "auth_token": TWILIO_TOKEN})
    assert r.json() == {"status": 200}
    (call,) = receiver.wait_for_count(1)
    params = dict(parse_qsl(call["body"], keep_blank_values=True))
    assert RequestValidator(TWILIO_TOKEN).validate(url, params, call["headers"]["X-Twilio-Signature"])
    assert (params["From"], params["To"], params["Body"], params["NumMedia"]) == (CUSTOMER, SHOP, "stop", "0")
    assert params["MessageSid"].startswith("SM") and "OptOutType" not in params
    assert rest_error(lambda: client.messages.create(to=CUSTOMER, from_=SHOP, body="x")).code == 21610
    assert servers.twilio.simulate_inbound(url, CUSTOMER, SHOP, "START") == 200
    assert client.messages.create(to=CUSTOMER, from_=SHOP, body="x").status == "queued"


def test_dropped_connection_leaves_an_ambiguous_but_sent_message(servers):
    servers.twilio.drop_next(1)
    quick = make_twilio_client(TWILIO_SID, TWILIO_TOKEN, servers.twilio_url, timeout=2)
    with pytest.raises(requests.exceptions.ConnectionError):
        quick.messages.create(to=CUSTOMER, from_=SHOP, body="did it go?")
    assert [m["body"] for m in servers.twilio.messages.items()] == ["did it go?"]
    assert quick.messages.create(to=CUSTOMER, from_=SHOP, body="again").status == "queued"


def test_hang_past_client_timeout(servers):
    servers.twilio.drop_next(1, after_seconds=1.0)
    quick = make_twilio_client(TWILIO_SID, TWILIO_TOKEN, servers.twilio_url, timeout=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        quick.messages.create(to=CUSTOMER, from_=SHOP, body="slow")
    assert len(servers.twilio.messages) == 1
