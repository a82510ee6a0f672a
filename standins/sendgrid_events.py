"""SendGrid's signed Event Webhook: ECDSA P-256 over `timestamp + raw body`."""
from __future__ import annotations

import base64
import json
import secrets
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class EventSigner:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def public_key(self) -> str:
        """Base64 DER SubjectPublicKeyInfo: what SendGrid's settings page shows and what
        `EventWebhook().convert_public_key_to_ecdsa` takes."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, payload: str, timestamp: str) -> str:
        signature = self._key.sign((timestamp + payload).encode(), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def signed_request(self, events: list[dict]) -> tuple[bytes, dict[str, str]]:
        payload = json.dumps(events)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "SendGrid Event API",
            SIGNATURE_HEADER: self.sign(payload, timestamp),
            TIMESTAMP_HEADER: timestamp,
        }
        return payload.encode(), headers


def make_event(kind: str, email: str, message_id: str, index: int, *, categories: list[str] | None = None,
               custom_args: dict[str, str] | None = None) -> dict:
    """One event as SendGrid posts it; custom_args are flattened into the event itself."""
    now = int(time.time())
    event = {
        **(custom_args or {}),
        "email": email,
        "timestamp": now,
        "event": kind,
        "sg_event_id": secrets.token_urlsafe(16),
        # SendGrid suffixes the X-Message-Id per recipient: match on the part before the dot.
        "sg_message_id": f"{message_id}.recvd-standin-{index}-{now}.0",
        "smtp-id": f"<{message_id}@standin.sendgrid.net>",
    }
    if categories:
        event["category"] = categories
    if kind == "bounce":
        event.update(type="bounce", status="5.1.1", bounce_classification="Invalid Address",
                     reason="550 5.1.1 The email account that you tried to reach does not exist.")
    elif kind == "delivered":
        event["response"] = "250 OK"
    return event
