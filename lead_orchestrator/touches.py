"""The touch-point engine: plans a lead's sequence, and sends one touch at most once.

A touch is a row per (lead, step, channel). Sending is two transactions around the
provider call: the first moves the row to `sending` (the reservation), the second
records what the provider said. A crash between them leaves `sending`, which the
sweeper turns into `unknown` and which nothing ever sends again.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg

from lead_orchestrator import lead_log
from lead_orchestrator.providers import OutgoingEmail, SendResult
from lead_orchestrator.send_window import SendWindow
from lead_orchestrator.sequences import sequence_for, template_for
from lead_orchestrator.shops import Shop
from lead_orchestrator.templates import OPT_OUT_TEXT, format_cents, render

log = logging.getLogger(__name__)

MAX_TRANSIENT_ATTEMPTS = 5
STALE_RESERVATION = dt.timedelta(minutes=2)


@dataclass(frozen=True)
class TouchOutcome:
    touch_id: int
    status: str
    reason: str | None = None


def plan_sequence(conn: psycopg.Connection, shop: Shop, lead: dict, window: SendWindow) -> int:
    """Creates the lead's touch rows (idempotent). Returns how many were created."""
    created = 0
    for step in sequence_for(shop.settings):
        address = lead["phone_e164"] if step.channel == "sms" else lead["email"]
        due = lead["first_seen_at"] + step.offset
        if address is None:
            status, reason, send_after = "skipped", f"no_contact:{step.channel}", due
        else:
            send_after = window.next_allowed_moment(due)
            status, reason = ("deferred", "quiet_hours") if send_after > due else ("scheduled", None)
        row = conn.execute(
            """INSERT INTO touches (tenant_id, lead_id, step, channel, status, reason, due_at, send_after, to_address)
               VALUES (current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (tenant_id, lead_id, step, channel) DO NOTHING RETURNING id""",
            (lead["id"], step.step, step.channel, status, reason, due, send_after, address),
        ).fetchone()
        if row:
            created += 1
            if status != "scheduled":
                lead_log.record(conn, lead["id"], f"touch_{status}", step=step.step, channel=step.channel,
                                reason=reason, send_after=send_after.isoformat())
    return created


def cancel_pending(conn: psycopg.Connection, lead_id: int, reason: str) -> int:
    """Stops every touch of the lead that has not gone out yet."""
    rows = conn.execute(
        """UPDATE touches SET status = 'cancelled', reason = %s, updated_at = now()
            WHERE lead_id = %s AND status IN ('scheduled', 'deferred') RETURNING id""",
        (reason, lead_id),
    ).fetchall()
    return len(rows)


def due_touch_ids(conn: psycopg.Connection, now: dt.datetime, lead_id: int | None = None,
                  limit: int = 500) -> list[int]:
    rows = conn.execute(
        """SELECT id FROM touches WHERE status IN ('scheduled', 'deferred') AND send_after <= %s
              AND (%s::bigint IS NULL OR lead_id = %s) ORDER BY send_after, id LIMIT %s""",
        (now, lead_id, lead_id, limit),
    ).fetchall()
    return [r["id"] for r in rows]


def mark_stale_reservations_unknown(conn: psycopg.Connection, now: dt.datetime) -> int:
    """A reservation older than STALE_RESERVATION outlived its sender: the provider may or
    may not have the message, so it is recorded as `unknown` and never re-sent."""
    rows = conn.execute(
        """UPDATE touches SET status = 'unknown', reason = 'no_outcome_recorded', updated_at = now()
            WHERE status = 'sending' AND reserved_at < %s RETURNING id, lead_id, step, channel""",
        (now - STALE_RESERVATION,),
    ).fetchall()
    for r in rows:
        lead_log.record(conn, r["lead_id"], "touch_unknown", step=r["step"], channel=r["channel"])
    return len(rows)


def merge_fields(shop: Shop, lead: dict) -> dict[str, str]:
    return {
        "first_name": lead.get("first_name") or "there",
        "last_name": lead.get("last_name") or "",
        "vehicle": lead.get("vehicle_name") or "vehicle",
        "shop_name": shop.name,
        "shop_phone": shop.shop_phone or "",
        "estimate_number": lead.get("order_number") or "",
        "estimate_total": format_cents(lead.get("total_cents")),
        "link": (shop.settings or {}).get("link", ""),
    }


def _reserve(conn: psycopg.Connection, shop: Shop, touch_id: int, now: dt.datetime,
             window: SendWindow) -> tuple[dict | None, TouchOutcome | None]:
    """First transaction: re-check everything, then reserve. Returns (touch, None) when
    the caller should send, or (None, outcome) when it must not."""
    touch = conn.execute(
        """SELECT t.*, l.status AS lead_status, l.first_name, l.last_name, l.vehicle_name,
                  l.order_number, l.total_cents, l.first_seen_at
             FROM touches t JOIN leads l ON l.id = t.lead_id
            WHERE t.id = %s FOR UPDATE OF t""",
        (touch_id,),
    ).fetchone()
    if touch is None or touch["status"] not in ("scheduled", "deferred"):
        return None, TouchOutcome(touch_id, touch["status"] if touch else "missing", "not_pending")
    if touch["lead_status"] != "active":
        return None, _finish(conn, touch, "cancelled", f"lead_{touch['lead_status']}")
    opted_out = conn.execute(
        "SELECT 1 FROM contacts WHERE channel = %s AND address = %s AND opted_out",
        (touch["channel"], touch["to_address"]),
    ).fetchone()
    if opted_out:
        return None, _finish(conn, touch, "skipped", "opted_out")
    if touch["send_after"] > now:
        return None, TouchOutcome(touch_id, touch["status"], "not_due")
    if not window.allows(now):
        later = window.next_allowed_moment(now)
        conn.execute("UPDATE touches SET status = 'deferred', reason = 'quiet_hours', send_after = %s, "
                     "updated_at = now() WHERE id = %s", (later, touch_id))
        lead_log.record(conn, touch["lead_id"], "touch_deferred", step=touch["step"],
                        channel=touch["channel"], reason="quiet_hours", send_after=later.isoformat())
        return None, TouchOutcome(touch_id, "deferred", "quiet_hours")
    step = next((s for s in sequence_for(shop.settings)
                 if s.step == touch["step"] and s.channel == touch["channel"]), None)
    if step is None:
        return None, _finish(conn, touch, "cancelled", "step_removed_from_sequence")
    template = template_for(shop.settings, step.template)
    fields = merge_fields(shop, touch)
    body = render(template.body, fields)
    subject = render(template.subject, fields) if template.subject else None
    if touch["channel"] == "sms" and touch["step"] == 0 and "STOP" not in body.upper():
        body = f"{body} {OPT_OUT_TEXT}"
    conn.execute(
        """UPDATE touches SET status = 'sending', reserved_at = %s, attempts = attempts + 1,
                  body = %s, subject = %s, updated_at = now() WHERE id = %s""",
        (now, body, subject, touch_id),
    )
    return {**touch, "body": body, "subject": subject}, None


def _finish(conn: psycopg.Connection, touch: dict, status: str, reason: str | None,
            **extra) -> TouchOutcome:
    conn.execute(
        """UPDATE touches SET status = %s, reason = %s, provider_message_id = coalesce(%s, provider_message_id),
                  error_code = %s, sent_at = %s, send_after = coalesce(%s, send_after), updated_at = now()
            WHERE id = %s""",
        (status, reason, extra.get("message_id"), extra.get("code"), extra.get("sent_at"),
         extra.get("send_after"), touch["id"]),
    )
    lead_log.record(conn, touch["lead_id"], f"touch_{status}", step=touch["step"], channel=touch["channel"],
                    reason=reason, **{k: str(v) for k, v in extra.items() if v is not None})
    return TouchOutcome(touch["id"], status, reason)


def send_touch(db, shop: Shop, touch_id: int, vendors, *, now: dt.datetime) -> TouchOutcome:
    """Sends one touch if it is still owed, due and allowed; at most once, ever."""
    window = SendWindow.for_shop(shop)
    with db.tenant_tx(shop.id) as conn:
        touch, outcome = _reserve(conn, shop, touch_id, now, window)
    if outcome:
        return outcome

    result = _call_provider(shop, touch, vendors)

    with db.tenant_tx(shop.id) as conn:
        return _record_result(conn, touch, result, now)


def _call_provider(shop: Shop, touch: dict, vendors) -> SendResult:
    try:
        if touch["channel"] == "sms":
            return vendors.sms(shop).send(touch["to_address"], touch["body"],
                                          status_callback=vendors.status_callback_url(shop))
        return vendors.email(shop).send(_email(shop, touch, vendors))
    except Exception as exc:  # noqa: BLE001 - an unexpected failure mid-call is ambiguous
        log.exception("provider call failed for touch %s", touch["id"])
        return SendResult("ambiguous", detail=f"{type(exc).__name__}: {exc}")


def _email(shop: Shop, touch: dict, vendors) -> OutgoingEmail:
    unsubscribe = vendors.unsubscribe_url(shop, touch["to_address"])
    footer = f"\n\n--\n{shop.name}\n{shop.postal_address or ''}\nUnsubscribe: {unsubscribe}"
    return OutgoingEmail(
        to=touch["to_address"], sender=shop.sendgrid_sender or "", sender_name=shop.name,
        subject=touch["subject"] or f"Your estimate from {shop.name}", text=touch["body"] + footer,
        headers={"List-Unsubscribe": f"<{unsubscribe}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        custom_args={"tenant": shop.slug, "touch_id": str(touch["id"])},
    )


def _record_result(conn: psycopg.Connection, touch: dict, result: SendResult, now: dt.datetime) -> TouchOutcome:
    if result.outcome == "sent":
        return _finish(conn, touch, "sent", None, message_id=result.message_id, sent_at=now)
    if result.outcome == "permanent":
        if result.code == "21610":  # the carrier says this number replied STOP
            set_opt_out(conn, "sms", touch["to_address"], True, source="twilio_21610")
        return _finish(conn, touch, "failed", result.detail or "rejected", code=result.code)
    if result.outcome == "transient" and touch["attempts"] + 1 < MAX_TRANSIENT_ATTEMPTS:
        retry_at = now + dt.timedelta(seconds=30 * 2 ** touch["attempts"])
        return _finish(conn, touch, "scheduled", f"retry:{result.code or result.detail}",
                       code=result.code, send_after=retry_at)
    if result.outcome == "transient":
        return _finish(conn, touch, "failed", "transient_errors_exhausted", code=result.code)
    return _finish(conn, touch, "unknown", result.detail or "ambiguous", code=result.code)


def set_opt_out(conn: psycopg.Connection, channel: str, address: str, opted_out: bool, *, source: str) -> None:
    conn.execute(
        """INSERT INTO contacts (tenant_id, channel, address, opted_out, change_source)
           VALUES (current_tenant_id(), %s, %s, %s, %s)
           ON CONFLICT (tenant_id, channel, address)
           DO UPDATE SET opted_out = EXCLUDED.opted_out, change_source = EXCLUDED.change_source, changed_at = now()""",
        (channel, address, opted_out, source),
    )
