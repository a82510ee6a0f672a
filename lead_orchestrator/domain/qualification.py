"""Which estimates become leads, and how each customer may be reached.

Pure functions over the domain's `Estimate` and `Customer` (whatever CRM they came
from), unit-tested without a database. Consent the CRM states is obeyed (a ShopMonkey
phone without `optIn` is not texted); consent it does not state (None: Tekmetric has no
such field) is not read as a no — our own ledger of opt-outs (STOP, unsubscribe) decides
at send time.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lead_orchestrator.domain.estimates import OPEN_STATUSES, Customer, Estimate, PhoneKind
from lead_orchestrator.domain.estimates import parse_stamp as parse_time  # noqa: F401 - kept for its callers

# A phone whose kind the CRM did not record may be a mobile, so it is texted (as
# ShopMonkey numbers without a type always were).
TEXTABLE = frozenset({PhoneKind.MOBILE, PhoneKind.UNKNOWN})


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


def closing_reason(estimate: Estimate) -> str | None:
    """Why an estimate no longer needs chasing (approved, booked, closed), or None."""
    return estimate.closing_reason


def reachability(customer: Customer) -> Reachability:
    """Picks the phone and email to use: the customer's primary ones (for a ShopMonkey
    estimate, the ones the order chose), honouring stated consent and the preferred
    contact method."""
    notes: list[str] = []
    phone = None
    chosen = customer.primary_phone
    if chosen is None:
        notes.append("sms:" + _missing(customer, "phone", customer.phones, "no_phone", "invalid_number"))
    elif chosen.kind not in TEXTABLE:
        notes.append(f"sms:not_mobile({chosen.kind.value})")
    elif chosen.sms_consent is False:
        notes.append("sms:no_opt_in")
    else:
        phone = chosen.number

    email = None
    address = customer.primary_email
    if address is None:
        notes.append("email:" + _missing(customer, "email", customer.emails, "no_email", "invalid_address"))
    elif address.consent is False:
        notes.append("email:unsubscribed")
    else:
        email = address.address

    # The preference chooses the channel; when that channel is unreachable we still use
    # the other one rather than leave the customer without an answer.
    if customer.preferred_channel == "sms" and phone and email:
        email, notes = None, notes + ["email:prefers_sms"]
    elif customer.preferred_channel == "email" and phone and email:
        phone, notes = None, notes + ["sms:prefers_email"]
    return Reachability(phone=phone, email=email, notes=tuple(notes))


def _missing(customer: Customer, channel: str, kept: tuple, none: str, invalid: str) -> str:
    """Why there is no address to use: several and none primary, one the CRM holds but
    that does not parse, or none at all."""
    if kept:
        return "no_primary"
    if any(u.startswith(f"{channel}:{invalid}") for u in customer.unusable):
        return invalid
    return none


def qualify(estimate: Estimate, *, now: dt.datetime, max_age_days: int) -> Qualification:
    empty = Reachability(None, None)
    reason = estimate.closing_reason
    if estimate.status not in OPEN_STATUSES and reason is None:
        return Qualification(False, f"status:{estimate.crm_status or estimate.status.value}", empty)
    if reason:
        return Qualification(False, reason, empty)
    if estimate.created_at is None:
        return Qualification(False, "no_created_date", empty)
    if now - estimate.created_at > dt.timedelta(days=max_age_days):
        return Qualification(False, "too_old", empty)
    if estimate.customer is None:
        return Qualification(False, "no_customer", empty)
    reach = reachability(estimate.customer)
    if not reach.channels:
        return Qualification(False, "no_contact", reach)
    return Qualification(True, "qualified", reach)
