"""Tekmetric webhooks: the URL token that authenticates them, and reading one as a hint.

Partners found no signature header on Tekmetric's webhooks, so what authenticates a
delivery is an unguessable token in the URL registered for the shop
(`/webhooks/tekmetric/<token>`). Only the token's SHA-256 is stored; a presented token is
hashed and compared with it in constant time, and never logged. The body is only a hint
(`{"event": "Repair Order #1234 created", "data": {<repair order>}}`, sometimes
`data.repairOrder`); the estimate is fetched again before anything is decided, and
`data.shopId` (sometimes 0) is not trusted for anything.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Any

from lead_orchestrator.crm.base import ChangeHint, ChangeKind, InvalidWebhook
from lead_orchestrator.crm.tekmetric.mapping import CRM, parse_time, version_of
from lead_orchestrator.crm.errors import CrmError

TOKEN_BYTES = 32  # 256 bits, 43 URL-safe characters

_REPAIR_ORDER_EVENT = re.compile(r"^\s*repair\s*order\b", re.I)
_ORDER_KEYS = frozenset({"repairOrderNumber", "repairOrderStatus", "jobs"})
_ANSWER = re.compile(r"\b(approved|declined)\s+\d+\s+job", re.I)


def new_webhook_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> str:
    """What is stored to check a token: its SHA-256, in hex. A 256-bit random token needs
    no salt or slow hash: there is nothing to guess from its digest."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(presented: str | None, expected_sha256: str | None) -> bool:
    """True only for a non-empty token whose digest is the shop's, compared in constant time."""
    if not presented or not expected_sha256:
        return False
    return hmac.compare_digest(token_sha256(presented).encode("ascii"), expected_sha256.encode("ascii"))


def parse_webhook(body: bytes, *, shop_id: str) -> ChangeHint | None:
    """The change a delivery announces, or None when it concerns no repair order of this
    shop (an inspection, an appointment without an order, another shop's order).
    InvalidWebhook(400) when the body is not Tekmetric's envelope."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidWebhook("Tekmetric webhook: body is not JSON", 400) from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("event"), str) \
            or not isinstance(envelope.get("data"), dict):
        raise InvalidWebhook("Tekmetric webhook: expected {\"event\": str, \"data\": object}", 400)
    event, data = envelope["event"], envelope["data"]
    order = _order_in(event, data)
    if order is not None:
        estimate_id, kind = order.get("id"), _kind(event)
        if not _is_id(estimate_id):
            raise InvalidWebhook("Tekmetric webhook: a repair order event without the order's id", 400)
    else:
        # Payments, appointments: about an order only when they name one. Their own
        # verbs ("Appointment ... deleted") say nothing about the order, and the order's
        # version is unknown, so the hint is a plain "look again".
        estimate_id, kind, order = data.get("repairOrderId"), ChangeKind.UPDATED, {}
        if not _is_id(estimate_id):
            return None
    sender_shop = order.get("shopId") or data.get("shopId")
    if _is_id(sender_shop) and str(sender_shop) != str(shop_id):
        return None  # another shop's order sent to this shop's URL: not ours to act on
    try:
        updated = version_of(order, "webhook")  # the poll's stamp for the same change
        created = parse_time(order["createdDate"], "webhook createdDate") if order.get("createdDate") else None
    except CrmError as exc:
        raise InvalidWebhook(str(exc), 400) from None
    return ChangeHint(crm=CRM, estimate_id=str(estimate_id), kind=kind, updated_at=updated, created_at=created,
                      description=event[:200])


def _order_in(event: str, data: dict) -> dict | None:
    """The repair order a delivery carries: `data.repairOrder`, or `data` itself when it
    looks like one or the sentence is a repair order's ("Repair Order #1234 ...")."""
    if isinstance(data.get("repairOrder"), dict):
        return data["repairOrder"]
    if _ORDER_KEYS & data.keys() or _REPAIR_ORDER_EVENT.match(event):
        return data
    return None


def _kind(event: str) -> ChangeKind:
    lowered = event.lower()
    if "deleted" in lowered:
        return ChangeKind.DELETED
    if _ANSWER.search(event):
        return ChangeKind.ANSWERED
    if lowered.rstrip(". ").endswith("created"):
        return ChangeKind.CREATED
    return ChangeKind.UPDATED


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value > 0) or \
        (isinstance(value, str) and value.strip() not in ("", "0"))
