"""One classification of vendor outcomes for Twilio and SendGrid, driven by the official
SDKs over real sockets: transient only when the failure proves the request was not
written, ambiguous whenever the vendor may have it (the bug this guards against: a
connection SendGrid closed after taking the mail was retried and sent twice)."""
from __future__ import annotations

import pytest

from lead_orchestrator.messaging.senders import OutgoingEmail, SendGridSender, TwilioSender
from lead_orchestrator.messaging.send_outcomes import AMBIGUOUS, PERMANENT, SENT, TRANSIENT, from_http_status
from tests.faulty_endpoints import MisbehavingServer, refused_url, unresponsive_listener

ACCOUNT, TOKEN = "AC" + "ab" * 16, "token"
CUSTOMER = "+13125550188"


def send(vendor: str, base_url: str, timeout: float = 1.0):
    if vendor == "twilio":
        return TwilioSender(ACCOUNT, TOKEN, "+15125550100", base_url, timeout=timeout).send(CUSTOMER, "Hi Dana")
    mail = OutgoingEmail(to="dana@example.com", sender="service@example-shop.com", sender_name="Shop",
                         subject="Your estimate", text="Hi Dana")
    return SendGridSender("SG.key", base_url, timeout=timeout).send(mail)


VENDORS = ["twilio", "sendgrid"]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("mode, why", [
    ("close", "connection closed after the request was read"),
    ("reset", "connection reset after the request was read"),
    ("hang", "read timeout: the vendor has the request and never answers"),
    ("partial", "half an answer"),
])
def test_a_request_the_vendor_may_have_is_ambiguous(vendor, mode, why):
    with MisbehavingServer(mode) as server:
        result = send(vendor, server.url)
        assert server.requests == 1  # the vendor did receive it
    assert result.outcome == AMBIGUOUS, (why, result)


@pytest.mark.parametrize("vendor", VENDORS)
def test_connection_refused_is_transient(vendor):
    result = send(vendor, refused_url())
    assert result.outcome == TRANSIENT, result


@pytest.mark.parametrize("vendor", VENDORS)
def test_unknown_host_is_transient(vendor):
    result = send(vendor, "http://vendor-host.invalid")  # .invalid never resolves (RFC 6761)
    assert result.outcome == TRANSIENT, result


@pytest.mark.parametrize("vendor", VENDORS)
def test_connect_timeout_is_transient(vendor):
    with unresponsive_listener() as url:
        result = send(vendor, url, timeout=0.5)
    assert result.outcome == TRANSIENT and "timed out" in result.detail.lower().replace("timeout", "timed out"), result


@pytest.mark.parametrize("vendor", VENDORS)
def test_tls_handshake_failure_is_transient(vendor):
    with MisbehavingServer("not_tls") as server:
        result = send(vendor, server.url.replace("http://", "https://"))
        assert server.requests == 0
    assert result.outcome == TRANSIENT, result


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_answers_through_the_stand_ins(vendor, standins):
    """429 refused (transient); a 500 after the work was done, and one before it, look the
    same to the sender: ambiguous; a 4xx rejection is permanent; 2xx is sent."""
    state = standins.twilio if vendor == "twilio" else standins.sendgrid
    url = standins.twilio_url if vendor == "twilio" else standins.sendgrid_url
    if vendor == "twilio":
        state.add_account(ACCOUNT, TOKEN)
    else:
        state.add_api_key("SG.key")
    state.throttle_next(1)
    assert send(vendor, url).outcome == TRANSIENT
    state.fail_after_work_next(1, 500)
    assert send(vendor, url).outcome == AMBIGUOUS
    state.fail_next(1, 503)
    assert send(vendor, url).outcome == AMBIGUOUS
    ok = send(vendor, url)
    assert ok.outcome == SENT and ok.message_id


def test_twilio_rejections_are_permanent_with_their_code(standins):
    standins.twilio.add_account(ACCOUNT, TOKEN)
    standins.twilio.add_invalid(CUSTOMER)
    try:
        result = send("twilio", standins.twilio_url)
    finally:
        standins.twilio.invalid_numbers.discard(CUSTOMER)
    assert (result.outcome, result.code) == (PERMANENT, "21211")


@pytest.mark.parametrize("status, outcome", [
    (400, PERMANENT), (401, PERMANENT), (403, PERMANENT), (404, PERMANENT), (413, PERMANENT),
    (408, TRANSIENT), (429, TRANSIENT),
    (500, AMBIGUOUS), (502, AMBIGUOUS), (503, AMBIGUOUS), (504, AMBIGUOUS), (302, AMBIGUOUS),
])
def test_the_status_table(status, outcome):
    assert from_http_status(status).outcome == outcome
