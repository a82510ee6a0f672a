"""The CRM port: what the product needs from a shop-management system, in its own terms.

An adapter per CRM (`crm/tekmetric/`, later `crm/shopmonkey/`) implements `CrmAdapter`
and returns the frozen objects below; no CRM's JSON key is read outside its adapter.
Errors crossing the port are the neutral ones of `lead_orchestrator.crm.errors`
(unauthorized, not found, rate limited, unavailable), so the retry and parking rules are
written once for every CRM. A webhook that fails its check raises `InvalidWebhook`.

Everything here is plain data and pure functions: no I/O.
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

from lead_orchestrator.crm.errors import CrmError


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
# ends the lead with the reason here (the vocabulary qualification.closing_reason uses).
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


class PhoneKind(str, enum.Enum):
    MOBILE = "mobile"
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

    @property
    def display_name(self) -> str:
        """"2018 Toyota Camry": what a customer calls the car (trim left out)."""
        return " ".join(str(p) for p in (self.year, self.make, self.model) if p)


@dataclass(frozen=True)
class Estimate:
    crm: str
    id: str
    number: str  # the number the shop and the customer see
    shop_ref: str  # the CRM's id of the shop (location) the estimate belongs to
    status: EstimateStatus
    created_at: dt.datetime  # UTC
    # UTC; the version stamp: (crm, id, updated_at) names one state of the estimate, so it
    # must move on every change the product acts on (deletion included).
    updated_at: dt.datetime
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

    @property
    def is_open(self) -> bool:
        return self.closing_reason is None and self.status in OPEN_STATUSES

    @property
    def closing_reason(self) -> str | None:
        """Why this estimate no longer needs chasing, or None. The status decides first
        (a deleted estimate is deleted even if a job was approved), then the customer's
        answer, then a booked appointment."""
        if reason := STATUS_CLOSING_REASONS.get(self.status):
            return reason
        if self.approved:
            return "authorized"
        if self.declined:
            return "declined"
        if self.appointment_at is not None:
            return "appointment_booked"
        return None

    @property
    def dedup_key(self) -> str:
        return version_key(self.crm, self.id, self.updated_at)


class ChangeKind(str, enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    ANSWERED = "answered"  # the customer approved or declined jobs
    DELETED = "deleted"


@dataclass(frozen=True)
class ChangeHint:
    """A webhook's claim that an estimate changed. Only a hint: the adapter fetches the
    estimate again before anything is decided."""

    crm: str
    estimate_id: str
    kind: ChangeKind
    updated_at: dt.datetime | None  # the version the sender saw, when it said
    created_at: dt.datetime | None = None
    description: str = ""  # the CRM's own words, for logs and `why`

    @property
    def dedup_key(self) -> str:
        """(crm, estimate, version): the same change seen twice (a duplicate webhook, or
        the webhook and the poll) has one key. Without a version, the key is the
        estimate alone (every such hint is then one re-fetch)."""
        return version_key(self.crm, self.estimate_id, self.updated_at)


def version_key(crm: str, estimate_id: str, updated_at: dt.datetime | None) -> str:
    stamp = utc_iso(updated_at) if updated_at is not None else "-"
    return f"{crm}:{estimate_id}:{stamp}"


def utc_iso(moment: dt.datetime) -> str:
    """One spelling of a moment (UTC, milliseconds, Z), so equal moments give equal keys."""
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ChangeScan:
    """What changed since a watermark: estimates without customer or vehicle (a poll
    stores them as hints), oldest version first, each (id, updated_at) once."""

    estimates: tuple[Estimate, ...]
    requests: int  # requests made, retries included
    # Every change stamped before this moment has been read: the next watermark. None
    # when the scan can vouch for nothing beyond the one it started from.
    read_below: dt.datetime | None
    error: CrmError | None = None  # set when the scan stopped early (what it read is kept)
    malformed: tuple[str, ...] = ()  # rows skipped because they could not be read, with why

    @property
    def complete(self) -> bool:
        return self.error is None


class InvalidWebhook(ValueError):
    """A webhook request that must be refused; `status` is the HTTP answer to give
    (401 wrong or missing URL token, 400 a body that is not the CRM's envelope)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class CrmAdapter(Protocol):
    """One shop's connection to its CRM. `deadline` is a time.monotonic() value bounding
    the call, waits included."""

    crm: str

    def fetch_estimate(self, estimate_id: str, *, deadline: float | None = None) -> Estimate:
        """The estimate as it is now, with its customer and vehicle (None when it has
        none, or they were removed). CrmNotFound when it does not exist for this shop."""
        ...

    def changes_since(self, since: dt.datetime, *, deadline: float | None = None) -> ChangeScan:
        """Every estimate whose version is at or after `since`, deletions included."""
        ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], *, url_token: str | None) -> ChangeHint | None:
        """Checks the request (InvalidWebhook if it must be refused) and reads it as a
        hint; None when it is authentic but about nothing an estimate depends on."""
        ...
