"""The estimate, its customer and its vehicle as the product sees them, whatever the CRM.

Each CRM adapter (`lead_orchestrator/crm/<crm>/`) turns its CRM's JSON into these frozen
objects; the rules (qualification, closing a lead) read nothing else. They live in the
domain, not beside the CRM port (`crm/base.py`, which re-exports them), because the
domain imports nothing outside itself.

Plain data and pure functions: no I/O.
"""
from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Mapping


class EstimateStatus(str, enum.Enum):
    """Where an estimate stands, whatever the CRM calls it."""

    ESTIMATE = "estimate"  # written, waiting for the customer: the lead
    PUT_ASIDE = "put_aside"  # parked by the shop without an answer (e.g. Tekmetric "Saved for Later")
    IN_PROGRESS = "in_progress"  # became a repair order: work has started
    COMPLETED = "completed"  # work done
    INVOICED = "invoiced"  # posted / invoiced
    AWAITING_PAYMENT = "awaiting_payment"  # invoiced, balance open (accounts receivable)
    PAID = "paid"
    ARCHIVED = "archived"
    DELETED = "deleted"
    UNKNOWN = "unknown"  # a status this adapter does not know: not a lead, not a stop


# Open statuses are the ones a follow-up sequence may run in; every other known status
# ends the lead with the reason here (the vocabulary `Estimate.closing_reason` writes).
OPEN_STATUSES = frozenset({EstimateStatus.ESTIMATE, EstimateStatus.PUT_ASIDE})
STATUS_CLOSING_REASONS: Mapping[EstimateStatus, str] = {
    EstimateStatus.DELETED: "deleted",
    EstimateStatus.ARCHIVED: "archived",
    EstimateStatus.PAID: "paid",
    EstimateStatus.AWAITING_PAYMENT: "invoiced",
    EstimateStatus.INVOICED: "invoiced",
    EstimateStatus.COMPLETED: "completed",
    EstimateStatus.IN_PROGRESS: "became_repair_order",
}
# Statuses that say more than the customer's answer (gone, or money changed hands); the
# others (work started or done) say less: an approval that turned the estimate into a
# repair order is recorded as the approval.
_FINAL_STATUSES = frozenset({EstimateStatus.DELETED, EstimateStatus.ARCHIVED, EstimateStatus.PAID,
                             EstimateStatus.AWAITING_PAYMENT, EstimateStatus.INVOICED})


class PhoneKind(str, enum.Enum):
    MOBILE = "mobile"
    LANDLINE = "landline"
    VOIP = "voip"
    HOME = "home"
    WORK = "work"
    OTHER = "other"
    UNKNOWN = "unknown"  # the CRM did not say


@dataclass(frozen=True)
class Phone:
    number: str  # E.164; numbers that do not parse are not kept (see Customer.unusable)
    kind: PhoneKind
    primary: bool
    # True/False when the CRM records SMS consent for this number; None when it has no
    # such field (Tekmetric): then our own ledger (STOP/START, replies) decides.
    sms_consent: bool | None


@dataclass(frozen=True)
class Email:
    address: str  # normalised (domain lower-cased)
    primary: bool
    consent: bool | None  # None: the CRM records no email consent


@dataclass(frozen=True)
class Customer:
    crm: str
    id: str
    first_name: str | None
    last_name: str | None
    company_name: str | None
    phones: tuple[Phone, ...]
    emails: tuple[Email, ...]
    # Consent to *marketing*, as the CRM records it. Never read as SMS consent: a first
    # answer to the customer's own estimate is not marketing, and a "no" here does not
    # mean "do not text me about my car".
    marketing_opt_in: bool | None
    # Why a contact point the CRM holds was not kept, without the address itself
    # (e.g. "phone:invalid_number(home)"): shown by `why`, safe to log.
    unusable: tuple[str, ...] = ()
    # The channel the customer asked to be reached by ("sms" or "email"); None when they
    # did not say (or said "any").
    preferred_channel: str | None = None

    @property
    def display_name(self) -> str:
        name = " ".join(p for p in (self.first_name, self.last_name) if p)
        return name or self.company_name or ""

    @property
    def primary_phone(self) -> Phone | None:
        return _primary(self.phones)

    @property
    def primary_email(self) -> Email | None:
        return _primary(self.emails)


def _primary(items: tuple) -> object | None:
    """The one flagged primary, else the only one, else none (a guess would be worse)."""
    for item in items:
        if item.primary:
            return item
    return items[0] if len(items) == 1 else None


@dataclass(frozen=True)
class Vehicle:
    crm: str
    id: str
    year: int | None
    make: str | None
    model: str | None
    sub_model: str | None = None
    name: str | None = None  # the CRM's own name for the car, when it gives one (e.g. ShopMonkey's)

    @property
    def display_name(self) -> str:
        """"2018 Toyota Camry": what a customer calls the car (trim left out); the CRM's
        own name when the parts are unknown."""
        return " ".join(str(p) for p in (self.year, self.make, self.model) if p) or self.name or ""


@dataclass(frozen=True)
class Estimate:
    crm: str
    id: str
    number: str  # the number the shop and the customer see ("" when unknown)
    shop_ref: str  # the CRM's id of the shop (location) the estimate belongs to
    status: EstimateStatus
    created_at: dt.datetime | None  # UTC; None only when the CRM gave no creation date
    # UTC; the version stamp: (crm, id, updated_at) names one state of the estimate, so it
    # must move on every change the product acts on (deletion included). None only when
    # the CRM gave no stamp at all.
    updated_at: dt.datetime | None
    total_cents: int | None
    customer_id: str | None
    vehicle_id: str | None
    approved: bool = False  # the customer approved at least one job
    declined: bool = False  # the customer declined at least one job
    answered_at: dt.datetime | None = None  # newest approval/decline, when the CRM says
    appointment_at: dt.datetime | None = None
    deleted_at: dt.datetime | None = None
    customer: Customer | None = None
    vehicle: Vehicle | None = None
    crm_status: str | None = None  # the CRM's own name for the status, for `why` and logs

    @property
    def is_open(self) -> bool:
        return self.closing_reason is None and self.status in OPEN_STATUSES

    @property
    def closing_reason(self) -> str | None:
        """Why this estimate no longer needs chasing, or None. A final status decides
        first (a deleted estimate is deleted even if a job was approved), then an
        approval, then work started or done, then a decline, then a booked appointment."""
        if self.status in _FINAL_STATUSES:
            return STATUS_CLOSING_REASONS[self.status]
        if self.approved:
            return "authorized"
        if reason := STATUS_CLOSING_REASONS.get(self.status):
            return reason
        if self.declined:
            return "declined"
        if self.appointment_at is not None:
            return "appointment_booked"
        return None

    @property
    def dedup_key(self) -> str:
        return version_key(self.crm, self.id, self.updated_at)


def version_key(crm: str, estimate_id: str, updated_at: dt.datetime | None) -> str:
    stamp = utc_iso(updated_at) if updated_at is not None else "-"
    return f"{crm}:{estimate_id}:{stamp}"


def utc_iso(moment: dt.datetime) -> str:
    """One spelling of a moment (UTC, milliseconds, Z), so equal moments give equal keys."""
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# An ISO-8601 date and time, as CRMs send them. sql/0016_inbox_crm.sql reads old inbox
# keys with the same pattern: change both or neither.
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")
# utc_iso's own spelling (ShopMonkey's, as it happens): such a stamp is its own key, read
# without parsing on the receiver's hot path (a date that does not exist is kept as text
# either way).
_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def parse_stamp(value: object) -> dt.datetime | None:
    """A CRM's date-time text as an aware UTC datetime (no offset means UTC; digits past
    the microsecond are dropped), or None when it is not one."""
    if not isinstance(value, str) or not _STAMP.fullmatch(value.strip()):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:  # e.g. month 13
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def stamp_key(value: str | None) -> str:
    """The spelling of a version stamp inside an inbox key: `utc_iso` of the moment when
    the text is a date-time (so "…11Z" and "…11.000Z" are one change), else the text."""
    if value and _CANONICAL.fullmatch(value):
        return value
    moment = parse_stamp(value)
    return utc_iso(moment) if moment is not None else (value or "")
