"""Email replies over real HTTP: emails go out with the lead's signed reply address as
Reply-To; the SendGrid stand-in plays Inbound Parse and posts the customer's answer to the
receiver. A reply stops the lead like a text reply (one path) and reaches the shop as a
forward; an automatic answer is recorded and stops nothing; a post that is not a reply
to an address we made gets a clear 4xx and changes nothing; a re-post changes nothing."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import pytest

import sendgrid
from lead_orchestrator.services.email_replies import INBOUND_PARSE_PATH
from lead_orchestrator.messaging.reply_address import reply_address
from lead_orchestrator.services.touch_sweep import send_due_touches
from lead_orchestrator.services.shop_clients import Vendors
from standins.sendgrid_inbound import BOUNDARY, compose_email, encode_form, parse_fields
from tests.conftest import emails_to, sms_to
from tests.support import ThreadedServer, free_port
from tests.touchpoint_support import (UTC, events_of, insert_lead, lead_row, settle_sms_callbacks, tenant_counts,
                                      touches_of, unique_email, unique_phone)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)
DOMAIN = "reply.lead-tests.example"
SAMPLES = Path(sendgrid.__file__).parent / "helpers" / "inbound" / "sample_data"


@pytest.fixture(scope="module")
def parse_receiver(settings, db, standins):
    """A receiver that takes replies for DOMAIN and forwards through the SendGrid stand-in."""
    from webhook_receiver.main import create_app

    port = free_port()
    mine = settings.model_copy(update={"inbound_parse_domain": DOMAIN, "sendgrid_api_base_url": standins.sendgrid_url,
                                       "public_base_url": f"http://127.0.0.1:{port}"})
    with ThreadedServer(create_app(mine, db), port=port) as server:
        server.settings = mine
        yield server


@pytest.fixture
def reply_vendors(standins, parse_receiver, settings):
    return Vendors(shopmonkey_base_url=standins.shopmonkey_url, twilio_base_url=standins.twilio_url,
                   sendgrid_base_url=standins.sendgrid_url, public_base_url=parse_receiver.url,
                   secret_key=settings.secret_key(), inbound_parse_domain=DOMAIN)


@pytest.fixture
def parse_host(standins, parse_receiver):
    standins.sendgrid.inbound.set_host(DOMAIN, parse_receiver.url + INBOUND_PARSE_PATH)


@pytest.fixture
def emailed(db, reply_vendors, connected_shop, standins, admin, parse_host):
    """A lead whose first SMS and email went out; the email carries the reply address."""
    shop = connected_shop()
    email = unique_email()
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=email)
    send_due_touches(db, reply_vendors, now=T0, due_before=T0, tenant_ids=[shop.id])
    settle_sms_callbacks(admin, lead["id"])
    sent = emails_to(standins, email)
    assert len(sent) == 1
    return shop, lead, email, sent[0]


def customer_replies(standins, sent: dict, **body) -> dict:
    """The customer answers `sent` from their mail program (the stand-in posts it)."""
    response = httpx.post(f"{standins.sendgrid_url}/_standin/inbound/reply", timeout=30,
                          json={"message_id": sent["message_id"], **body})
    assert response.status_code == 200, response.text
    return response.json()


def post_parse(receiver, fields: dict[str, str], files: list[tuple[str, str, bytes]] = (), *,
               content_type: str | None = None) -> httpx.Response:
    parts = [(name, None, value.encode(), None) for name, value in fields.items()]
    parts += [(name, filename, content, "application/octet-stream") for name, filename, content in files]
    return httpx.post(receiver.url + INBOUND_PARSE_PATH, content=encode_form(parts), timeout=30,
                      headers={"Content-Type": content_type or f"multipart/form-data; boundary={BOUNDARY}"})


def parse_fields_of(message, recipient: str, sender: str) -> dict[str, str]:
    return {name: value.decode() for name, _, value, _ in parse_fields(message, recipient, sender, raw=False)}


def replies_of(admin, lead_id: int) -> list[dict]:
    return admin.execute("SELECT * FROM email_replies WHERE lead_id = %s ORDER BY id", (lead_id,)).fetchall()


def forwards_to(standins, address: str, customer: str) -> list[dict]:
    """The shop's copies of `customer`'s replies (the test shops share one sender address)."""
    return [m for m in emails_to(standins, address)
            if m["subject"].startswith("Customer reply:") and m["reply_to"] == customer]


# --- the loop --------------------------------------------------------------------------

def test_emails_carry_the_leads_reply_address_as_reply_to(emailed, settings):
    shop, lead, email, sent = emailed
    assert sent["reply_to"] == reply_address(settings.secret_key(), DOMAIN, shop.id, lead["id"])
    assert sent["payload"]["reply_to"] == {"email": sent["reply_to"], "name": shop.name}
    assert len(sent["reply_to"].split("@")[0]) <= 64
    assert sent["from"] == shop.sendgrid_sender  # the shop still sends it from its own address


def test_a_reply_stops_the_lead_like_a_text_and_the_shop_gets_a_copy(emailed, admin, standins):
    shop, lead, email, sent = emailed
    posted = customer_replies(standins, sent, text="Yes please, book it for Tuesday morning.\n\nThanks,\nDana")
    assert posted["attempts"] == [200]
    answer = json.loads(posted["response"])
    assert answer == {"status": "recorded", "kind": "reply", "lead": lead["id"], "auto_reason": None,
                      "leads_stopped": [lead["id"]], "touches_cancelled": 3, "forward": "sent"}

    row = lead_row(admin, lead["id"])
    assert (row["status"], row["status_reason"]) == ("stopped", "replied")
    pending = {k: t["status"] for k, t in touches_of(admin, lead["id"]).items() if k[0] > 0}
    assert set(pending.values()) == {"cancelled"} and len(pending) == 3
    [reply] = replies_of(admin, lead["id"])
    assert (reply["kind"], reply["from_address"], reply["subject"]) == ("reply", email, f"Re: {sent['subject']}")
    assert reply["body"] == "Yes please, book it for Tuesday morning.\n\nThanks,\nDana"  # quoted history removed
    assert reply["forward_status"] == "sent" and reply["forward_to"] == shop.sendgrid_sender

    [forward] = forwards_to(standins, shop.sendgrid_sender, email)
    assert forward["reply_to"] == email and forward["from"] == shop.sendgrid_sender
    assert "book it for Tuesday morning" in forward["text"] and f"#{lead['order_number']}" in forward["text"]
    assert forward["message_id"] == reply["forward_message_id"]

    # The same records a text reply makes, so every count of replies includes both.
    kinds = [e["kind"] for e in events_of(admin, lead["id"])]
    assert {"inbound_reply", "lead_stopped", "touches_cancelled", "reply_forwarded"} <= set(kinds)
    stopped = next(e for e in events_of(admin, lead["id"]) if e["kind"] == "lead_stopped")
    assert stopped["detail"]["reason"] == "replied" and stopped["detail"]["channel"] == "email"


def test_the_same_message_posted_again_changes_nothing(emailed, admin, standins, parse_receiver):
    shop, lead, email, sent = emailed
    message = compose_email(from_=email, to=sent["reply_to"], subject="Re: estimate", text="Go ahead.")
    fields = parse_fields_of(message, sent["reply_to"], email)
    first = post_parse(parse_receiver, fields)
    assert first.status_code == 200 and first.json()["status"] == "recorded"
    before = tenant_counts(admin, shop.id), replies_of(admin, lead["id"]), len(standins.sendgrid.sent)
    again = post_parse(parse_receiver, fields)
    assert again.status_code == 200, again.text
    assert again.json() == {"status": "duplicate", "kind": "reply", "lead": lead["id"], "auto_reason": None,
                            "leads_stopped": [], "touches_cancelled": 0, "forward": "sent"}
    assert (tenant_counts(admin, shop.id), replies_of(admin, lead["id"]), len(standins.sendgrid.sent)) == before


@pytest.mark.parametrize("auto,reason", [("out_of_office", "auto_submitted:auto-replied"), ("bounce", "bounce")])
def test_an_automatic_answer_is_recorded_and_stops_nothing(emailed, admin, standins, auto, reason):
    shop, lead, email, sent = emailed
    posted = customer_replies(standins, sent, auto=auto)
    answer = json.loads(posted["response"])
    assert (answer["kind"], answer["auto_reason"], answer["forward"]) == ("auto_reply", reason, None)
    assert lead_row(admin, lead["id"])["status"] == "active"
    assert {t["status"] for k, t in touches_of(admin, lead["id"]).items() if k[0] > 0} == {"scheduled"}
    [reply] = replies_of(admin, lead["id"])
    assert (reply["kind"], reply["auto_reason"], reply["forward_status"]) == ("auto_reply", reason, None)
    assert "inbound_auto_reply" in [e["kind"] for e in events_of(admin, lead["id"])]
    assert forwards_to(standins, shop.sendgrid_sender, email) == []


def test_the_raw_mime_variant_is_read_too(emailed, admin, standins):
    shop, lead, email, sent = emailed
    posted = customer_replies(standins, sent, text="Raw is fine, book it.", raw=True)
    assert json.loads(posted["response"])["kind"] == "reply"
    assert replies_of(admin, lead["id"])[0]["body"] == "Raw is fine, book it."
    assert lead_row(admin, lead["id"])["status_reason"] == "replied"


@pytest.mark.parametrize("sample", ["default_data.txt", "raw_data.txt", "raw_data_with_attachments.txt"])
def test_sendgrids_own_sample_posts_are_read(emailed, admin, parse_receiver, sample):
    """The sample posts shipped with SendGrid's Python library, addressed to the lead."""
    shop, lead, email, sent = emailed
    text = (SAMPLES / sample).read_text().replace("\r\n", "\n")
    text = text.replace("inbound@inbound.example.com", sent["reply_to"]).replace("inbound@inbound.inbound.com",
                                                                                   sent["reply_to"])
    response = httpx.post(parse_receiver.url + INBOUND_PARSE_PATH, content=text.replace("\n", "\r\n").encode(),
                          headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, timeout=30)
    assert response.status_code == 200, response.text
    [reply] = replies_of(admin, lead["id"])
    assert reply["from_address"] == "test@example.com" and reply["body"].startswith("Hello Twilio SendGrid!")
    if "attachments" in sample:
        assert reply["attachments"] != []
    assert lead_row(admin, lead["id"])["status_reason"] == "replied"


def test_a_reply_after_the_lead_ended_is_recorded_and_forwarded_and_stops_nothing_more(emailed, admin, standins,
                                                                                         parse_receiver):
    shop, lead, email, sent = emailed
    admin.execute("UPDATE leads SET status = 'converted', status_reason = 'authorized' WHERE id = %s", (lead["id"],))
    posted = customer_replies(standins, sent, text="Thanks, see you Tuesday")
    answer = json.loads(posted["response"])
    assert (answer["leads_stopped"], answer["touches_cancelled"], answer["forward"]) == ([], 0, "sent")
    assert lead_row(admin, lead["id"])["status"] == "converted"
    [forward] = forwards_to(standins, shop.sendgrid_sender, email)
    assert "had already ended (converted)" in forward["text"]


def test_the_copy_goes_to_the_configured_address(db, reply_vendors, connected_shop, standins, admin, parse_host):
    writers = unique_email("writers")
    shop = connected_shop(settings={"holiday_country": None, "reply_forward_to": writers})
    email = unique_email()
    lead = insert_lead(db, shop, first_seen=T0, email=email)
    send_due_touches(db, reply_vendors, now=T0, due_before=T0, tenant_ids=[shop.id])
    customer_replies(standins, emails_to(standins, email)[0], text="Call me")
    assert [f["reply_to"] for f in forwards_to(standins, writers, email)] == [email]
    assert replies_of(admin, lead["id"])[0]["forward_to"] == writers


def test_a_copy_refused_for_now_is_sent_when_sendgrid_posts_again(emailed, admin, standins):
    shop, lead, email, sent = emailed
    # A 429 proves SendGrid took nothing (a 5xx would leave the copy in doubt: see below).
    standins.sendgrid.fail_next(1, 429)  # the forward's first try
    posted = customer_replies(standins, sent, text="Yes")
    assert posted["attempts"] == [503, 200]  # SendGrid posts again after a 5xx
    [reply] = replies_of(admin, lead["id"])
    assert (reply["forward_status"], reply["forward_attempts"]) == ("sent", 2)
    assert len(forwards_to(standins, shop.sendgrid_sender, email)) == 1
    assert lead_row(admin, lead["id"])["status_reason"] == "replied"
    kinds = [e["kind"] for e in events_of(admin, lead["id"])]
    assert kinds.count("inbound_reply") == 1 and kinds.count("reply_forward_retry") == 1


def test_a_copy_whose_answer_was_a_5xx_is_not_sent_again(emailed, admin, standins):
    """SendGrid may have accepted a mail it answered 5xx for: the copy is `unknown`, never
    sent twice (one rule for every send: docs/touchpoints.md, at most once)."""
    shop, lead, email, sent = emailed
    standins.sendgrid.fail_next(1, 503)
    posted = customer_replies(standins, sent, text="Yes")
    assert posted["attempts"][-1] == 200
    [reply] = replies_of(admin, lead["id"])
    assert reply["forward_status"] == "unknown" and reply["forward_attempts"] == 1
    assert lead_row(admin, lead["id"])["status_reason"] == "replied"


def test_a_shop_without_sendgrid_records_the_failed_copy(db, reply_vendors, connected_shop, standins, admin,
                                                         parse_receiver, parse_host):
    shop = connected_shop()
    email = unique_email()
    lead = insert_lead(db, shop, first_seen=T0, email=email)
    send_due_touches(db, reply_vendors, now=T0, due_before=T0, tenant_ids=[shop.id])
    sent = emails_to(standins, email)[0]
    admin.execute("UPDATE tenants SET sendgrid_api_key = NULL WHERE id = %s", (shop.id,))
    message = compose_email(from_=email, to=sent["reply_to"], subject="Re: x", text="ok")
    response = post_parse(parse_receiver, parse_fields_of(message, sent["reply_to"], email))
    assert response.status_code == 200 and response.json()["forward"] == "failed"
    assert replies_of(admin, lead["id"])[0]["forward_error"] == "missing_credentials"
    assert lead_row(admin, lead["id"])["status_reason"] == "replied"


def test_why_shows_the_reply_and_the_touches_it_cancelled(emailed, standins, database_url, settings, monkeypatch):
    from click.testing import CliRunner

    from lead_orchestrator.cli.main import main
    
    shop, lead, email, sent = emailed
    customer_replies(standins, sent, text="Book it please")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
    out = CliRunner().invoke(main, ["why", shop.slug, lead["order_id"]], catch_exceptions=False).output
    assert f"customer emailed from {email} (subject 'Re: {sent['subject']}'): 'Book it please'" in out
    assert "lead stopped: replied, 3 pending touch(es) cancelled" in out
    assert "not sent: 1:sms, 2:email, 3:sms (lead_stopped:replied)" in out
    assert f"customer's email forwarded to {shop.sendgrid_sender}" in out


# --- refusals: a clear 4xx, nothing changes ----------------------------------------------

def _forged(address: str) -> str:
    local, _, host = address.partition("@")
    last = local[-1]
    return f"{local[:-1]}{'a' if last != 'a' else 'b'}@{host}"


@pytest.mark.parametrize("case,status,code", [
    ("tampered_signature", 404, "unknown_reply_address"),
    ("other_lead_same_signature", 404, "unknown_reply_address"),
    ("other_domain", 404, "no_reply_address"),
    ("no_reply_address", 404, "no_reply_address"),
    ("unknown_lead", 404, "unknown_lead"),
    ("no_sender", 422, "no_sender"),
    ("bad_envelope", 400, "invalid_payload"),
    ("not_parse", 400, "not_inbound_parse"),
    ("truncated", 400, "malformed_multipart"),
    ("garbage", 400, "malformed_multipart"),
    ("no_boundary", 400, "malformed_multipart"),
    ("urlencoded", 415, "unsupported_media_type"),
    ("field_too_large", 413, "field_too_large"),
])
def test_bad_posts_are_refused_and_change_nothing(emailed, admin, standins, parse_receiver, settings, case, status,
                                                  code):
    shop, lead, email, sent = emailed
    address = sent["reply_to"]
    content_type = None
    if case == "tampered_signature":
        address = _forged(address)
    elif case == "other_lead_same_signature":  # a real address's signature on another lead's ids
        other = reply_address(settings.secret_key(), DOMAIN, shop.id, lead["id"] + 1).split("@")[0]
        address = f"{other.rsplit('-', 1)[0]}-{address.split('@')[0].rsplit('-', 1)[1]}@{DOMAIN}"
    elif case == "other_domain":
        address = address.replace(DOMAIN, "elsewhere.example")
    elif case == "no_reply_address":
        address = f"service@{DOMAIN}"
    elif case == "unknown_lead":
        address = reply_address(settings.secret_key(), DOMAIN, shop.id, 10**11)
    message = compose_email(from_=email, to=address, subject="Re: x", text="Yes book it")
    fields = parse_fields_of(message, address, email)
    body = None
    if case == "no_sender":
        fields["from"] = "nobody"
        fields["headers"] = fields["headers"].replace(f"From: {email}", "From: nobody")
    elif case == "bad_envelope":
        fields["envelope"] = "{not json"
    elif case == "not_parse":
        fields = {"hello": "world"}
    elif case == "truncated":
        body = encode_form([(n, None, v.encode(), None) for n, v in fields.items()])[:-20]
    elif case == "garbage":
        body = b"this is not multipart at all"
    elif case == "no_boundary":
        content_type = "multipart/form-data"
    elif case == "urlencoded":
        content_type = "application/x-www-form-urlencoded"
    elif case == "field_too_large":
        fields["text"] = "x" * (3 * 1024 * 1024)
    before = tenant_counts(admin, shop.id), replies_of(admin, lead["id"]), len(standins.sendgrid.sent)
    if body is None:
        response = post_parse(parse_receiver, fields, content_type=content_type)
    else:
        response = httpx.post(parse_receiver.url + INBOUND_PARSE_PATH, content=body, timeout=30,
                              headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (tenant_counts(admin, shop.id), replies_of(admin, lead["id"]), len(standins.sendgrid.sent)) == before
    assert lead_row(admin, lead["id"])["status"] == "active"


def test_an_oversized_post_is_refused_before_it_is_read(settings, db, standins):
    from webhook_receiver.main import create_app

    small = settings.model_copy(update={"inbound_parse_domain": DOMAIN, "inbound_parse_max_bytes": 100_000})
    with ThreadedServer(create_app(small, db)) as server:
        body = encode_form([("email", None, b"x" * 200_000, None)])
        response = httpx.post(server.url + INBOUND_PARSE_PATH, content=body, timeout=30,
                              headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_a_large_post_with_photos_is_accepted(emailed, admin, parse_receiver):
    """SendGrid posts up to 30 MB; the photos are counted and dropped, not kept."""
    shop, lead, email, sent = emailed
    message = compose_email(from_=email, to=sent["reply_to"], subject="Re: photos", text="Here is the noise, see photo")
    fields = parse_fields_of(message, sent["reply_to"], email)
    photos = [(f"attachment{i}", f"IMG_{i}.jpg", b"\xff\xd8" + b"p" * (3 * 1024 * 1024)) for i in (1, 2, 3)]
    response = post_parse(parse_receiver, {**fields, "attachments": "3"}, photos)
    assert response.status_code == 200, response.text
    assert replies_of(admin, lead["id"])[0]["attachments"] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]


def test_without_a_parse_domain_the_route_says_so(receiver):
    response = httpx.post(receiver.url + INBOUND_PARSE_PATH, content=b"--x--", timeout=10,
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "inbound_parse_not_configured"


def test_without_a_parse_domain_emails_have_no_reply_to(db, vendors, connected_shop, standins):
    shop = connected_shop()
    email = unique_email()
    insert_lead(db, shop, first_seen=T0, email=email)
    send_due_touches(db, vendors, now=T0, due_before=T0, tenant_ids=[shop.id])
    [sent] = emails_to(standins, email)
    assert sent["reply_to"] is None and "reply_to" not in sent["payload"]


# --- end to end: the follow-up that must (not) go out --------------------------------------

def test_email_sent_reply_parsed_sms_follow_up_not_sent(emailed, db, reply_vendors, standins, admin):
    shop, lead, email, sent = emailed
    phone = lead["phone_e164"]
    customer_replies(standins, sent, text="Yes, book it.")
    later = T0 + dt.timedelta(hours=1, minutes=5)
    report = send_due_touches(db, reply_vendors, now=later, due_before=later, tenant_ids=[shop.id])
    assert len(sms_to(standins, phone)) == 1  # only the first text, never the follow-up
    assert touches_of(admin, lead["id"])[(1, "sms")]["status"] == "cancelled"
    assert report.get("sent", 0) == 0


def test_out_of_office_reply_follow_up_still_sent(emailed, db, reply_vendors, standins, admin):
    shop, lead, email, sent = emailed
    phone = lead["phone_e164"]
    customer_replies(standins, sent, auto="out_of_office")
    later = T0 + dt.timedelta(hours=1, minutes=5)
    send_due_touches(db, reply_vendors, now=later, due_before=later, tenant_ids=[shop.id])
    assert len(sms_to(standins, phone)) == 2
    assert touches_of(admin, lead["id"])[(1, "sms")]["status"] == "sent"



def test_a_reply_by_email_is_recorded_as_a_reply_by_text_is(emailed, db, reply_vendors, connected_shop, receiver,
                                                             standins, admin):
    """One stop path: whatever counts replies (the Dagster history, `why`) counts both."""
    from tests.test_receiver_twilio import inbound, post_twilio

    shop, by_email, email, sent = emailed
    customer_replies(standins, sent, text="Yes")
    by_text = insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=unique_email())
    assert post_twilio(receiver, shop, "inbound", inbound(shop, by_text["phone_e164"], "Yes")).status_code == 200

    def record(lead_id):
        row = lead_row(admin, lead_id)
        stopped = next(e for e in events_of(admin, lead_id) if e["kind"] == "lead_stopped")["detail"]
        cancelled = next(e for e in events_of(admin, lead_id) if e["kind"] == "touches_cancelled")["detail"]
        return row["status"], row["status_reason"], stopped["reason"], cancelled["reason"]

    assert record(by_email["id"]) == record(by_text["id"]) == ("stopped", "replied", "replied", "lead_stopped:replied")
    replies = admin.execute("SELECT detail->>'channel' AS channel FROM lead_events WHERE tenant_id = %s "
                            "AND kind = 'inbound_reply' ORDER BY id", (shop.id,)).fetchall()
    assert [r["channel"] for r in replies] == ["email", "sms"]
