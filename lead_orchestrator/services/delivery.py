"""Delivery tracking: Twilio status callbacks and SendGrid events update the touch they
belong to, and the ones that mean "do not write again" (bounce, spam report,
unsubscribe, dropped, Twilio 21610) opt the address out and stop its leads.

Statuses only move forward: callbacks arrive out of order and more than once, so a late
`sent` never overwrites `delivered`.
"""
from __future__ import annotations

import datetime as dt

import psycopg

from lead_orchestrator.store import lead_log
from lead_orchestrator.domain.contact_points import normalize_email
from lead_orchestrator.store.lead_state import complete_if_done, opt_out_contact
from lead_orchestrator.store.touches import (Touch, advance_delivery, confirm_unknown_by_provider,
                                             touch_by_message_id, touch_of_channel)

SMS_PROGRESS = {"accepted": 0, "scheduled": 0, "queued": 0, "sending": 1, "sent": 2,
                "delivered": 3, "undelivered": 3, "failed": 3, "canceled": 3, "read": 4}
EMAIL_PROGRESS = {"processed": 1, "deferred": 1, "delivered": 2, "bounce": 3, "blocked": 3, "dropped": 3}
# Logged on the lead's timeline (the others are only kept on the touch).
SMS_LOGGED = {"delivered", "undelivered", "failed"}
# SendGrid events after which the address must not be written to again, and why.
EMAIL_STOPS = {"bounce": "email_bounced", "dropped": "email_dropped", "spamreport": "spam_report",
               "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed"}
TWILIO_OPTED_OUT = "21610"


def _find_touch(conn: psycopg.Connection, channel: str, touch_id: int | None, message_id: str | None) -> Touch | None:
    touch = None
    if touch_id is not None:
        touch = touch_of_channel(conn, touch_id, channel)
        if touch and message_id and touch.provider_message_id not in (None, message_id):
            touch = None  # the id in the callback belongs to another message: trust neither
    if touch is None and message_id:
        touch = touch_by_message_id(conn, message_id, channel)
    return touch


def _advance(conn: psycopg.Connection, touch: Touch, status: str, progress: dict[str, int], *,
             message_id: str | None, error_code: str | None, at: dt.datetime | None) -> bool:
    """Moves delivery_status forward (never back). A touch recorded as `unknown` is now
    known to be with the provider: it becomes `sent`, unless a reconciler settled it while
    this callback waited for the row (then its decision stands and nothing says `sent`)."""
    moved = advance_delivery(conn, touch.id, status, progress, message_id=message_id, error_code=error_code)
    if touch.status == "unknown" and confirm_unknown_by_provider(conn, touch.id):
        lead_log.record(conn, touch.lead_id, "touch_sent", step=touch.step, channel=touch.channel,
                        reason="confirmed_by_provider", at=at)
        complete_if_done(conn, touch.lead_id, at=at)
    return moved


def apply_sms_status(conn: psycopg.Connection, *, touch_id: int | None, message_sid: str | None, status: str,
                     error_code: str | None, to: str | None, at: dt.datetime | None = None) -> Touch | None:
    """A Twilio status callback. Returns the touch it updated (None if none matched)."""
    status = (status or "").lower()
    touch = _find_touch(conn, "sms", touch_id, message_sid)
    if touch is not None and status in SMS_PROGRESS:
        moved = _advance(conn, touch, status, SMS_PROGRESS, message_id=message_sid, error_code=error_code, at=at)
        if moved and status in SMS_LOGGED:
            lead_log.record(conn, touch.lead_id, f"sms_{status}", step=touch.step, channel="sms",
                            error_code=error_code, message_sid=message_sid, at=at)
    if error_code == TWILIO_OPTED_OUT and (to or touch):
        opt_out_contact(conn, "sms", to or touch.to_address, source="twilio_21610", reason="opted_out", at=at)
    return touch


def apply_email_event(conn: psycopg.Connection, event: dict, *, at: dt.datetime | None = None) -> Touch | None:
    """One SendGrid event. Unknown kinds and extra fields are accepted and ignored."""
    kind = str(event.get("event") or "").lower()
    if kind == "bounce" and event.get("type") == "blocked":
        kind = "blocked"  # a soft bounce: the address exists, the receiving server refused for now
    message_id = str(event.get("sg_message_id") or "").split(".", 1)[0] or None
    touch_id = _int(event.get("touch_id"))
    touch = _find_touch(conn, "email", touch_id, message_id)
    if touch is not None and kind in EMAIL_PROGRESS:
        moved = _advance(conn, touch, kind, EMAIL_PROGRESS, message_id=message_id, error_code=None, at=at)
        if moved and kind != "processed":
            lead_log.record(conn, touch.lead_id, f"email_{kind}", step=touch.step, channel="email",
                            detail=str(event.get("reason") or event.get("response") or "")[:200] or None, at=at)
    address = normalize_email(event.get("email")) or (touch.to_address if touch else None)
    if kind in EMAIL_STOPS and address:
        opt_out_contact(conn, "email", address, source=f"sendgrid_{kind}", reason=EMAIL_STOPS[kind], at=at)
    return touch


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
