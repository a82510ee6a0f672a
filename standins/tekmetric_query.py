"""The repair-order list's query parameters, read as Tekmetric reads them.

`repairOrderStatusId` repeats (`...&repairOrderStatusId=1&repairOrderStatusId=2`; a
comma list is taken too); dates are ISO-8601 (a bare date means its midnight UTC);
`size` above 100 is cut to 100 without a word. The trap is kept: with any `deletedDate*`
filter only deleted orders match, whatever else is asked; without one, deleted orders
are left out. `search` looks at the order number only (enough for what is tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from starlette.datastructures import QueryParams

from standins.tekmetric_state import DATE_FILTERS, PAGE_DEFAULT, PAGE_MAX, TekmetricError, error_body


@dataclass(frozen=True)
class OrderQuery:
    shop_id: int
    keep: Callable[[dict], bool]
    sort: str | None
    descending: bool
    page: int
    size: int


def bad_request(message: str) -> TekmetricError:
    return TekmetricError(400, error_body(message))


def parse_moment(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name}: not an ISO-8601 date: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _int(params: QueryParams, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name}: not a number: {raw!r}") from None


def order_query(params: QueryParams) -> OrderQuery:
    shop_id = _int(params, "shop")
    if shop_id is None:
        raise bad_request("shop is required")
    windows: list[tuple[str, str, datetime]] = []  # (field, "start" | "end", moment)
    for name, column in DATE_FILTERS.items():
        if params.get(name):
            windows.append((column, "end" if name.endswith(("End", "end")) else "start",
                            parse_moment(params[name], name)))
    deleted_only = any(name.startswith("deletedDate") and params.get(name) for name in DATE_FILTERS)
    try:
        statuses = {int(part) for raw in params.getlist("repairOrderStatusId") for part in raw.split(",")
                    if part.strip()}
    except ValueError:
        raise bad_request("repairOrderStatusId: not a number") from None
    exact = {name: _int(params, name) for name in ("customerId", "vehicleId", "repairOrderNumber")}
    search = (params.get("search") or "").strip().lower()

    def keep(row: dict) -> bool:
        if (row.get("deletedDate") is not None) != deleted_only:
            return False
        if statuses and row["repairOrderStatus"]["id"] not in statuses:
            return False
        if any(value is not None and row.get(name) != value for name, value in exact.items()):
            return False
        if search and search not in str(row.get("repairOrderNumber")):
            return False
        for column, edge, moment in windows:
            if not row.get(column):
                return False
            stamp = parse_moment(row[column], column)
            if (edge == "start" and stamp < moment) or (edge == "end" and stamp > moment):
                return False
        return True

    size = _int(params, "size", PAGE_DEFAULT)
    size = PAGE_DEFAULT if size <= 0 else min(size, PAGE_MAX)  # silently capped
    direction = (params.get("sortDirection") or "ASC").upper()
    if direction not in ("ASC", "DESC"):
        raise bad_request(f"sortDirection: ASC or DESC, not {direction!r}")
    return OrderQuery(shop_id, keep, params.get("sort"), direction == "DESC", max(0, _int(params, "page", 0)), size)
