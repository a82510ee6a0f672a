"""Webhook deliveries as ShopMonkey's delivery client makes them: Standard Webhooks
signature, up to 4 attempts, backoff from 50 ms doubling up to 10 s, Retry-After honoured,
55 s budget, retries only on 408/429/502/503/504 and connection errors.

Secrets use the Standard Webhooks form `whsec_<base64 key>`; the key is the decoded part.
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone

from standardwebhooks import Webhook

from standins.outbox import Outbox
from standins.outgoing import OutgoingCalls, retry_after_seconds

RETRYABLE = frozenset({408, 429, 502, 503, 504})
USER_AGENT = "Shopmonkey (+https://shopmonkey.io)"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_secret(secret: str) -> None:
    if not secret.startswith("whsec_"):
        raise ValueError("webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except binascii.Error:
        raise ValueError("webhook secret must look like whsec_<base64>") from None
    if not key:
        raise ValueError("webhook secret key is empty")


class WebhookDelivery:
    """One event delivered to one URL, with every attempt made so far."""

    def __init__(self, url: str, body: dict) -> None:
        self.request_id = str(uuid.uuid4())  # X-Request-Id: the same on every attempt
        self.url = url
        self.body = body
        self.attempts: list[dict] = []
        self.final_status: int | None = None
        self.error: str | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def ok(self) -> bool:
        return self.final_status is not None and 200 <= self.final_status < 300

    def wait(self, timeout: float = 10.0) -> "WebhookDelivery":
        if not self._done.wait(timeout):
            raise TimeoutError(f"webhook delivery {self.request_id} still running after {timeout}s")
        return self

    def as_dict(self) -> dict:
        data = self.body.get("data", {})
        return {
            "request_id": self.request_id, "url": self.url, "operation": self.body.get("operation"),
            "table": self.body.get("table"), "order_id": data.get("id"), "updatedDate": data.get("updatedDate"),
            "attempts": list(self.attempts), "final_status": self.final_status, "error": self.error,
            "done": self.done,
        }


class WebhookSender:
    def __init__(self, outgoing: OutgoingCalls, record: Outbox) -> None:
        self.outgoing = outgoing
        self.record = record
        self.max_attempts = 4
        self.base_delay = 0.05
        self.max_delay = 10.0
        self.budget = 55.0

    def send(self, url: str, secret: str, body: dict, *, wait: bool) -> WebhookDelivery:
        delivery = self.record.add(WebhookDelivery(url, body))
        if wait:
            self._deliver(delivery, secret)
        else:
            self.outgoing.submit(lambda: self._deliver(delivery, secret))
        return delivery

    def _deliver(self, delivery: WebhookDelivery, secret: str) -> None:
        payload = json.dumps(delivery.body, separators=(",", ":"))
        signer = Webhook(secret)
        started = time.monotonic()
        try:
            for attempt in range(1, self.max_attempts + 1):
                # webhook-id is per attempt (as ShopMonkey describes it): receivers must
                # de-duplicate on the content, not on this id.
                msg_id = "msg_" + secrets.token_hex(12)
                now = datetime.now(timezone.utc)
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    "X-Attempt": str(attempt),
                    "X-Request-Id": delivery.request_id,
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signer.sign(msg_id, now, payload),
                    "webhook-version": "3",
                }
                result = self.outgoing.post(delivery.url, content=payload.encode(), headers=headers)
                delivery.attempts.append({"attempt": attempt, "webhook_id": msg_id, "status": result.status,
                                          "error": result.error, "at": now.isoformat(timespec="milliseconds")})
                delivery.final_status, delivery.error = result.status, result.error
                self.record.touch()
                if result.status is not None and result.status not in RETRYABLE:
                    return
                if attempt == self.max_attempts:
                    return
                delay = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
                retry_after = retry_after_seconds(result.headers)
                if retry_after is not None:
                    delay = retry_after
                if time.monotonic() - started + delay > self.budget or not self.outgoing.pause(delay):
                    return
        finally:
            delivery._done.set()
            self.record.touch()
