"""The CRM port: what the product needs from a shop-management system, in its own terms.

An adapter per CRM (`crm/shopmonkey/`, `crm/tekmetric/`) implements `CrmAdapter` and
returns the frozen objects of `lead_orchestrator.domain.estimates` (re-exported here:
`Estimate`, `Customer`, `Phone`, `Email`, `Vehicle`, ...) and the change objects below;
no CRM's JSON key is read outside its adapter. `crm/registry.py` picks a shop's adapter.
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
from lead_orchestrator.domain.estimates import (OPEN_STATUSES, STATUS_CLOSING_REASONS, Customer, Email, Estimate,
                                                EstimateStatus, Phone, PhoneKind, Vehicle, parse_stamp, stamp_key,
                                                utc_iso, version_key)

__all__ = ["OPEN_STATUSES", "STATUS_CLOSING_REASONS", "ChangeHint", "ChangeKind", "ChangeScan", "CrmAdapter",
           "Customer", "Email", "Estimate", "EstimateStatus", "InvalidWebhook", "Phone", "PhoneKind", "Vehicle",
           "kind_of_operation", "operation_of_kind", "parse_stamp", "stamp_key", "utc_iso", "version_key"]


class ChangeKind(str, enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    ANSWERED = "answered"  # the customer approved or declined jobs
    DELETED = "deleted"


# The inbox's `operation` column speaks INSERT / UPDATE / DELETE (the words of the first
# CRM's webhooks, kept for every stored event); a hint's kind maps onto them and back.
_OPERATION_KINDS = {"INSERT": ChangeKind.CREATED, "UPDATE": ChangeKind.UPDATED, "DELETE": ChangeKind.DELETED}


def kind_of_operation(operation: str | None) -> ChangeKind:
    return _OPERATION_KINDS.get(operation or "", ChangeKind.UPDATED)


def operation_of_kind(kind: ChangeKind) -> str:
    """ANSWERED is an UPDATE: the estimate is fetched again either way."""
    return {ChangeKind.CREATED: "INSERT", ChangeKind.DELETED: "DELETE"}.get(kind, "UPDATE")


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
    # Rows the CRM sent before our own filter, when the adapter counts them (far more
    # than `estimates` means the CRM ignored the filter); None when it does not.
    received: int | None = None

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

    def fetch_estimate(self, estimate_id: str, *, deadline: float | None = None,
                       hint: ChangeHint | None = None) -> Estimate:
        """The estimate as it is now, with its customer and vehicle (None when it has
        none, or they were removed, or the estimate is closed and they are not needed).
        CrmNotFound when it does not exist for this shop. `hint` is the change that asked
        for the fetch: an adapter may use it where its CRM cannot answer (ShopMonkey: the
        order a DELETE named is gone)."""
        ...

    def changes_since(self, since: dt.datetime, *, deadline: float | None = None) -> ChangeScan:
        """Every estimate whose version is at or after `since`, deletions included."""
        ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], *, url_token: str | None) -> ChangeHint | None:
        """Checks the request (InvalidWebhook if it must be refused) and reads it as a
        hint; None when it is authentic but about nothing an estimate depends on."""
        ...
