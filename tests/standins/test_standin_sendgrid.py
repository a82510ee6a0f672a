"""The SendGrid stand-in, driven by the official SDK over real HTTP."""
from __future__ import annotations

import json

import httpx
import pytest
from python_http_client.exceptions import (BadRequestsError, InternalServerError, ServiceUnavailableError,
                                           TooManyRequestsError, UnauthorizedError)
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import CustomArg, Header, Mail

from tests.standins.accounts import SENDGRID_KEY
from lead_orchestrator.messaging.sdk_clients import make_sendgrid_client

UNSUBSCRIBE = "<https://shop.example/u/abc>"


@pytest.fixture
def client(servers):
    return make_sendgrid_client(SENDGRID_KEY, servers.sendgrid_url)


def estimate_mail(to: str = "dana@example.com", **overrides) -> Mail:
    mail = Mail(from_email=("service@shop.example", "Demo Auto"), to_emails=to,
                subject=overrides.get("subject", "Your estimate is ready"),
                plain_text_content=overrides.get("text", "Hi Dana, your estimate is ready."))
    mail.add_header(Header("List-Unsubscribe", UNSUBSCRIBE))
    mail.add_header(Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    mail.add_custom_arg(CustomArg("touch_id", "t-42"))
    return mail


def test_send_answers_202_with_message_id_and_lands_in_outbox(servers, client):
    response = client.send(estimate_mail())
    assert response.status_code == 202 and response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    (sent,) = httpx.get(f"{servers.sendgrid_url}/_outbox.json").json()
    assert sent["message_id"] == message_id
    assert (sent["from"], sent["to"], sent["subject"]) == ("service@shop.example", ["dana@example.com"], "Your estimate is ready")
    assert sent["text"] == "Hi Dana, your estimate is ready."
    assert sent["headers"]["List-Unsubscribe"] == UNSUBSCRIBE and sent["custom_args"] == {"touch_id": "t-42"}
    page = httpx.get(f"{servers.sendgrid_url}/_outbox").text
    assert "Your estimate is ready" in page and "List-Unsubscribe" in page


def test_invalid_payload_answers_400_with_error_list(servers, client):
    with pytest.raises(BadRequestsError) as info:
        client.send(estimate_mail(to="dana@example"))
    body = json.loads(info.value.body)
    assert info.value.status_code == 400
    assert body["errors"][0]["field"] == "personalizations.0.to.0.email"
    assert set(body["errors"][0]) == {"message", "field", "help"}


@pytest.mark.parametrize("payload, field", [
    ({"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "s@example.com"},
      "content": [{"type": "text/plain", "value": "x"}]}, "subject"),
    ({"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "s@example.com"},
      "subject": "s", "content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
    ({"personalizations": [], "from": {"email": "s@example.com"}, "subject": "s",
      "content": [{"type": "text/plain", "value": "x"}]}, "personalizations"),
    ({"personalizations": [{"to": [{"email": "a@example.com"}]}], "subject": "s",
      "content": [{"type": "text/plain", "value": "x"}]}, "from"),
    ({"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "s@example.com"}, "subject": "s",
      "content": [{"type": "text/plain", "value": "x"}], "categories": [str(i) for i in range(11)]}, "categories"),
    ({"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "s@example.com"}, "subject": "s",
      "content": [{"type": "text/plain", "value": "x"}], "asm": {"group_id": "12"}}, "asm.group_id"),
    ({"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "s@example.com"}, "subject": "s",
      "content": [{"type": "text/plain", "value": "x"}], "headers": {"Subject": "sneaky"}}, "headers"),
])
def test_contract_rules(client, payload, field):
    with pytest.raises(BadRequestsError) as info:
        client.send(payload)
    assert field in [e["field"] for e in json.loads(info.value.body)["errors"]]


def test_template_mail_needs_no_subject_or_content_and_unknown_keys_pass(client):
    payload = {"personalizations": [{"to": [{"email": "a@example.com"}], "dynamic_template_data": {"n": 1}}],
               "from": {"email": "s@example.com"}, "template_id": "d-123", "future_field": True}
    assert client.send(payload).status_code == 202


def test_auth_is_required_and_checked(servers):
    r = httpx.post(f"{servers.sendgrid_url}/v3/mail/send", json={})
    assert r.status_code == 401
    assert r.json() == {"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked",
                                    "field": None, "help": None}]}
    with pytest.raises(UnauthorizedError):
        make_sendgrid_client("SG.someone-else", servers.sendgrid_url).send(estimate_mail())


def test_throttle_and_server_error_modes(servers, client):
    servers.sendgrid.throttle_next(1)
    servers.sendgrid.fail_next(1, 500)
    with pytest.raises(TooManyRequestsError) as info:
        client.send(estimate_mail())
    assert json.loads(info.value.body)["errors"][0]["message"] == "too many requests"
    with pytest.raises(InternalServerError):
        client.send(estimate_mail())
    assert client.send(estimate_mail()).status_code == 202
    assert [r["status"] for r in servers.sendgrid.rejected.items()] == [429, 500]


def test_throttle_and_fail_through_the_control_routes(servers, client):
    assert httpx.post(f"{servers.sendgrid_url}/_standin/throttle", json={"count": 1}).json() == {"throttle": 1}
    assert httpx.post(f"{servers.sendgrid_url}/_standin/fail", json={"count": 1, "status": 503}).json() == \
        {"fail": 1, "status": 503}
    with pytest.raises(TooManyRequestsError):
        client.send(estimate_mail())
    with pytest.raises(ServiceUnavailableError):
        client.send(estimate_mail())
    assert client.send(estimate_mail()).status_code == 202


def test_event_webhook_is_signed_and_reports_bounces(servers, client, receiver):
    servers.sendgrid.set_event_webhook(f"{receiver.url}/sendgrid/events")
    servers.sendgrid.add_bounces("gone@example.com")
    ok_id = client.send(estimate_mail()).headers["X-Message-Id"]
    bounce_id = client.send(estimate_mail(to="gone@example.com")).headers["X-Message-Id"]
    posts = receiver.wait_for_count(2)
    key = httpx.get(f"{servers.sendgrid_url}/_standin/event-webhook-public-key").json()["public_key"]
    verifier = EventWebhook(key)
    events = []
    for post in posts:
        headers = post["headers"]
        assert verifier.verify_signature(post["body"], headers["X-Twilio-Email-Event-Webhook-Signature"],
                                         headers["X-Twilio-Email-Event-Webhook-Timestamp"])
        assert not verifier.verify_signature(post["body"] + " ", headers["X-Twilio-Email-Event-Webhook-Signature"],
                                             headers["X-Twilio-Email-Event-Webhook-Timestamp"])
        events += json.loads(post["body"])
    kinds = {(e["sg_message_id"].split(".")[0], e["event"]) for e in events}
    assert kinds == {(ok_id, "processed"), (ok_id, "delivered"), (bounce_id, "processed"), (bounce_id, "bounce")}
    assert all(e["touch_id"] == "t-42" for e in events)  # custom_args ride along on every event


def test_events_can_be_posted_on_demand(servers, client, receiver):
    message_id = client.send(estimate_mail()).headers["X-Message-Id"]
    events = servers.sendgrid.events_for(message_id, "open")
    r = httpx.post(f"{servers.sendgrid_url}/_standin/events",
                   json={"url": f"{receiver.url}/sendgrid/events", "events": events})
    assert r.json() == {"status": 200}
    (post,) = receiver.wait_for_count(1)
    assert json.loads(post["body"])[0]["event"] == "open"
    assert EventWebhook(servers.sendgrid.public_key()).verify_signature(
        post["body"], post["headers"]["X-Twilio-Email-Event-Webhook-Signature"],
        post["headers"]["X-Twilio-Email-Event-Webhook-Timestamp"])
