"""Sending through Twilio (SMS) and SendGrid (email) with their official SDKs, and the
one classification the touch-point engine needs of every outcome:

- sent:       the provider accepted it (we keep its message id);
- permanent:  refused for good (invalid number, opted out): record, do not retry;
- transient:  refused before anything was sent (429, 5xx, connection refused): retry later;
- ambiguous:  we cannot know whether it was sent (timeout after the request went out):
              record as `unknown` and never re-send automatically.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The vendor SDKs are imported where they are used: they are slow to import, and the
# Dagster code location (re-imported by every run process) should stay light.

# Twilio codes that will not change by trying again.
TWILIO_PERMANENT_CODES = frozenset({21211, 21214, 21217, 21408, 21606, 21608, 21610, 21612, 21614, 21604})


@dataclass(frozen=True)
class SendResult:
    outcome: str  # "sent" | "permanent" | "transient" | "ambiguous"
    message_id: str | None = None
    code: str | None = None
    detail: str | None = None


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


class TwilioSender:
    def __init__(self, account_sid: str, auth_token: str, sender: str, base_url: str | None):
        from lead_orchestrator.vendor_clients import make_twilio_client

        self._client = make_twilio_client(account_sid, auth_token, base_url)
        self._sender = sender

    def send(self, to: str, body: str, status_callback: str | None = None) -> SendResult:
        import requests
        from twilio.base.exceptions import TwilioRestException

        sender = {"messaging_service_sid": self._sender} if self._sender.startswith("MG") else {"from_": self._sender}
        kwargs = {"status_callback": status_callback} if status_callback else {}
        try:
            message = self._client.messages.create(to=to, body=body, **sender, **kwargs)
        except TwilioRestException as exc:
            code = str(exc.code) if exc.code is not None else None
            if exc.status == 429 or exc.status >= 500:
                return SendResult("transient", code=code or str(exc.status), detail=exc.msg)
            if exc.code in TWILIO_PERMANENT_CODES or 400 <= exc.status < 500:
                return SendResult("permanent", code=code or str(exc.status), detail=exc.msg)
            return SendResult("ambiguous", code=code, detail=exc.msg)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            return _connection_outcome(exc)
        return SendResult("sent", message_id=message.sid)


class SendGridSender:
    def __init__(self, api_key: str, base_url: str | None):
        from lead_orchestrator.vendor_clients import make_sendgrid_client

        self._client = make_sendgrid_client(api_key, base_url)

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
            status = getattr(exc, "status_code", 0) or 0
            detail = _short(getattr(exc, "body", b""))
            if status == 429 or status >= 500:
                return SendResult("transient", code=str(status), detail=detail)
            return SendResult("permanent", code=str(status), detail=detail)
        except OSError as exc:  # urllib: URLError (refused) or a socket timeout
            if "timed out" in str(exc).lower():
                return SendResult("ambiguous", detail=f"timeout: {exc}")
            return SendResult("transient", detail=f"connection: {exc}")
        message_id = response.headers.get("X-Message-Id") if response.headers else None
        return SendResult("sent", message_id=message_id)


def _connection_outcome(exc: Exception) -> SendResult:
    """A connection that never opened sent nothing; anything later might have."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return SendResult("transient", detail=f"connect timeout: {exc}")
    if isinstance(exc, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(exc):
        return SendResult("transient", detail=f"connection refused: {exc}")
    return SendResult("ambiguous", detail=f"{type(exc).__name__}: {exc}")


def _short(body: bytes | str | None) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    return text[:300]
