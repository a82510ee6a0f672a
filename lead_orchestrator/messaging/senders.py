"""Sending through Twilio (SMS) and SendGrid (email) with their official SDKs, and asking
them afterwards whether they have a message whose answer was lost.

What each outcome means (sent, permanent, transient, ambiguous) is decided in one place
for both vendors: `send_outcomes`. This module only turns each SDK's answers and
exceptions into those terms, and keeps every vendor field name to itself.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from lead_orchestrator.messaging.send_outcomes import (ABSENT, ERROR, FOUND, SENT, SIMILAR, UNAVAILABLE, Lookup,  # noqa: F401
                                             SendResult, from_exception, from_http_status)
# The vendor SDKs are imported where they are used: they are slow to import, and the
# Dagster code location (re-imported by every run process) should stay light.

# Twilio codes that will not change by trying again.
TWILIO_PERMANENT_CODES = frozenset(str(c) for c in (21211, 21214, 21217, 21408, 21606, 21608, 21610, 21612, 21614,
                                                    21604))
# How long Twilio may keep a message in its outgoing queue before giving up on it
# (its default is 10 hours). Bounded, so that a message Twilio took is sent (and so
# listed with a DateSent) or failed within the hour: see SMS_SETTLE.
SMS_VALIDITY_SECONDS = 3600
# After this long, Twilio's list of sent messages is complete for a send we reserved:
# the validity period plus a margin. Only then does "not in the list" prove it was never
# taken (send_resolution).
SMS_SETTLE = dt.timedelta(seconds=SMS_VALIDITY_SECONDS) + dt.timedelta(minutes=30)
# SendGrid lists a mail in Email Activity once it has processed it, normally within
# minutes; the margin is wide because a duplicate is worse than a late email.
EMAIL_SETTLE = dt.timedelta(hours=6)
# A message the vendor created is dated within this span around our reservation (clock
# skew between our database and the vendor, plus the provider call itself).
MATCH_BEFORE = dt.timedelta(minutes=2)
MATCH_AFTER = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    sender: str
    sender_name: str
    subject: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)
    reply_to: tuple[str, str | None] | None = None  # (address, display name)


@dataclass(frozen=True)
class SentSms:
    """What we know of an SMS whose answer was lost: enough to recognise it at Twilio."""
    to: str
    body: str
    reserved_at: dt.datetime  # our database's clock when the send was reserved
    exclude_ids: frozenset[str] = frozenset()  # message ids already recorded for other touches


class TwilioSender:
    def __init__(self, account_sid: str, auth_token: str, sender: str, base_url: str | None,
                 timeout: float | None = None):
        from lead_orchestrator.messaging.sdk_clients import DEFAULT_TIMEOUT, make_twilio_client

        self._client = make_twilio_client(account_sid, auth_token, base_url, timeout=timeout or DEFAULT_TIMEOUT)
        self._sender = sender

    @property
    def _via_service(self) -> bool:
        return self._sender.startswith("MG")

    def send(self, to: str, body: str, status_callback: str | None = None) -> SendResult:
        from twilio.base.exceptions import TwilioRestException

        sender = {"messaging_service_sid": self._sender} if self._via_service else {"from_": self._sender}
        kwargs = {"status_callback": status_callback} if status_callback else {}
        try:
            message = self._client.messages.create(to=to, body=body, validity_period=SMS_VALIDITY_SECONDS,
                                                   **sender, **kwargs)
        except TwilioRestException as exc:
            code = str(exc.code) if exc.code is not None else None
            return from_http_status(exc.status, code=code, detail=exc.msg, permanent_codes=TWILIO_PERMANENT_CODES)
        except Exception as exc:  # noqa: BLE001 - transport failures and unreadable answers
            return from_exception(exc)
        return SendResult(SENT, message_id=message.sid)

    def find(self, sms: SentSms) -> Lookup:
        """Twilio's messages to `sms.to` sent since the day before the reservation
        (`To` + `DateSent>`; Twilio filters by GMT date), matched on sender, body and a
        creation time next to the reservation. A message still queued has no DateSent
        and is not listed yet: absence counts only after SMS_SETTLE."""
        from twilio.base.exceptions import TwilioRestException

        since = (sms.reserved_at - dt.timedelta(days=1)).astimezone(dt.timezone.utc).date().isoformat()
        try:
            listed = self._client.messages.list(to=sms.to, date_sent_after=since, page_size=100, limit=1000)
        except TwilioRestException as exc:
            if exc.status in (401, 403, 404):
                return Lookup(UNAVAILABLE, detail="message_list_unavailable")
            return Lookup(ERROR, detail=f"HTTP {exc.status}: {exc.msg}"[:300])
        except Exception as exc:  # noqa: BLE001 - no answer this time
            return Lookup(ERROR, detail=f"{type(exc).__name__}: {exc}"[:300])
        earliest, latest = sms.reserved_at - MATCH_BEFORE, sms.reserved_at + MATCH_AFTER
        ours = [m for m in listed
                if m.sid not in sms.exclude_ids and (m.direction or "").startswith("outbound")
                and self._from_us(m) and m.date_created is not None and earliest <= m.date_created <= latest]
        ours.sort(key=lambda m: m.date_created)
        exact = [m for m in ours if m.body == sms.body]
        if exact:
            return Lookup(FOUND, message_id=exact[0].sid, detail=f"status {exact[0].status}")
        if ours:
            return Lookup(SIMILAR, message_id=ours[0].sid, detail="a message from our sender at that time, other text")
        return Lookup(ABSENT, detail=f"no message to {sms.to} since {since} matches")

    def _from_us(self, message) -> bool:
        if self._via_service:
            return message.messaging_service_sid == self._sender
        return message.from_ == self._sender


class SendGridSender:
    def __init__(self, api_key: str, base_url: str | None, timeout: float | None = None):
        from lead_orchestrator.messaging.sdk_clients import DEFAULT_TIMEOUT, make_sendgrid_client

        self._client = make_sendgrid_client(api_key, base_url, timeout=timeout or DEFAULT_TIMEOUT)

    def send(self, email: OutgoingEmail) -> SendResult:
        from python_http_client import exceptions as sg_errors
        from sendgrid.helpers.mail import CustomArg, Header, Mail

        mail = Mail(from_email=(email.sender, email.sender_name), to_emails=email.to,
                    subject=email.subject, plain_text_content=email.text)
        for name, value in email.headers.items():
            mail.add_header(Header(name, value))
        for name, value in email.custom_args.items():
            mail.add_custom_arg(CustomArg(name, value))
        if email.reply_to:  # Reply-To is a field of its own in Mail Send (a reserved header)
            mail.reply_to = email.reply_to
        try:
            response = self._client.send(mail)
        except sg_errors.HTTPError as exc:
            return from_http_status(getattr(exc, "status_code", 0) or 0, detail=_short(getattr(exc, "body", b"")))
        except Exception as exc:  # noqa: BLE001 - transport failures and unreadable answers
            return from_exception(exc)
        message_id = response.headers.get("X-Message-Id") if response.headers else None
        return SendResult(SENT, message_id=message_id)

    def find(self, custom_args: dict[str, str]) -> Lookup:
        """Email Activity (`GET /v3/messages`, a paid add-on): the mail whose custom args
        (`unique_args` in its query language) carry these values."""
        from python_http_client import exceptions as sg_errors

        query = " AND ".join(f"unique_args['{name}']=\"{value}\"" for name, value in sorted(custom_args.items()))
        try:
            response = self._client.client.messages.get(query_params={"query": query, "limit": 10})
            listed = json.loads(response.body or b"{}").get("messages") or []
        except sg_errors.HTTPError as exc:
            status, body = getattr(exc, "status_code", 0) or 0, _short(getattr(exc, "body", b""))
            # No add-on, or a key without Email Activity access: 400 "authorization
            # required" (no add-on), 401, or 403 "access forbidden" (key scope).
            if status in (401, 403) or (status == 400 and "authorization required" in body.lower()):
                return Lookup(UNAVAILABLE, detail="email_activity_unavailable")
            return Lookup(ERROR, detail=f"HTTP {status}: {body}"[:300])
        except Exception as exc:  # noqa: BLE001 - no answer this time
            return Lookup(ERROR, detail=f"{type(exc).__name__}: {exc}"[:300])
        if not listed:
            return Lookup(ABSENT, detail="not in Email Activity")
        first = listed[0]
        # Activity ids are the X-Message-Id followed by ".<per-recipient suffix>".
        message_id = str(first.get("msg_id") or "").split(".", 1)[0] or None
        return Lookup(FOUND, message_id=message_id, detail=f"status {first.get('status')}")


def _short(body: bytes | str | None) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    return text[:300]
