"""SendGrid Inbound Parse, simulated: mail "received" for a parse host name is posted to
that host's URL as SendGrid posts it (multipart/form-data with boundary `xYzZY`, parsed
fields or the raw MIME message), so `./dev run` and the tests can play the customer who
answers an email.

Behaviour kept from the real service: a host name must have a parse setting (else the
mail is not SendGrid's to post: 404 at the control route); a 5xx or no answer is posted
again (SendGrid: every 5-10 minutes, then every 3 hours, for 72 hours; here `retries`
times after `retry_delay` seconds); a 2xx or 4xx ends it (4xx: SendGrid drops the mail).

Control (`/_standin/...`):
  POST /inbound-parse {hostname, url, send_raw=false}  a parse setting (as the Parse
       Settings API takes it)
  POST /inbound {from, to, subject, text, html?, headers?, attachments?, raw?}
  POST /inbound/reply {message_id?, text?, auto?: out_of_office|bounce, raw?}  the
       customer answers a mail the stand-in accepted (the newest if no id): to its
       Reply-To, quoting it, with In-Reply-To; `auto` makes it an automatic answer
Each post is in the outbox section `inbound_posts`.
"""
from __future__ import annotations

import base64
import email.policy
import email.utils
import json
import secrets
import threading
import time
from email.message import EmailMessage

import httpx
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from standins.outbox import Outbox

BOUNDARY = "xYzZY"  # what SendGrid's own samples use


class InboundParse:
    def __init__(self, *, retries: int = 2, retry_delay: float = 0.2) -> None:
        self.retries, self.retry_delay = retries, retry_delay
        self.posts = Outbox()
        self._settings: dict[str, dict] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._settings.clear()
        self.posts.clear()

    def set_host(self, hostname: str, url: str, *, send_raw: bool = False) -> None:
        with self._lock:
            self._settings[hostname.lower().rstrip(".")] = {"url": url, "send_raw": send_raw}

    def setting_for(self, address: str) -> dict | None:
        host = address.rpartition("@")[2].strip(">").lower().rstrip(".")
        with self._lock:
            return self._settings.get(host)

    # ----- receiving an email -----
    def deliver(self, message: EmailMessage, *, envelope_from: str | None = None, raw: bool | None = None) -> dict:
        """Posts `message` to the parse URL of its first recipient's host; returns the
        outbox record (attempts, final status)."""
        to = [addr for _, addr in email.utils.getaddresses(message.get_all("To", []) + message.get_all("Cc", []))]
        setting = next((s for s in map(self.setting_for, to) if s), None)
        if setting is None:
            raise LookupError(f"no Inbound Parse setting for any of {to}")
        recipient = next(a for a in to if self.setting_for(a))
        sender = envelope_from if envelope_from is not None else email.utils.parseaddr(message["From"])[1]
        send_raw = setting["send_raw"] if raw is None else raw
        body = encode_form(parse_fields(message, recipient, sender, send_raw))
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "User-Agent": "Sendlib/1.0"}
        record = {"url": setting["url"], "from": message["From"], "to": recipient, "subject": message["Subject"],
                  "raw": send_raw, "attempts": [], "response_status": None, "response": None}
        with httpx.Client(timeout=30, trust_env=False) as client:
            for attempt in range(1 + self.retries):
                try:
                    response = client.post(setting["url"], content=body, headers=headers)
                    status, text = response.status_code, response.text[:1000]
                except httpx.HTTPError as exc:
                    status, text = None, f"{type(exc).__name__}: {exc}"
                record["attempts"].append(status)
                record["response_status"], record["response"] = status, text
                if status is not None and status < 500:
                    break  # 2xx: delivered; 4xx: SendGrid drops the mail
                if attempt < self.retries:
                    time.sleep(self.retry_delay)
        self.posts.add(record)
        return record


FormPart = tuple[str, str | None, bytes, str | None]  # name, file name, content, content type


def parse_fields(message: EmailMessage, recipient: str, sender: str, raw: bool) -> list[FormPart]:
    """(name, file name, content, content type) of each form part."""
    fields = {"dkim": "{@standin.example : pass}", "to": str(message["To"] or ""), "from": str(message["From"] or ""),
              "sender_ip": "127.0.0.1", "envelope": json.dumps({"to": [recipient], "from": sender}),
              "subject": str(message["Subject"] or ""), "SPF": "pass"}
    files = []
    if raw:
        fields["email"] = message.as_bytes(policy=email.policy.SMTP).decode("utf-8", "replace")
        charsets = {"to": "UTF-8", "subject": "UTF-8", "from": "UTF-8"}
    else:
        fields["headers"] = "".join(f"{name}: {value}\n" for name, value in message.items())
        for kind in ("plain", "html"):
            body = message.get_body(preferencelist=(kind,))
            if body is not None:
                fields["text" if kind == "plain" else "html"] = body.get_content()
        for i, part in enumerate(message.iter_attachments(), 1):
            content = part.get_content()
            files.append((f"attachment{i}", part.get_filename() or f"attachment{i}",
                          content if isinstance(content, bytes) else str(content).encode(), part.get_content_type()))
        fields["attachments"] = str(len(files))
        if files:
            fields["attachment-info"] = json.dumps({name: {"filename": fn, "type": ct} for name, fn, _, ct in files})
        charsets = {"to": "UTF-8", "subject": "UTF-8", "from": "UTF-8", "text": "UTF-8", "html": "UTF-8"}
    fields["charsets"] = json.dumps(charsets)
    return [(name, None, value.encode(), None) for name, value in fields.items()] + files


def encode_form(parts: list[FormPart]) -> bytes:
    out = bytearray()
    for name, filename, content, content_type in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + content + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def compose_email(*, from_: str, to: str, subject: str, text: str, html: str | None = None,
                  headers: dict[str, str] | None = None, attachments: list[dict] | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = from_, to, subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = f"<{secrets.token_hex(12)}@standin.mail.example>"
    for name, value in (headers or {}).items():
        del message[name]
        message[name] = value
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for item in attachments or []:
        data = base64.b64decode(item.get("content_base64", "")) if item.get("content_base64") else b"x"
        maintype, _, subtype = (item.get("type") or "application/octet-stream").partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=item.get("filename", "file.bin"))
    return message


AUTO_ANSWERS = {
    "out_of_office": ({"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"}, "Automatic reply: {subject}",
                      "Thank you for your email. I am out of the office until Monday and will reply then."),
    # Some mail servers' bounces carry no Auto-Submitted: the empty envelope sender and
    # MAILER-DAEMON are what tell them apart.
    "bounce": ({}, "Undelivered Mail Returned to Sender",
               "This is the mail system at the customer's host. Your message could not be delivered."),
}


def reply_to_sent(sent: dict, *, text: str | None, auto: str | None) -> tuple[EmailMessage, str | None]:
    """The customer's answer to a mail the stand-in accepted, and its envelope sender."""
    customer = sent["to"][0]
    reply_to = sent.get("reply_to") or sent["from"]
    quoted = "\n".join(f"> {line}" for line in (sent.get("text") or "").splitlines())
    when = email.utils.formatdate(localtime=False)
    if auto:
        headers, subject, body = AUTO_ANSWERS[auto]
        sender = f"MAILER-DAEMON@{customer.rpartition('@')[2]}" if auto == "bounce" else customer
        message = compose_email(from_=sender, to=reply_to, subject=subject.format(subject=sent["subject"]),
                                text=body, headers=headers)
        return message, ("" if auto == "bounce" else customer)
    body = f"{text or 'Yes, please go ahead and book it.'}\n\nOn {when}, {sent['from']} wrote:\n{quoted}\n"
    message = compose_email(from_=customer, to=reply_to, subject=f"Re: {sent['subject']}", text=body,
                            headers={"In-Reply-To": f"<{sent['message_id']}@standin.sendgrid.net>"})
    return message, customer


class HostIn(BaseModel):
    hostname: str
    url: str
    send_raw: bool = False
    spam_check: bool = False


class InboundIn(BaseModel):
    from_: str = Field(alias="from")
    to: str
    subject: str = ""
    text: str = ""
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    attachments: list[dict] = Field(default_factory=list)  # {filename, type, content_base64}
    raw: bool | None = None
    envelope_from: str | None = None


class ReplyIn(BaseModel):
    message_id: str | None = None
    text: str | None = None
    auto: str | None = Field(default=None, pattern="^(out_of_office|bounce)$")
    raw: bool | None = None


def inbound_routes(inbound: InboundParse, sent: Outbox) -> APIRouter:
    r = APIRouter(prefix="/_standin", tags=["stand-in control"])

    @r.post("/inbound-parse")
    def set_host(h: HostIn) -> dict:
        inbound.set_host(h.hostname, h.url, send_raw=h.send_raw)
        return {"hostname": h.hostname, "url": h.url, "send_raw": h.send_raw}

    def _deliver(message: EmailMessage, envelope_from: str | None, raw: bool | None) -> dict:
        try:
            return inbound.deliver(message, envelope_from=envelope_from, raw=raw)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @r.post("/inbound")
    def receive(m: InboundIn) -> dict:
        message = compose_email(from_=m.from_, to=m.to, subject=m.subject, text=m.text, html=m.html,
                                headers=m.headers, attachments=m.attachments)
        return _deliver(message, m.envelope_from, m.raw)

    @r.post("/inbound/reply")
    def reply(m: ReplyIn) -> dict:
        mails = sent.items()
        original = next((x for x in reversed(mails) if m.message_id in (None, x["message_id"])), None)
        if original is None:
            raise HTTPException(404, "no such mail was sent through the stand-in")
        message, envelope_from = reply_to_sent(original, text=m.text, auto=m.auto)
        return _deliver(message, envelope_from, m.raw)

    return r
