"""Tekmetric JSON → the port's domain objects. Pure functions, no I/O.

Choices made here (docs/tekmetric.md explains them at more length):

- Status by `repairOrderStatus.id` (codes other than WORKINPROGRESS are not published):
  1 Estimate → ESTIMATE; 2 Work-in-Progress → IN_PROGRESS; 3 Complete → COMPLETED;
  4 Saved for Later → PUT_ASIDE; 5 Posted → INVOICED; 6 Accounts Receivable →
  AWAITING_PAYMENT; 7 Deleted → DELETED; a `deletedDate` means DELETED whatever the id.
- **4 Saved for Later stays a lead.** A service writer saves an estimate for later when
  the customer has not said yes or no: "let me think about it". That is the customer the
  follow-up sequence exists for, so PUT_ASIDE is an open status: it qualifies when first
  seen and does not stop a running sequence. A job approved or declined still stops it,
  as does any later status. Closing it instead would silence exactly the leads most
  worth a follow-up; the price of this choice is at most a polite message the customer
  can answer STOP to.
- `jobs[].authorized`: true on any job → approved, false on any job → declined, null →
  not answered yet.
- `okForMarketing` is marketing consent only. Tekmetric has no SMS opt-in field, so each
  phone's `sms_consent` is None (our own ledger decides), whatever `okForMarketing` says.
- Money (`totalSales`) is integer cents already; anything but an integral number is
  treated as unknown rather than guessed at.
- The version stamp (`Estimate.updated_at`) is the later of `updatedDate` and
  `deletedDate`: nothing says a deletion moves `updatedDate`, and a deletion under the
  previous version's key would be dropped as a duplicate.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from lead_orchestrator.domain.contact_points import normalize_email, normalize_phone
from lead_orchestrator.crm.base import Customer, Email, Estimate, EstimateStatus, Phone, PhoneKind, Vehicle
from lead_orchestrator.crm.errors import CrmError

CRM = "tekmetric"
Json = dict[str, Any]

STATUS_BY_ID: dict[int, EstimateStatus] = {
    1: EstimateStatus.ESTIMATE,
    2: EstimateStatus.IN_PROGRESS,
    3: EstimateStatus.COMPLETED,
    4: EstimateStatus.PUT_ASIDE,
    5: EstimateStatus.INVOICED,
    6: EstimateStatus.AWAITING_PAYMENT,
    7: EstimateStatus.DELETED,
}
# The status ids a list query names for "still an estimate" (repeatable filter).
OPEN_STATUS_IDS = tuple(i for i, s in STATUS_BY_ID.items() if s in (EstimateStatus.ESTIMATE, EstimateStatus.PUT_ASIDE))

_PHONE_KINDS = {"cell": PhoneKind.MOBILE, "mobile": PhoneKind.MOBILE, "cellular": PhoneKind.MOBILE,
                "home": PhoneKind.HOME, "work": PhoneKind.WORK, "business": PhoneKind.WORK,
                "office": PhoneKind.WORK}


def parse_time(value: Any, what: str) -> dt.datetime:
    """An ISO-8601 stamp as an aware UTC datetime (a stamp without an offset is UTC)."""
    if not isinstance(value, str) or not value:
        raise CrmError(f"Tekmetric {what}: missing or not a date ({value!r})")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CrmError(f"Tekmetric {what}: not an ISO-8601 date ({value!r})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _optional_time(value: Any, what: str) -> dt.datetime | None:
    return None if value in (None, "") else parse_time(value, what)


def _ref(value: Any) -> str | None:
    """Tekmetric ids are integers; the port's are strings. 0 and empty mean none."""
    if value in (None, "", 0) or isinstance(value, bool):
        return None
    return str(value)


def cents(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def status_of(order: Json) -> EstimateStatus:
    if order.get("deletedDate"):
        return EstimateStatus.DELETED
    status = order.get("repairOrderStatus")
    status_id = status.get("id") if isinstance(status, dict) else order.get("repairOrderStatusId")
    try:
        return STATUS_BY_ID.get(int(status_id), EstimateStatus.UNKNOWN)
    except (TypeError, ValueError):
        return EstimateStatus.UNKNOWN


def version_of(order: Json, what: str) -> dt.datetime | None:
    """The stamp naming this state of the order: `updatedDate` (else `createdDate`), or
    `deletedDate` when later. None when the order carries no stamp at all."""
    stamps = [parse_time(order[k], f"{what} {k}") for k in ("updatedDate", "deletedDate") if order.get(k)]
    if not order.get("updatedDate") and order.get("createdDate"):
        stamps.append(parse_time(order["createdDate"], f"{what} createdDate"))
    return max(stamps) if stamps else None


def parse_repair_order(order: Any, customer: Customer | None = None, vehicle: Vehicle | None = None) -> Estimate:
    if not isinstance(order, dict) or _ref(order.get("id")) is None:
        raise CrmError("Tekmetric repair order: not an object with an id")
    what = f"repair order {order['id']}"
    created = parse_time(order.get("createdDate"), f"{what} createdDate")
    updated = version_of(order, what)
    deleted = _optional_time(order.get("deletedDate"), f"{what} deletedDate")
    jobs = [j for j in order.get("jobs") or [] if isinstance(j, dict)]
    answers = [j for j in jobs if j.get("authorized") is not None]
    answered = [t for j in answers if (t := _optional_time(j.get("authorizedDate"), f"{what} authorizedDate"))]
    return Estimate(
        crm=CRM,
        id=str(order["id"]),
        number=str(order.get("repairOrderNumber") or order["id"]),
        shop_ref=_ref(order.get("shopId")) or "",
        status=status_of(order),
        created_at=created,
        updated_at=updated,
        total_cents=cents(order.get("totalSales")),
        customer_id=_ref(order.get("customerId")),
        vehicle_id=_ref(order.get("vehicleId")),
        approved=any(j["authorized"] is True for j in answers),
        declined=any(j["authorized"] is False for j in answers),
        answered_at=max(answered) if answered else None,
        appointment_at=_optional_time(order.get("appointmentStartTime"), f"{what} appointmentStartTime"),
        deleted_at=deleted,
        customer=customer,
        vehicle=vehicle,
    )


def phone_kind(value: Any) -> PhoneKind:
    if not isinstance(value, str) or not value.strip():
        return PhoneKind.UNKNOWN
    return _PHONE_KINDS.get(value.strip().lower(), PhoneKind.OTHER)


def parse_customer(customer: Any) -> Customer:
    if not isinstance(customer, dict) or _ref(customer.get("id")) is None:
        raise CrmError("Tekmetric customer: not an object with an id")
    unusable: list[str] = []
    phones: dict[str, Phone] = {}
    for row in customer.get("phone") or []:
        if not isinstance(row, dict):
            continue
        kind = phone_kind(row.get("type"))
        number = normalize_phone(row.get("number") if isinstance(row.get("number"), str) else None)
        if number is None:
            unusable.append(f"phone:invalid_number({kind.value})")
            continue
        primary = row.get("primary") is True
        if number in phones:  # the same number typed twice: keep one, primary if either is
            primary = primary or phones[number].primary
            kind = phones[number].kind if phones[number].kind != PhoneKind.UNKNOWN else kind
        phones[number] = Phone(number=number, kind=kind, primary=primary, sms_consent=None)
    emails: list[Email] = []
    for i, raw in enumerate(_email_strings(customer.get("email"))):
        address = normalize_email(raw)
        if address is None:
            unusable.append("email:invalid_address")
        elif address not in (e.address for e in emails):
            emails.append(Email(address=address, primary=i == 0, consent=None))
    marketing = customer.get("okForMarketing")
    return Customer(
        crm=CRM,
        id=str(customer["id"]),
        first_name=_text(customer.get("firstName")),
        last_name=_text(customer.get("lastName")),
        company_name=None,  # Tekmetric names a business customer in firstName/lastName
        phones=tuple(phones.values()),
        emails=tuple(emails),
        marketing_opt_in=marketing if isinstance(marketing, bool) else None,
        unusable=tuple(unusable),
    )


def _email_strings(value: Any) -> list[str]:
    """`email` is a string when read (an array when written); a string may hold several
    addresses separated by commas or semicolons. The first one is the primary."""
    items = value if isinstance(value, list) else [value]
    return [part.strip() for item in items if isinstance(item, str) for part in re.split(r"[,;]", item)
            if part.strip()]


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def parse_vehicle(vehicle: Any) -> Vehicle:
    if not isinstance(vehicle, dict) or _ref(vehicle.get("id")) is None:
        raise CrmError("Tekmetric vehicle: not an object with an id")
    year = vehicle.get("year")
    try:
        year = int(year) if year not in (None, "") and not isinstance(year, bool) else None
    except (TypeError, ValueError):
        year = None
    return Vehicle(crm=CRM, id=str(vehicle["id"]), year=year or None, make=_text(vehicle.get("make")),
                   model=_text(vehicle.get("model")), sub_model=_text(vehicle.get("subModel")))
