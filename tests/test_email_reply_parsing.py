"""The plain functions behind email replies, without I/O: the signed reply address, reading
an Inbound Parse post (parsed and raw, character sets), the new text above the quoted
history, telling a machine's email from a person's, and the messages we build."""
from __future__ import annotations

import email.policy
import json
import string

import pytest
from hypothesis import given, settings, strategies as st
from itsdangerous import URLSafeSerializer

from lead_orchestrator.messaging.auto_replies import auto_reply_reason
from lead_orchestrator.services.email_replies import valid_forward_address
from lead_orchestrator.messaging.inbound_email import InboundEmailError, html_to_text, new_text, read_parse_post
from lead_orchestrator.domain.messages import compose, sample_lead
from lead_orchestrator.messaging.reply_address import MAX_LOCAL_PART, read_reply_address, reply_address, reply_local_part
from lead_orchestrator.domain.sequences import sequence_for
from lead_orchestrator.store.shops import Shop
from standins.sendgrid_inbound import compose_email, parse_fields

KEY = "test-secret"
DOMAIN = "reply.example.com"


# --- the reply address ---------------------------------------------------------------------

def test_a_reply_address_names_its_shop_and_lead_and_nothing_else():
    address = reply_address(KEY, DOMAIN, 12, 123456)
    assert address.startswith("reply+") and address.endswith("@" + DOMAIN)
    assert read_reply_address(KEY, DOMAIN, address) == (12, 123456)
    assert read_reply_address(KEY, DOMAIN, f"Dana <{address}>".split(" ", 1)[1]) == (12, 123456)
    assert read_reply_address(KEY, DOMAIN, address.upper()) == (12, 123456)  # a mail system lowercased/uppercased it
    assert read_reply_address("another-key", DOMAIN, address) is None
    assert read_reply_address(KEY, DOMAIN, address.replace(DOMAIN, "other.example.com")) is None  # not our domain


def test_the_local_part_fits_rfc_5321_for_any_id_we_can_have():
    assert len(reply_local_part(KEY, 10**6, 10**12)) <= MAX_LOCAL_PART
    assert reply_local_part(KEY, 1, 1) == reply_local_part(KEY, 1, 1)  # one lead, one address
    assert set(reply_local_part(KEY, 99, 12345)) <= set(string.ascii_lowercase + string.digits + "+-")


def test_an_unsubscribe_signature_is_no_reply_address():
    """Distinct salts: a token signed for unsubscribe links never passes as a reply address."""
    forged = URLSafeSerializer(KEY, salt="unsubscribe").dumps([1, 2])
    assert read_reply_address(KEY, DOMAIN, f"reply+1-2-{forged.rsplit('.', 1)[1].lower()}@{DOMAIN}") is None


@pytest.mark.parametrize("address", ["", "@", "reply+@reply.example.com", "reply+1-2@reply.example.com",
                                     "reply+1-2-3-4@reply.example.com", "reply+01-2-aaaa@reply.example.com",
                                     "reply+!-2-aaaa@reply.example.com", "service@reply.example.com",
                                     "reply+1-2-!!!!@reply.example.com", "reply+1-2-@reply.example.com"])
def test_garbage_is_no_reply_address(address):
    assert read_reply_address(KEY, DOMAIN, address) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**12), st.data())
def test_any_change_to_an_address_is_refused(tenant, lead, data):
    address = reply_address(KEY, DOMAIN, tenant, lead)
    local = address.split("@")[0]
    i = data.draw(st.integers(len("reply+"), len(local) - 1))
    replacement = data.draw(st.sampled_from(string.ascii_lowercase + string.digits + "-"))
    changed = local[:i] + replacement + local[i + 1:]
    assert read_reply_address(KEY, DOMAIN, address) == (tenant, lead)
    if changed != local:
        assert read_reply_address(KEY, DOMAIN, f"{changed}@{DOMAIN}") is None


# --- reading a post --------------------------------------------------------------------------

def fields_of(message, *, raw=False, recipient="reply+1-2-x@reply.example.com", sender="dana@example.com"):
    parts = parse_fields(message, recipient, sender, raw)
    return {n: c for n, f, c, _ in parts if f is None}, [f for _, f, _, _ in parts if f is not None]


def test_parsed_and_raw_posts_read_the_same():
    message = compose_email(from_="Dana Lopez <Dana@Example.com>", to="reply+1-2-x@reply.example.com",
                            subject="Re: Your estimate", text="Book it.\n", headers={"Cc": "spouse@example.com"},
                            attachments=[{"filename": "noise.mp4", "type": "video/mp4"}])
    parsed, raw = (read_parse_post(*fields_of(message, raw=r)) for r in (False, True))
    for mail in (parsed, raw):
        assert (mail.sender, mail.sender_name, mail.subject) == ("Dana@example.com", "Dana Lopez", "Re: Your estimate")
        assert mail.recipients == ("reply+1-2-x@reply.example.com", "spouse@example.com")
        assert mail.text.strip() == "Book it." and mail.attachments == ("noise.mp4",)
        assert mail.message_id == message["Message-ID"] and mail.message_key == message["Message-ID"]
        assert not mail.null_return_path
    assert (parsed.raw, raw.raw) == (False, True)


def test_text_fields_are_read_in_the_character_set_sendgrid_names():
    fields = {"from": b"Ren\xe9e <renee@example.com>", "to": b"reply+1-2-x@reply.example.com",
              "subject": "Re: devis \u2013 frein".encode("cp1252", "replace"),
              "text": "Très bien, merci".encode("latin-1"),
              "headers": b"From: renee@example.com\nMessage-ID: <m1@example.com>\n",
              "charsets": json.dumps({"from": "iso-8859-1", "text": "iso-8859-1", "subject": "windows-1252"}).encode(),
              "envelope": json.dumps({"to": ["reply+1-2-x@reply.example.com"], "from": "renee@example.com"}).encode()}
    mail = read_parse_post(fields, [])
    assert (mail.sender_name, mail.text, mail.subject) == ("Renée", "Très bien, merci", "Re: devis \u2013 frein")
    fields["charsets"] = json.dumps({"text": "no-such-charset"}).encode()
    assert "Tr" in read_parse_post(fields, []).text  # an unknown charset is read as UTF-8, with replacements


def test_an_html_only_email_is_read_as_text():
    fields = {"from": b"dana@example.com", "html": b"<html><head><style>p{}</style></head><body><p>Yes,</p>"
                                                   b"<p>book it &amp; call me</p></body></html>"}
    assert read_parse_post(fields, []).text == "Yes,\n\nbook it & call me"
    assert html_to_text("<div>a<br>b</div><script>x()</script>") == "a\nb"


def test_a_message_without_message_id_gets_a_stable_key():
    fields = {"from": b"dana@example.com", "text": b"Yes", "subject": b"Re: x"}
    first, second = read_parse_post(fields, []), read_parse_post(dict(fields), [])
    assert first.message_id is None and first.message_key == second.message_key
    assert first.message_key.startswith("sha256:")
    assert read_parse_post({**fields, "text": b"No"}, []).message_key != first.message_key


@pytest.mark.parametrize("fields,code", [
    ({"hello": b"world"}, "not_inbound_parse"),
    ({"from": b"not an address", "text": b"hi"}, "no_sender"),
    ({"from": b"dana@example.com", "envelope": b"{nope"}, "invalid_payload"),
    ({"from": b"dana@example.com", "envelope": b"[1, 2]"}, "invalid_payload"),
    ({"from": b"dana@example.com", "charsets": b"\xff\xfe"}, "invalid_payload"),
])
def test_posts_that_are_not_emails_are_refused(fields, code):
    with pytest.raises(InboundEmailError) as refused:
        read_parse_post(fields, [])
    assert refused.value.code == code


def test_an_empty_envelope_sender_is_seen():
    fields = {"from": b"MAILER-DAEMON@mx.example.com", "text": b"could not deliver",
              "envelope": json.dumps({"to": ["reply+1-2-x@reply.example.com"], "from": ""}).encode()}
    assert read_parse_post(fields, []).null_return_path


# --- the new text -------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Yes please book it for Tuesday.\n\nThanks,\nDana\n\nOn Mon, Mar 1, 2027 at 8:30 PM Joe's Garage "
     "<service@joes.example> wrote:\n> Hi Dana,\n> Your estimate", "Yes please book it for Tuesday.\n\nThanks,\nDana"),
    ("Sounds good.\n\nSent from my iPhone\n\n> On Mar 1, 2027, at 20:30, Joe's Garage <s@joes.example> wrote:\n>\n> Hi",
     "Sounds good.\n\nSent from my iPhone"),
    ("Can you do it for less?\n________________________________\nFrom: Joe's Garage <s@joes.example>\n"
     "Sent: Monday, March 1, 2027 8:30 PM\nTo: dana@example.com\nSubject: Your estimate\n\nHi Dana",
     "Can you do it for less?"),
    ("Ja, bitte.\n\nAm 01.03.2027 um 20:30 schrieb Joe's Garage <s@joes.example>:\n> Hallo", "Ja, bitte."),
    ("Just one line, nothing quoted", "Just one line, nothing quoted"),
    ("", ""),
])
def test_the_new_text_leaves_the_quoted_history_out(text, expected):
    assert new_text(text) == expected


def test_the_new_text_is_bounded():
    assert len(new_text("word " * 100_000)) <= 10_000


# --- a person or a machine? ------------------------------------------------------------------

def headers(**values) -> email.message.Message:
    message = email.message.EmailMessage(policy=email.policy.default)
    for name, value in values.items():
        message[name.replace("_", "-")] = value
    return message


@pytest.mark.parametrize("values,sender,subject,null_return_path,reason", [
    ({"Auto_Submitted": "auto-replied"}, "dana@example.com", "Re: x", False, "auto_submitted:auto-replied"),
    ({"Auto_Submitted": "auto-generated; owner-email=x@y"}, "dana@example.com", "x", False,
     "auto_submitted:auto-generated"),
    ({"X_Autoreply": "yes"}, "dana@example.com", "Re: x", False, "x_autoreply"),
    ({"X_Autorespond": "Vacation"}, "dana@example.com", "Re: x", False, "x_autoreply"),
    ({"Content_Type": "multipart/report; report-type=delivery-status; boundary=b"}, "dana@example.com", "x", False,
     "delivery_report"),
    ({"X_Failed_Recipients": "dana@example.com"}, "dana@example.com", "x", False, "bounce"),
    ({}, "dana@example.com", "Re: x", True, "bounce"),
    ({}, "MAILER-DAEMON@mx.example.com", "Undelivered Mail Returned to Sender", False, "bounce"),
    ({}, "noreply@example.com", "Re: x", False, "machine_sender"),
    ({"Precedence": "bulk"}, "dana@example.com", "Re: x", False, "precedence:bulk"),
    ({"List_Id": "<cars.lists.example.com>"}, "dana@example.com", "Re: x", False, "mailing_list"),
    ({}, "dana@example.com", "Automatic reply: Your estimate", False, "subject"),
    ({}, "dana@example.com", "Out of Office: Your estimate", False, "subject"),
    ({}, "dana@example.com", "Abwesenheitsnotiz: Ihr Angebot", False, "subject"),
    ({}, "dana@example.com", "Undeliverable: Your estimate", False, "subject"),
])
def test_machines_are_told_apart(values, sender, subject, null_return_path, reason):
    assert auto_reply_reason(headers(**values), sender=sender, subject=subject,
                             null_return_path=null_return_path) == reason


@pytest.mark.parametrize("values,subject", [
    ({}, "Re: Your estimate from Joe's Garage"),
    ({"Auto_Submitted": "no"}, "Re: Your estimate"),
    ({"X_Autoreply": "no", "Precedence": "normal"}, "Re: Out of office hours, can you open early?"),
    ({"In_Reply_To": "<abc@example.com>"}, "Yes"),
])
def test_a_persons_reply_is_a_reply(values, subject):
    assert auto_reply_reason(headers(**values), sender="dana@example.com", subject=subject,
                             null_return_path=False) is None


# --- what we send -----------------------------------------------------------------------------

def test_emails_carry_reply_to_only_when_given():
    shop = Shop(id=1, slug="joes", name="Joe's Garage", postal_address="1 Main St")
    step = next(s for s in sequence_for({}) if s.channel == "email")
    with_reply = compose(shop, step, sample_lead(), first_sms=False, unsubscribe_url=None,
                         reply_to=f"reply+1-2-x@{DOMAIN}")
    assert with_reply.reply_to == (f"reply+1-2-x@{DOMAIN}", "Joe's Garage")
    assert compose(shop, step, sample_lead(), first_sms=False, unsubscribe_url=None).reply_to is None


def test_a_forward_address_is_an_address_outside_the_parse_domain():
    assert valid_forward_address(" Writers@Joes.Example ", DOMAIN) == "Writers@joes.example"
    for bad in ("not-an-address", f"desk@{DOMAIN}"):
        with pytest.raises(ValueError):
            valid_forward_address(bad, DOMAIN)


@pytest.mark.parametrize("kind,detail,text", [
    ("inbound_auto_reply", {"address": "dana@example.com", "reason": "bounce"},
     "automatic email from dana@example.com (bounce): not a reply, the sequence goes on"),
    ("reply_forward_retry", {"to": "desk@joes.example", "reason": "retry:503"},
     "customer's email not forwarded yet (refused for now; retried when SendGrid posts it again) to "
     "desk@joes.example (retry:503)"),
    ("reply_forward_failed", {"to": "desk@joes.example", "reason": "missing_credentials"},
     "customer's email could not be forwarded to desk@joes.example (missing_credentials)"),
    ("inbound_reply", {"channel": "sms", "body": "Yes"}, "customer texted: 'Yes'"),
])
def test_why_describes_replies_and_copies(kind, detail, text):
    from zoneinfo import ZoneInfo

    from lead_orchestrator.services.timeline import describe

    assert describe({"kind": kind, "detail": detail}, ZoneInfo("America/Chicago")) == text
