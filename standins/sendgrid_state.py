"""In-memory SendGrid account: mail accepted, injected behaviours, events to post."""
from __future__ import annotations

import base64
import secrets
import threading
from datetime import datetime, timezone

from standins.faults import FaultsControl, InjectedFaults
from standins.outbox import Outbox
from standins.outgoing import OutgoingCalls, PostResult
from standins.sendgrid_events import EventSigner, make_event
from standins.sendgrid_inbound import InboundParse


class SendGridError(Exception):
    def __init__(self, status: int, errors: list[dict], headers: dict[str, str] | None = None) -> None:
        super().__init__(errors[0]["message"] if errors else str(status))
        self.status, self.errors, self.headers = status, errors, headers or {}

    @classmethod
    def one(cls, status: int, message: str, field: str | None = None, help: str | None = None) -> "SendGridError":
        return cls(status, [{"message": message, "field": field, "help": help}])



def error_for_status(status: int) -> SendGridError:
    """SendGrid's error for an injected failure status."""
    if status == 429:
        reset_at = str(int(datetime.now(timezone.utc).timestamp()) + 1)
        return SendGridError(429, [{"field": None, "message": "too many requests"}],
                             {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset_at})
    return SendGridError.one(status, "internal server error")


def new_message_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")  # 22 characters


class SendGridState(FaultsControl):
    def __init__(self, *, event_delay: float = 0.05) -> None:
        self.event_delay = event_delay
        self.api_keys: set[str] = set()  # empty: any non-empty key is accepted
        self.signer = EventSigner()
        self.sent = Outbox()  # accepted mail
        self.rejected = Outbox()  # requests answered with an error
        self.event_posts = Outbox()  # event webhook POSTs made
        self.inbound = InboundParse()  # mail received for parse hosts, posted to their URLs
        self._lock = threading.RLock()
        self._outgoing = OutgoingCalls("sendgrid")
        self._generation = 0
        self.email_activity_enabled = False  # the Email Activity API is a paid add-on (sendgrid_activity)
        self.reset()

    def reset(self) -> None:
        """Forget mail and injected behaviours; registered keys and the signing key stay."""
        with self._lock:
            self._generation += 1  # events still scheduled for older mail are dropped
            self.modes = InjectedFaults()
            self.bounce_addresses: set[str] = set()
            self.event_webhook_url: str | None = None  # when set, events follow each accepted mail
        for box in (self.sent, self.rejected, self.event_posts):
            box.clear()
        self.inbound.reset()

    def add_api_key(self, key: str) -> None:
        with self._lock:
            self.api_keys.add(key)

    def add_bounces(self, *emails: str) -> None:
        with self._lock:
            self.bounce_addresses.update(e.lower() for e in emails)

    def set_event_webhook(self, url: str | None) -> None:
        with self._lock:
            self.event_webhook_url = url

    def public_key(self) -> str:
        return self.signer.public_key()

    def close(self) -> None:
        self._outgoing.close()

    # ----- the API behaviour -----
    def authenticate(self, authorization: str | None) -> None:
        scheme, _, key = (authorization or "").partition(" ")
        with self._lock:
            known = not self.api_keys or key in self.api_keys
        if scheme.lower() != "bearer" or not key or not known:
            raise SendGridError.one(401, "The provided authorization grant is invalid, expired, or revoked")

    def enable_email_activity(self, enabled: bool = True) -> None:
        """Account setting (kept by reset()): whether GET /v3/messages answers."""
        with self._lock:
            self.email_activity_enabled = enabled

    def take_injected_failure(self) -> SendGridError | None:
        status = self.take_injected_status()
        return error_for_status(status) if status else None

    def accept(self, mail: dict) -> str:
        """Record a mail that passed the contract and schedule its events; returns X-Message-Id."""
        message_id = new_message_id()
        text = next((c["value"] for c in mail.get("content", []) if c.get("type") == "text/plain"), None)
        html = next((c["value"] for c in mail.get("content", []) if c.get("type") == "text/html"), None)
        recipients = []
        for p in mail["personalizations"]:
            for kind in ("to", "cc", "bcc"):
                recipients += [a["email"] for a in p.get(kind, [])]
        first = mail["personalizations"][0]
        record = {
            "message_id": message_id,
            "received_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "from": mail["from"]["email"],
            "reply_to": (mail.get("reply_to") or {}).get("email"),
            "to": recipients,
            "subject": first.get("subject", mail.get("subject")),
            "text": text,
            "html": html,
            "headers": {**mail.get("headers", {}), **first.get("headers", {})},
            "categories": mail.get("categories", []),
            "custom_args": {**mail.get("custom_args", {}), **first.get("custom_args", {})},
            "template_id": mail.get("template_id"),
            "asm": mail.get("asm"),
            "payload": mail,
        }
        self.sent.add(record)
        with self._lock:
            url, generation = self.event_webhook_url, self._generation
        if url:
            def post_later() -> None:
                if generation == self._generation:
                    self.post_events(url, self.events_for(message_id))

            self._outgoing.submit(post_later, self.event_delay)
        return message_id

    def reject(self, body: object, error: SendGridError) -> None:
        self.rejected.add({"status": error.status, "errors": error.errors, "payload": body})

    # ----- the Event Webhook -----
    def events_for(self, message_id: str, kind: str | None = None) -> list[dict]:
        """Events for one accepted mail: `processed` then `delivered` (or `bounce` for listed
        addresses) per recipient; with `kind`, one event of that kind per recipient."""
        record = next((r for r in self.sent.items() if r["message_id"] == message_id), None)
        if record is None:
            raise KeyError(message_id)
        events = []
        for i, email in enumerate(record["to"]):
            if kind:
                kinds = [kind]
            else:
                kinds = ["processed", "bounce" if email.lower() in self.bounce_addresses else "delivered"]
            events += [make_event(k, email, message_id, i, categories=record["categories"] or None,
                                  custom_args=record["custom_args"]) for k in kinds]
        return events

    def post_events(self, url: str, events: list[dict]) -> int | None:
        """POST events, signed, to url and return the answer's status (None if unreachable)."""
        body, headers = self.signer.signed_request(events)
        result: PostResult = self._outgoing.post(url, content=body, headers=headers)
        self.event_posts.add({"url": url, "events": [e["event"] for e in events], "count": len(events),
                              "response_status": result.status, "error": result.error})
        return result.status
