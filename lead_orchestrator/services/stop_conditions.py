"""What a customer's message to the shop means, and what it stops.

- An opt-out keyword (the whole message, any case: STOP, STOPALL, UNSUBSCRIBE, CANCEL,
  END, QUIT, REVOKE, OPTOUT) opts the number out of every sequence of the shop and stops
  each of its active leads.
- An opt-in keyword (START, YES, UNSTOP) from an opted-out number re-subscribes it.
  From a number that was never opted out it is an answer ("Yes" to "shall we book
  it?"), so it counts as a reply.
- HELP or INFO gets the shop's name and phone number back; nothing stops.
- Anything else is a reply: the customer is talking to the shop now, so every active
  lead of that number stops (reason `replied`). The number stays subscribed.
- An email to a lead's reply address (docs/replies.md) is a reply too, through the same
  `record_reply`; it stops the lead the address names.
- An email unsubscribe (one-click or the page) opts the address out and stops its leads.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import psycopg

from lead_orchestrator.store import lead_log
from lead_orchestrator.domain.contact_points import normalize_phone
from lead_orchestrator.store.lead_state import (consent_key, end_lead, is_opted_out, leads_for_contact, opt_in_contact,
                                          opt_out_contact)
from lead_orchestrator.store.shops import Shop

OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
PREVIEW_CHARS = 160


@dataclass(frozen=True)
class InboundOutcome:
    kind: str  # opt_out | opt_in | help | reply
    leads_stopped: list[int] = field(default_factory=list)
    answer: str | None = None  # the SMS to answer with (TwiML), if any


def keyword(body: str) -> str | None:
    """The keyword class of a message, when the whole message is one keyword."""
    word = (body or "").strip().strip(".!?").strip().upper()
    if word in OPT_OUT_WORDS:
        return "opt_out"
    if word in OPT_IN_WORDS:
        return "opt_in"
    if word in HELP_WORDS:
        return "help"
    return None


def help_text(shop: Shop) -> str:
    phone = shop.shop_phone or shop.twilio_sender or ""
    reach = f"call {phone}" if phone else "reply to this message"
    return f"{shop.name}: for help {reach}. Msg&data rates may apply. Reply STOP to opt out."


def handle_inbound_sms(conn: psycopg.Connection, shop: Shop, *, from_: str, body: str, message_sid: str | None,
                       at: dt.datetime | None = None) -> InboundOutcome:
    phone = normalize_phone(from_) or from_.strip()
    kind = keyword(body)
    if kind == "opt_out":
        stopped = opt_out_contact(conn, "sms", phone, source="sms_keyword", reason="opted_out", at=at,
                                  message_sid=message_sid)
        return InboundOutcome("opt_out", stopped)
    if kind == "opt_in" and is_opted_out(conn, "sms", phone):
        opt_in_contact(conn, "sms", phone, source="sms_keyword", at=at, message_sid=message_sid)
        return InboundOutcome("opt_in")
    if kind == "help":
        lead_log.record(conn, None, "help_requested", channel="sms", address=phone, message_sid=message_sid, at=at)
        return InboundOutcome("help", answer=help_text(shop))
    # A text cannot say which estimate it answers: every active lead of the number stops.
    stopped = record_reply(conn, leads_for_contact(conn, "sms", phone), channel="sms", address=phone, body=body,
                           at=at, message_sid=message_sid)
    return InboundOutcome("reply", stopped)


def record_reply(conn: psycopg.Connection, leads: list[int], *, channel: str, address: str, body: str,
                 at: dt.datetime | None = None, lead_id: int | None = None, **detail) -> list[int]:
    """The customer answered, by text or by email: they are talking to the shop now. Logs
    the reply (`inbound_reply`, first PREVIEW_CHARS characters) and stops each of `leads`
    that is still active (`stopped`, reason `replied`), cancelling its pending touches.
    The one stop path for replies on every channel, so a reply by email counts exactly as
    one by text does. `lead_id`: the lead the reply is logged on, when the channel names
    it (an email to a lead's reply address); a text is logged on its number. Returns the
    leads stopped."""
    preview = (body or "").strip()[:PREVIEW_CHARS]
    lead_log.record(conn, lead_id, "inbound_reply", channel=channel, address=consent_key(channel, address),
                    leads=leads, body=preview, at=at, **detail)
    return [lead for lead in leads
            if end_lead(conn, lead, "stopped", "replied", at=at, channel=channel, body=preview, **detail)]


def unsubscribe_email(conn: psycopg.Connection, email: str, *, source: str = "list_unsubscribe",
                      at: dt.datetime | None = None) -> list[int]:
    return opt_out_contact(conn, "email", email, source=source, reason="unsubscribed", at=at)
