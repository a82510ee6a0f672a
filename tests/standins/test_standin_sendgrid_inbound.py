"""The SendGrid stand-in as Inbound Parse: mail for a parse host is posted to its URL as
SendGrid posts it, 5xx is posted again and 4xx is not, and a customer can answer a mail
the stand-in accepted."""
from __future__ import annotations

import json

import httpx
from python_multipart.multipart import parse_options_header
from sendgrid.helpers.mail import Mail

from lead_orchestrator.messaging.sdk_clients import make_sendgrid_client
from tests.standins.accounts import SENDGRID_KEY

HOST = "parse.shop.example"


def form_fields(body: str, content_type: str) -> dict[str, str]:
    """The text parts of a multipart body (the test's own reading, not the receiver's)."""
    boundary = parse_options_header(content_type)[1][b"boundary"].decode()
    fields = {}
    for chunk in body.split(f"--{boundary}")[1:-1]:
        head, _, value = chunk.strip("\r\n").partition("\r\n\r\n")
        name = head.split('name="', 1)[1].split('"', 1)[0]
        fields[name] = value
    return fields


def test_mail_for_a_parse_host_is_posted_as_sendgrid_posts_it(servers, receiver):
    control = f"{servers.sendgrid_url}/_standin"
    assert httpx.post(f"{control}/inbound-parse", json={"hostname": HOST, "url": f"{receiver.url}/parse"}).is_success
    answer = httpx.post(f"{control}/inbound", timeout=10, json={
        "from": "Dana Lopez <dana@example.com>", "to": f"anything@{HOST}", "subject": "Hello",
        "text": "Plain words", "html": "<p>Plain words</p>",
        "attachments": [{"filename": "photo.jpg", "type": "image/jpeg", "content_base64": "cGhvdG8gYnl0ZXM="}]}).json()
    assert answer["attempts"] == [200] and answer["raw"] is False
    (post,) = receiver.wait_for_count(1, "/parse")
    assert post["headers"]["Content-Type"] == "multipart/form-data; boundary=xYzZY"
    fields = form_fields(post["body"], post["headers"]["Content-Type"])
    assert {"headers", "text", "html", "from", "to", "subject", "envelope", "charsets", "attachments",
            "attachment-info", "dkim", "SPF", "sender_ip"} <= set(fields)
    assert json.loads(fields["envelope"]) == {"to": [f"anything@{HOST}"], "from": "dana@example.com"}
    assert fields["text"].strip() == "Plain words" and fields["attachments"] == "1"
    assert 'filename="photo.jpg"' in post["body"]
    assert "Message-ID: <" in fields["headers"]
    outbox = httpx.get(f"{servers.sendgrid_url}/_outbox/inbound_posts.json").json()
    assert [p["response_status"] for p in outbox] == [200]


def test_raw_hosts_get_the_whole_mime_message(servers, receiver):
    servers.sendgrid.inbound.set_host(HOST, f"{receiver.url}/parse", send_raw=True)
    httpx.post(f"{servers.sendgrid_url}/_standin/inbound", timeout=10,
               json={"from": "dana@example.com", "to": f"x@{HOST}", "subject": "Raw", "text": "Raw words"})
    (post,) = receiver.wait_for_count(1, "/parse")
    fields = form_fields(post["body"], post["headers"]["Content-Type"])
    assert "text" not in fields and "headers" not in fields
    assert "Subject: Raw" in fields["email"] and "Raw words" in fields["email"]


def test_5xx_is_posted_again_and_4xx_is_dropped(servers, receiver):
    servers.sendgrid.inbound.set_host(HOST, f"{receiver.url}/parse")
    receiver.respond("/parse", 503, 500)
    mail = {"from": "dana@example.com", "to": f"x@{HOST}", "subject": "s", "text": "t"}
    assert httpx.post(f"{servers.sendgrid_url}/_standin/inbound", json=mail, timeout=10).json()["attempts"] == \
        [503, 500, 200]
    receiver.respond("/parse", 404)
    assert httpx.post(f"{servers.sendgrid_url}/_standin/inbound", json=mail, timeout=10).json()["attempts"] == [404]


def test_mail_for_a_host_without_a_setting_is_not_sendgrids(servers):
    response = httpx.post(f"{servers.sendgrid_url}/_standin/inbound", timeout=10,
                          json={"from": "dana@example.com", "to": "x@unknown.example", "subject": "s", "text": "t"})
    assert response.status_code == 404


def test_a_customer_answers_a_sent_mail_at_its_reply_to(servers, receiver):
    servers.sendgrid.inbound.set_host(HOST, f"{receiver.url}/parse")
    mail = Mail(from_email=("service@shop.example", "Demo Auto"), to_emails="dana@example.com",
                subject="Your estimate", plain_text_content="Estimate #1 is ready.")
    mail.reply_to = (f"reply+1-2-abc@{HOST}", "Demo Auto")
    make_sendgrid_client(SENDGRID_KEY, servers.sendgrid_url).send(mail)
    (sent,) = servers.sendgrid.sent.items()
    assert sent["reply_to"] == f"reply+1-2-abc@{HOST}"

    answer = httpx.post(f"{servers.sendgrid_url}/_standin/inbound/reply", json={"text": "Book it"}, timeout=10).json()
    assert answer["to"] == f"reply+1-2-abc@{HOST}" and answer["subject"] == "Re: Your estimate"
    fields = form_fields(receiver.wait_for_count(1, "/parse")[0]["body"], "multipart/form-data; boundary=xYzZY")
    assert fields["text"].startswith("Book it") and "> Estimate #1 is ready." in fields["text"]
    assert "wrote:" in fields["text"] and "In-Reply-To: <" in fields["headers"]

    httpx.post(f"{servers.sendgrid_url}/_standin/inbound/reply", json={"auto": "out_of_office"}, timeout=10)
    fields = form_fields(receiver.wait_for_count(2, "/parse")[1]["body"], "multipart/form-data; boundary=xYzZY")
    assert "Auto-Submitted: auto-replied" in fields["headers"] and fields["subject"].startswith("Automatic reply")

    httpx.post(f"{servers.sendgrid_url}/_standin/inbound/reply", json={"auto": "bounce"}, timeout=10)
    fields = form_fields(receiver.wait_for_count(3, "/parse")[2]["body"], "multipart/form-data; boundary=xYzZY")
    assert json.loads(fields["envelope"])["from"] == "" and fields["from"].startswith("MAILER-DAEMON@")


def test_answering_needs_a_sent_mail(servers):
    response = httpx.post(f"{servers.sendgrid_url}/_standin/inbound/reply", json={"message_id": "nope"}, timeout=10)
    assert response.status_code == 404
