"""Which ShopMonkey orders become leads, and how each customer may be reached.

Pure functions over the API's JSON (dicts), unit-tested without a database.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from lead_orchestrator.domain.contact_points import normalize_email, normalize_phone

Json = dict[str, Any]


@dataclass(frozen=True)
class Reachability:
    phone: str | None  # E.164, set only when texting is allowed
    email: str | None  # set only when emailing is allowed
    notes: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c for c, a in (("sms", self.phone), ("email", self.email)) if a)


@dataclass(frozen=True)
class Qualification:
    qualified: bool
    reason: str  # "qualified" or why not
    reach: Reachability


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def closing_reason(order: Json) -> str | None:
    """Why an order no longer needs chasing (approved, booked, closed), or None."""
    if order.get("deleted"):
        return "deleted"
    if order.get("archived"):
        return "archived"
    if order.get("paid"):
        return "paid"
    if order.get("invoiced") or order.get("status") == "Invoice":
        return "invoiced"
    if order.get("authorized"):
        return "authorized"
    if order.get("status") == "RepairOrder":
        return "became_repair_order"
    if order.get("appointmentDates"):
        return "appointment_booked"
    return None


def reachability(order: Json, customer: Json) -> Reachability:
    """Picks the phone and email to use, honouring the order's overrides, the primary
    flags, consent (phone optIn, email subscribed) and the preferred contact method."""
    notes: list[str] = []
    phone_row = _pick(customer.get("phoneNumbers") or [], order.get("phoneNumberId"))
    email_row = _pick(customer.get("emails") or [], order.get("emailId"))

    phone = None
    if phone_row is None:
        notes.append("sms:no_phone")
    elif phone_row.get("type") not in (None, "Mobile"):
        notes.append(f"sms:not_mobile({phone_row.get('type')})")
    elif not phone_row.get("optIn"):
        notes.append("sms:no_opt_in")
    elif (phone := normalize_phone(phone_row.get("number"))) is None:
        notes.append("sms:invalid_number")

    email = None
    if email_row is None:
        notes.append("email:no_email")
    elif not email_row.get("subscribed"):
        notes.append("email:unsubscribed")
    elif (email := normalize_email(email_row.get("email"))) is None:
        notes.append("email:invalid_address")

    preferred = customer.get("preferredContactMethod")
    # The preference chooses the channel; when that channel is unreachable we still use
    # the other one rather than leave the customer without an answer.
    if preferred == "SMS" and phone and email:
        email, notes = None, notes + ["email:prefers_sms"]
    elif preferred == "Email" and phone and email:
        phone, notes = None, notes + ["sms:prefers_email"]
    return Reachability(phone=phone, email=email, notes=tuple(notes))


def _pick(rows: list[Json], override_id: str | None) -> Json | None:
    if override_id:
        for row in rows:
            if row.get("id") == override_id:
                return row
    for row in rows:
        if row.get("primary"):
            return row
    return rows[0] if len(rows) == 1 else None


def qualify(order: Json, customer: Json | None, *, now: dt.datetime, max_age_days: int) -> Qualification:
    empty = Reachability(None, None)
    if order.get("status") != "Estimate" and not closing_reason(order):
        return Qualification(False, f"status:{order.get('status')}", empty)
    if reason := closing_reason(order):
        return Qualification(False, reason, empty)
    created = parse_time(order.get("createdDate"))
    if created is None:
        return Qualification(False, "no_created_date", empty)
    if now - created > dt.timedelta(days=max_age_days):
        return Qualification(False, "too_old", empty)
    if not customer:
        return Qualification(False, "no_customer", empty)
    reach = reachability(order, customer)
    if not reach.channels:
        return Qualification(False, "no_contact", reach)
    return Qualification(True, "qualified", reach)
