"""The SendGrid stand-in's Email Activity API (a paid add-on, off until enabled), driven
by the official SDK, and the faults that lose an answer after the mail was accepted."""
from __future__ import annotations

import http.client
import json

import httpx
import pytest
from python_http_client.exceptions import BadRequestsError, InternalServerError
from sendgrid.helpers.mail import CustomArg, Mail

from lead_orchestrator.messaging.sdk_clients import make_sendgrid_client
from tests.standins.accounts import SENDGRID_KEY


@pytest.fixture
def client(servers):
    return make_sendgrid_client(SENDGRID_KEY, servers.sendgrid_url)


@pytest.fixture
def activity(servers):
    servers.sendgrid.enable_email_activity()
    yield
    servers.sendgrid.enable_email_activity(False)


def mail(to: str, key: str) -> Mail:
    m = Mail(from_email="service@shop.example", to_emails=to, subject="Your estimate", plain_text_content="Hi")
    m.add_custom_arg(CustomArg("send_key", key))
    return m


def query(client, q: str, limit: int = 10) -> list[dict]:
    response = client.client.messages.get(query_params={"query": q, "limit": limit})
    return json.loads(response.body)["messages"]


def test_without_the_add_on_the_api_answers_authorization_required(servers, client):
    with pytest.raises(BadRequestsError) as info:
        query(client, 'to_email="dana@example.com"')
    assert json.loads(info.value.body) == {"errors": [{"message": "authorization required"}]}


def test_find_a_mail_by_custom_arg(servers, client, activity):
    message_id = client.send(mail("dana@example.com", "k-1")).headers["X-Message-Id"]
    client.send(mail("lee@example.com", "k-2"))
    (row,) = query(client, "unique_args['send_key']=\"k-1\"")
    assert row["msg_id"].split(".")[0] == message_id
    assert (row["to_email"], row["from_email"], row["subject"], row["status"]) == (
        "dana@example.com", "service@shop.example", "Your estimate", "delivered")
    assert set(row) == {"from_email", "msg_id", "subject", "to_email", "status", "opens_count", "clicks_count",
                        "last_event_time"}
    assert query(client, "(unique_args['send_key']=\"k-1\") AND to_email=\"lee@example.com\"") == []
    assert len(query(client, f"msg_id LIKE '{message_id}%'")) == 1
    assert query(client, "unique_args['send_key']=\"nope\"") == []


@pytest.mark.parametrize("params", [{"query": "touch_id = 5"}, {"query": "x", "limit": "0"}, {"limit": "5"}])
def test_bad_queries_answer_400(servers, activity, params):
    r = httpx.get(f"{servers.sendgrid_url}/v3/messages", params=params,
                  headers={"Authorization": f"Bearer {SENDGRID_KEY}"})
    assert r.status_code == 400 and r.json()["errors"][0]["message"]


def test_the_add_on_is_switched_over_http(servers, client):
    assert httpx.post(f"{servers.sendgrid_url}/_standin/email-activity", json={"enabled": True}).status_code == 200
    try:
        assert query(client, 'to_email="nobody@example.com"') == []
    finally:
        servers.sendgrid.enable_email_activity(False)


def test_drop_accepts_the_mail_then_closes_the_connection(servers, client):
    servers.sendgrid.drop_next(1)
    with pytest.raises(http.client.RemoteDisconnected):
        client.send(mail("dana@example.com", "k-3"))
    assert [m["to"] for m in servers.sendgrid.sent.items()] == [["dana@example.com"]]


def test_fail_after_work_accepts_the_mail_then_answers_500(servers, client):
    servers.sendgrid.fail_after_work_next(1, 500)
    with pytest.raises(InternalServerError):
        client.send(mail("dana@example.com", "k-4"))
    assert len(servers.sendgrid.sent.items()) == 1 and servers.sendgrid.rejected.items() == []
