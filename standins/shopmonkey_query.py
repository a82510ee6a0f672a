"""ShopMonkey's list query language as integrators observed it: Prisma-style `where`,
lowercase `orderby`. Anything it does not know (operator, field, lowercase and/or) is
silently ignored, i.e. that clause matches every row — reproduced on purpose."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

ORDER_FIELDS = frozenset({
    "id", "number", "status", "workflowStatusId", "customerId", "vehicleId", "companyId",
    "locationId", "authorized", "authorizedDate", "invoiced", "paid", "archived", "deleted",
    "appointmentDates", "totalCostCents", "generatedCustomerName", "generatedVehicleName",
    "complaint", "phoneNumberId", "emailId", "createdDate", "updatedDate", "messageCount",
})
DATE_FIELDS = frozenset({"createdDate", "updatedDate", "authorizedDate"})


def matches(row: dict, where: Any) -> bool:
    if not isinstance(where, dict):
        return True
    for key, cond in where.items():
        if key in ("AND", "OR"):
            subs = cond if isinstance(cond, list) else [cond]
            results = [matches(row, s) for s in subs]
            # Prisma: an empty OR matches nothing, an empty AND everything.
            if not (all(results) if key == "AND" else any(results)):
                return False
        elif key in ORDER_FIELDS:
            if not _field_matches(row.get(key), cond, key in DATE_FIELDS):
                return False
    return True


def _field_matches(value: Any, cond: Any, is_date: bool) -> bool:
    if not isinstance(cond, dict):
        return _equal(value, cond, is_date)  # shorthand {"status": "Estimate"}
    for op, arg in cond.items():
        if op == "equals":
            ok = _equal(value, arg, is_date)
        elif op in ("gt", "gte", "lt", "lte"):
            ok = _compare(value, arg, op, is_date)
        elif op == "in":
            ok = not isinstance(arg, list) or any(_equal(value, a, is_date) for a in arg)
        elif op == "not":
            ok = not _field_matches(value, arg, is_date)
        else:
            continue  # unknown operator: ignored
        if not ok:
            return False
    return True


def _as_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)  # naive means UTC


def _equal(value: Any, arg: Any, is_date: bool) -> bool:
    if is_date and value is not None and arg is not None:
        a, b = _as_datetime(value), _as_datetime(arg)
        if a is not None and b is not None:
            return a == b
    return value == arg


def _compare(value: Any, arg: Any, op: str, is_date: bool) -> bool:
    if is_date:
        value, arg = _as_datetime(value), _as_datetime(arg)
    if value is None or arg is None or isinstance(value, bool) != isinstance(arg, bool):
        return False
    try:
        return {"gt": value > arg, "gte": value >= arg, "lt": value < arg, "lte": value <= arg}[op]
    except TypeError:  # e.g. a naive and an aware datetime, or a str against a number
        return False


def sort_rows(rows: list[dict], orderby: Any) -> list[dict]:
    """Apply {"field": "asc"|"desc"} (or a list of such); unknown fields are ignored."""
    specs = orderby if isinstance(orderby, list) else [orderby]
    keys = [(f, d.lower()) for s in specs if isinstance(s, dict) for f, d in s.items()
            if f in ORDER_FIELDS and isinstance(d, str) and d.lower() in ("asc", "desc")]
    for field, direction in reversed(keys):  # stable sorts, least significant key first
        present = [r for r in rows if r.get(field) is not None]
        missing = [r for r in rows if r.get(field) is None]
        present.sort(key=lambda r: _sort_value(r[field], field), reverse=direction == "desc")
        rows = present + missing  # nulls last, as PostgreSQL does for asc
    return rows


def _sort_value(value: Any, field: str) -> Any:
    if field in DATE_FIELDS:
        parsed = _as_datetime(value)
        return parsed.timestamp() if parsed else float("-inf")
    return value
