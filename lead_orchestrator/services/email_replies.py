"""Email replies: what happens when a customer answers a lead's email (docs/replies.md).

The email's Reply-To is the lead's signed reply address; SendGrid Inbound Parse posts
the answer to the receiver (webhook_receiver/routers/sendgrid_inbound.py), which calls:

1. `receive_email_reply` (one transaction): the lead is locked, the message is stored
   once per (lead, Message-ID), and then either
   - a person's reply stops the lead through `stop_conditions.record_reply`, the path a
     text reply takes (lead `stopped (replied)`, every pending touch cancelled), or
   - an automatic email (auto_replies.py) is recorded and nothing stops;
2. `forward_reply`: the shop gets a copy (its sender address, or the one set with
   `replies SLUG --forward-to`), with the customer's address as Reply-To so the service
   writer answers the customer directly; sent through the shop's own SendGrid account,
   at most once (reserved, sent, recorded, like a touch).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from lead_orchestrator.store import lead_log
from lead_orchestrator.messaging.auto_replies import auto_reply_reason
from lead_orchestrator.domain.contact_points import normalize_email
from lead_orchestrator.messaging.inbound_email import InboundEmail, new_text
from lead_orchestrator.store.lead_state import PENDING, consent_key
from lead_orchestrator.store.leads import Lead, lead_by_id, lock_lead_status
from lead_orchestrator.messaging.senders import OutgoingEmail, SendResult
from lead_orchestrator.store.shops import Shop
from lead_orchestrator.services.stop_conditions import PREVIEW_CHARS, record_reply
from lead_orchestrator.domain.templates import format_cents

log = logging.getLogger(__name__)

FORWARD_SETTING = "reply_forward_to"  # shop.settings key: where the shop's copy goes
# A forward refused for now (429, 5xx, connection refused) is tried again when SendGrid
# posts the email again (the receiver answers 503 so that it does), this many times.
MAX_FORWARD_ATTEMPTS = 5
INBOUND_PARSE_PATH = "/webhooks/sendgrid-inbound/parse"


@dataclass(frozen=True)
class ReplyOutcome:
    status: str                  # recorded | duplicate
    kind: str                    # reply | auto_reply
    reply_id: int
    lead_id: int
    auto_reason: str | None = None
    leads_stopped: tuple[int, ...] = ()
    touches_cancelled: int = 0
    forward_status: str | None = None


def forward_address(shop: Shop) -> str | None:
    """Where the shop reads its customers' replies."""
    return (shop.settings or {}).get(FORWARD_SETTING) or shop.sendgrid_sender or None


def receive_email_reply(conn: psycopg.Connection, shop: Shop, lead_id: int, mail: InboundEmail, *,
                        at: dt.datetime) -> ReplyOutcome | None:
    """Records an email to the lead's reply address and applies it. None: no such lead."""
    # The lead first (the lock order of lead_state): no touch of it can be reserved now.
    status = lock_lead_status(conn, lead_id)
    if status is None:
        return None
    reason = auto_reply_reason(mail.headers, sender=mail.sender, subject=mail.subject,
                               null_return_path=mail.null_return_path)
    kind = "auto_reply" if reason else "reply"
    text = new_text(mail.text)
    forward_to = forward_address(shop) if kind == "reply" else None
    row = conn.execute(
        """INSERT INTO email_replies (tenant_id, lead_id, message_key, kind, auto_reason, from_address, from_name,
                                      subject, body, attachments, received_at, forward_to, forward_status)
           VALUES (current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (tenant_id, lead_id, message_key) DO NOTHING RETURNING id""",
        (lead_id, mail.message_key, kind, reason, mail.sender, mail.sender_name, mail.subject[:500], text,
         Jsonb(list(mail.attachments)[:50]), at, forward_to, "pending" if kind == "reply" else None),
    ).fetchone()
    if row is None:  # the same message posted again: nothing changes
        seen = conn.execute("SELECT id, kind, auto_reason, forward_status FROM email_replies "
                            "WHERE lead_id = %s AND message_key = %s", (lead_id, mail.message_key)).fetchone()
        return ReplyOutcome("duplicate", seen["kind"], seen["id"], lead_id, seen["auto_reason"],
                            forward_status=seen["forward_status"])
    detail = {"subject": mail.subject[:200], "reply_id": row["id"]}
    if kind == "auto_reply":
        lead_log.record(conn, lead_id, "inbound_auto_reply", channel="email",
                        address=consent_key("email", mail.sender), reason=reason, body=text[:PREVIEW_CHARS],
                        at=at, **detail)
        return ReplyOutcome("recorded", kind, row["id"], lead_id, reason)
    pending = conn.execute("SELECT count(*) AS n FROM touches WHERE lead_id = %s AND status = ANY(%s)",
                           (lead_id, list(PENDING))).fetchone()["n"] if status == "active" else 0
    # The address names one lead, so the reply stops that lead (a text cannot say which
    # estimate it answers, so it stops every lead of the number).
    stopped = record_reply(conn, [lead_id], channel="email", address=mail.sender, body=text, at=at,
                           lead_id=lead_id, **detail)
    return ReplyOutcome("recorded", kind, row["id"], lead_id, None, tuple(stopped), pending if stopped else 0,
                        "pending")


# --- the shop's copy ----------------------------------------------------------------------

def forward_reply(db, shop: Shop, reply_id: int, vendors, *, now: dt.datetime) -> str | None:
    """Sends the shop its copy of a reply if one is owed (`pending`), at most once.
    Returns the forward's status afterwards (`pending` again: refused for now)."""
    with db.tenant_tx(shop.id) as conn:
        reply = conn.execute(
            """UPDATE email_replies SET forward_status = 'sending', forward_attempts = forward_attempts + 1
                WHERE id = %s AND forward_status = 'pending' RETURNING *""", (reply_id,)).fetchone()
        if reply is None:
            row = conn.execute("SELECT forward_status FROM email_replies WHERE id = %s", (reply_id,)).fetchone()
            return row["forward_status"] if row else None
        lead = lead_by_id(conn, reply["lead_id"])
    result = _send_forward(shop, lead, reply, vendors)
    with db.tenant_tx(shop.id) as conn:
        return _record_forward(conn, reply, result, now)


def _send_forward(shop: Shop, lead: Lead, reply: dict, vendors) -> SendResult:
    from lead_orchestrator.services.shop_clients import MissingCredentials

    if not reply["forward_to"]:
        return SendResult("permanent", code="no_forward_address",
                          detail="the shop has no SendGrid sender address and no --forward-to address")
    try:
        sender = vendors.email(shop)
        return sender.send(forward_email(shop, lead, reply))
    except MissingCredentials as exc:
        return SendResult("permanent", code="missing_credentials", detail=str(exc))
    except Exception as exc:  # noqa: BLE001 - an unexpected failure mid-call is ambiguous
        log.exception("forwarding email reply %s failed", reply["id"])
        return SendResult("ambiguous", detail=f"{type(exc).__name__}: {exc}")


def _record_forward(conn: psycopg.Connection, reply: dict, result: SendResult, now: dt.datetime) -> str:
    if result.outcome == "sent":
        status, error = "sent", None
    elif result.outcome == "transient" and reply["forward_attempts"] < MAX_FORWARD_ATTEMPTS:
        status, error = "pending", f"retry:{result.code or result.detail}"
    elif result.outcome == "transient":
        status, error = "failed", "transient_errors_exhausted"
    elif result.outcome == "permanent":
        status, error = "failed", result.code or result.detail or "rejected"
    else:
        status, error = "unknown", result.detail or "ambiguous"
    conn.execute(
        """UPDATE email_replies SET forward_status = %s, forward_error = %s, forward_message_id = %s,
                  forwarded_at = CASE WHEN %s = 'sent' THEN %s ELSE forwarded_at END
            WHERE id = %s AND forward_status = 'sending'""",
        (status, error, result.message_id, status, now, reply["id"]),
    )
    kind = {"sent": "reply_forwarded", "pending": "reply_forward_retry"}.get(status, f"reply_forward_{status}")
    lead_log.record(conn, reply["lead_id"], kind, channel="email", to=reply["forward_to"], reply_id=reply["id"],
                    message_id=result.message_id, reason=error, detail=(result.detail or "")[:200] or None, at=now)
    return status


def forward_email(shop: Shop, lead: Lead, reply: dict) -> OutgoingEmail:
    """The shop's copy: from the shop's own sender (the only address its SendGrid
    account may send from), to the forward address, Reply-To the customer."""
    who = reply["from_name"] or " ".join(p for p in (lead.first_name, lead.last_name) if p) \
        or reply["from_address"]
    estimate = f"estimate #{lead.order_number}" if lead.order_number else "their estimate"
    about = ", ".join(p for p in (lead.vehicle_name, format_cents(lead.total_cents)
                                  if lead.total_cents is not None else None) if p)
    state = ("Their follow-ups have stopped." if lead.status == "stopped" and lead.status_reason == "replied"
             else f"Their follow-ups had already ended ({lead.status}).")
    lines = [f"{who} <{reply['from_address']}> answered your email about {estimate}"
             + (f" ({about})." if about else "."),
             "Reply to this email to write to them directly. " + state, "", reply["body"] or "(no new text)"]
    if reply["attachments"]:
        lines += ["", f"Their email had {len(reply['attachments'])} attachment(s), not included here: "
                      + ", ".join(reply["attachments"][:10])]
    lines += ["", "--", f"Forwarded for {shop.name}."]
    subject = reply["subject"] or f"Reply about {estimate}"
    return OutgoingEmail(
        to=reply["forward_to"], sender=shop.sendgrid_sender or "", sender_name=f"{who} via {shop.name}"[:100],
        subject=f"Customer reply: {subject}"[:300], text="\n".join(lines),
        custom_args={"tenant": shop.slug, "email_reply_id": str(reply["id"])},
        reply_to=(reply["from_address"], reply["from_name"]),
    )


# --- configuration, as `shops show` and `replies` print it ----------------------------------

def reply_setup(settings, shop: Shop) -> dict:
    domain = settings.inbound_parse_domain
    if not domain:
        return {"configured": False,
                "note": "INBOUND_PARSE_DOMAIN is unset: emails carry no reply address, so a customer's email "
                        "reply goes to the shop's sender address and does not stop the follow-ups "
                        "(see docs/replies.md)"}
    return {"configured": True, "reply_to": f"reply+<lead token>@{domain}",
            "inbound_parse_url": settings.public_base_url.rstrip("/") + INBOUND_PARSE_PATH,
            "forward_to": forward_address(shop) or "(none: set --forward-to or a SendGrid sender)",
            "forward_to_is_custom": bool((shop.settings or {}).get(FORWARD_SETTING))}


def valid_forward_address(address: str, parse_domain: str | None) -> str:
    """A forward address as it will be stored; ValueError if it cannot be one."""
    normalized = normalize_email(address)
    if normalized is None:
        raise ValueError(f"{address!r} is not an email address")
    if parse_domain and normalized.rpartition("@")[2] == parse_domain:
        raise ValueError(f"{normalized} is at the inbound parse domain: the copy would come back as a reply")
    return normalized
