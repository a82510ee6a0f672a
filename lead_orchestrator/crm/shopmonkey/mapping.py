"""ShopMonkey JSON → the domain's estimate, customer and vehicle. Pure functions, no I/O.

These are the rules the product applied to ShopMonkey's dicts before the CRM port
existed, unchanged (docs/crm.md lists them beside Tekmetric's):

- Status: the order's flags decide before its `status`, in this order: `deleted` →
  DELETED, `archived` → ARCHIVED, `paid` → PAID, `invoiced` (or status `Invoice`) →
  INVOICED; then status `RepairOrder` → IN_PROGRESS, `Estimate` → ESTIMATE, anything else
  → UNKNOWN (its name kept in `crm_status`). `authorized` → approved (ShopMonkey records
  no decline). A non-empty `appointmentDates` → booked.
- Contact: the order's `phoneNumberId` / `emailId` choose the phone and email for this
  estimate; without them the customer's primary, else their only one. The `Customer`
  returned for an estimate holds **only the chosen phone and email** (flagged primary):
  no rule can fall back to a number the shop did not pick, and a customer with several
  numbers and none chosen has none to use.
- Consent: `optIn` on the phone → `sms_consent`, `subscribed` on the email → `consent`.
  ShopMonkey has both fields, so an absent or false value is an explicit no (False),
  never "not stated" (None).
- Phone `type`: Mobile, Landline, VoIP, Other; no type → UNKNOWN, which may be texted.
- `preferredContactMethod`: SMS → "sms", Email → "email", All or none → None.
- Money: `totalCostCents`, integer cents. Stamps: `createdDate`, `updatedDate` (both
  nullable); the version is `updatedDate`, else `createdDate`.
- The vehicle's name: the order's `generatedVehicleName` when it has one (no vehicle
  fetch), else year, make and model of the fetched vehicle.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from lead_orchestrator.crm.base import (ChangeHint, Customer, Email, Estimate, EstimateStatus, Phone, PhoneKind,
                                        Vehicle, kind_of_operation, parse_stamp)
from lead_orchestrator.crm.errors import CrmError
from lead_orchestrator.domain.contact_points import normalize_email, normalize_phone

CRM = "shopmonkey"
ESTIMATE_TABLE = "order"  # the webhook `table` whose rows are estimates
Json = Mapping[str, Any]

_STATUS = {"Estimate": EstimateStatus.ESTIMATE, "RepairOrder": EstimateStatus.IN_PROGRESS,
           "Invoice": EstimateStatus.INVOICED}
_PHONE_KINDS = {"Mobile": PhoneKind.MOBILE, "Landline": PhoneKind.LANDLINE, "VoIP": PhoneKind.VOIP}
_PREFERRED = {"SMS": "sms", "Email": "email"}


def status_of(order: Json) -> EstimateStatus:
    for flag, status in (("deleted", EstimateStatus.DELETED), ("archived", EstimateStatus.ARCHIVED),
                         ("paid", EstimateStatus.PAID), ("invoiced", EstimateStatus.INVOICED)):
        if order.get(flag):
            return status
    return _STATUS.get(order.get("status"), EstimateStatus.UNKNOWN)


def version_of(order: Json) -> dt.datetime | None:
    return parse_stamp(order.get("updatedDate")) or parse_stamp(order.get("createdDate"))


def order_id(order: Any) -> str:
    if not isinstance(order, Mapping) or not _text(order.get("id")):
        raise CrmError("ShopMonkey order: not an object with an id")
    return str(order["id"]).strip()


def parse_order(order: Any, *, deleted: bool = False) -> Estimate:
    """The order as an estimate, without customer or vehicle. `deleted`: the order is
    known to be deleted whatever it says (a DELETE webhook named it)."""
    estimate_id = order_id(order)
    created = parse_stamp(order.get("createdDate"))
    updated = version_of(order)
    status = EstimateStatus.DELETED if deleted else status_of(order)
    return Estimate(
        crm=CRM,
        id=estimate_id,
        number=_text(order.get("number")) or "",
        shop_ref=_text(order.get("locationId")) or _text(order.get("companyId")) or "",
        status=status,
        created_at=created,
        updated_at=updated,
        total_cents=_cents(order.get("totalCostCents")),
        customer_id=_text(order.get("customerId")),
        vehicle_id=_text(order.get("vehicleId")),
        approved=bool(order.get("authorized")),
        answered_at=parse_stamp(order.get("authorizedDate")) if order.get("authorized") else None,
        appointment_at=_appointment(order.get("appointmentDates"), updated or created),
        deleted_at=updated if status is EstimateStatus.DELETED else None,
        vehicle=vehicle_named_by(order),
        crm_status=_text(order.get("status")),
    )


def _appointment(dates: Any, fallback: dt.datetime | None) -> dt.datetime | None:
    """The earliest booked date. A list whose dates cannot be read still means booked:
    it is stamped with the order's version (or the epoch) rather than dropped."""
    if not dates:
        return None
    moments = [m for d in (dates if isinstance(dates, list) else [dates]) if (m := parse_stamp(d))]
    return min(moments) if moments else (fallback or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))


def needs_vehicle_fetch(order: Json) -> bool:
    """The order names its vehicle already (generatedVehicleName): fetching the vehicle
    as well would spend one more call per lead of a rate-limited API."""
    return bool(order.get("vehicleId")) and not order.get("generatedVehicleName")


def vehicle_named_by(order: Json) -> Vehicle | None:
    name = _text(order.get("generatedVehicleName"))
    if name is None:
        return None
    return Vehicle(crm=CRM, id=_text(order.get("vehicleId")) or "", year=None, make=None, model=None, name=name)


def parse_vehicle(vehicle: Any) -> Vehicle:
    if not isinstance(vehicle, Mapping) or not _text(vehicle.get("id")):
        raise CrmError("ShopMonkey vehicle: not an object with an id")
    year = _text(vehicle.get("year"))
    return Vehicle(crm=CRM, id=str(vehicle["id"]), year=int(year) if year and year.isdigit() and int(year) else None,
                   make=_text(vehicle.get("make")), model=_text(vehicle.get("model")),
                   sub_model=_text(vehicle.get("submodel")))


def contact_choice(order: Json) -> tuple[str | None, str | None]:
    """The phone and email ids the order chose (override the customer's defaults)."""
    return _text(order.get("phoneNumberId")), _text(order.get("emailId"))


def parse_customer(customer: Any, *, phone_id: str | None = None, email_id: str | None = None) -> Customer:
    """The customer as one estimate sees them: only the phone and email chosen for it."""
    if not isinstance(customer, Mapping) or not _text(customer.get("id")):
        raise CrmError("ShopMonkey customer: not an object with an id")
    unusable: list[str] = []
    phones: tuple[Phone, ...] = ()
    if (row := _pick(customer.get("phoneNumbers"), phone_id)) is not None:
        kind = _PHONE_KINDS.get(row.get("type"), PhoneKind.UNKNOWN if row.get("type") is None else PhoneKind.OTHER)
        number = normalize_phone(row.get("number") if isinstance(row.get("number"), str) else None)
        if number is None:
            unusable.append(f"phone:invalid_number({kind.value})")
        else:
            phones = (Phone(number=number, kind=kind, primary=True, sms_consent=bool(row.get("optIn"))),)
    emails: tuple[Email, ...] = ()
    if (row := _pick(customer.get("emails"), email_id)) is not None:
        address = normalize_email(row.get("email") if isinstance(row.get("email"), str) else None)
        if address is None:
            unusable.append("email:invalid_address")
        else:
            emails = (Email(address=address, primary=True, consent=bool(row.get("subscribed"))),)
    marketing = customer.get("marketingOptIn")
    return Customer(
        crm=CRM,
        id=str(customer["id"]),
        first_name=_text(customer.get("firstName")),
        last_name=_text(customer.get("lastName")),
        company_name=_text(customer.get("companyName")),
        phones=phones,
        emails=emails,
        marketing_opt_in=marketing if isinstance(marketing, bool) else None,
        unusable=tuple(unusable),
        preferred_channel=_PREFERRED.get(customer.get("preferredContactMethod")),
    )


def _pick(rows: Any, chosen_id: str | None) -> Json | None:
    """The row the order chose, else the one flagged primary, else the only one."""
    rows = [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []
    if chosen_id:
        for row in rows:
            if row.get("id") == chosen_id:
                return row
    for row in rows:
        if row.get("primary"):
            return row
    return rows[0] if len(rows) == 1 else None


def hint_from_envelope(envelope: Any, *, estimate_id: str | None = None, operation: str | None = None) -> ChangeHint:
    """A webhook body (`{"operation", "table", "data": <row>}`, as ShopMonkey sends it
    and as older polls stored it) read as a hint. Lenient: it reads stored events, which
    were checked when they arrived; what is missing is taken from the event's columns."""
    envelope = envelope if isinstance(envelope, Mapping) else {}
    data = envelope.get("data") if isinstance(envelope.get("data"), Mapping) else {}
    operation = _text(envelope.get("operation")) or operation or "UPDATE"
    return ChangeHint(
        crm=CRM,
        estimate_id=_text(data.get("id")) or estimate_id or "",
        kind=kind_of_operation(operation),
        updated_at=parse_stamp(data.get("updatedDate")),
        created_at=parse_stamp(data.get("createdDate")),
        description=f"{operation} {envelope.get('table') or ESTIMATE_TABLE}"[:200],
    )


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


def _cents(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None
