"""ShopMonkey API v3 client: timeouts, retries that honour Retry-After, and no trust in
what the list endpoint claims to have filtered (it silently ignores what it does not
understand and caps pages at 100 rows).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from lead_orchestrator.crm.http import HttpClientOwner, retry_after as _retry_after
from lead_orchestrator.crm.errors import CrmError, CrmNotFound, CrmRateLimited, CrmUnauthorized, CrmUnavailable
# The one reading of a CRM's date-time text (also what the inbox keys and the mapping use).
from lead_orchestrator.domain.estimates import parse_stamp as parse_time

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
PAGE_SIZE = 100  # the API's cap; asking for more silently returns 100
MAX_RETRY_AFTER_SECONDS = 30.0


class ShopMonkeyError(CrmError):
    """An answer the client did not expect (e.g. a non-JSON body): see crm_errors."""


class ShopMonkeyAuthError(ShopMonkeyError, CrmUnauthorized):
    """The shop's API key is wrong or was revoked (401/403)."""


class ShopMonkeyNotFound(ShopMonkeyError, CrmNotFound):
    pass


class _Retryable(ShopMonkeyError, CrmUnavailable):
    """Connection failures, timeouts and 502/503/504: worth another try."""


class ShopMonkeyTimeout(_Retryable):
    """The caller's time budget ran out before the answer was complete."""


class ShopMonkeyRateLimited(_Retryable, CrmRateLimited):
    """HTTP 429."""


def since_filter(since: dt.datetime) -> dict[str, Any]:
    """The `where` clause for "updated at or after `since`" (Prisma-style, as integrators
    observed). Kept in one place: if ShopMonkey spells it differently, only this changes,
    and the client-side re-check keeps the result right meanwhile."""
    return {"updatedDate": {"gte": since.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")}}


@dataclass(frozen=True)
class OrderScan:
    """Orders changed since a moment, plus what it took to get them."""

    rows: list[dict[str, Any]]  # inside the window, oldest first, each (id, updatedDate) once
    received: int  # rows the API returned, before our own filter
    requests: int  # list requests made (pages, plus retries)
    # Every change stamped before this moment has been read. Equal to the newest row's
    # stamp when the scan finished; earlier when it was interrupted (then `error` says why).
    read_below: dt.datetime | None = None
    error: CrmError | None = None

    @property
    def complete(self) -> bool:
        return self.error is None


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server gave one, else exponential backoff from 0.2 s."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER_SECONDS)
    return min(0.2 * 2 ** (state.attempt_number - 1), 5.0)


class _StopBefore(stop_base):
    """Stops retrying when the next wait would end past `deadline` (a time.monotonic() value)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= self.deadline


class ShopMonkeyClient(HttpClientOwner):
    """`pacer` (a crm_pace.CrmPacer, optional) spaces this shop's requests across every
    process and learns from its 429s; without one, a 429's Retry-After is waited out here."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0,
                 max_attempts: int = 4, http: httpx.Client | None = None, pacer=None):
        self._use_http(http, timeout)
        self._timeout = timeout
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._max_attempts = max_attempts
        self._pacer = pacer
        self.requests_made = 0

    # --- single objects -------------------------------------------------------
    def get_order(self, order_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        return self._get(f"/v3/order/{order_id}", deadline=deadline)["data"]

    def get_customer(self, customer_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        return self._get(f"/v3/customer/{customer_id}", deadline=deadline)["data"]

    def get_vehicle(self, vehicle_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        return self._get(f"/v3/vehicle/{vehicle_id}", deadline=deadline)["data"]

    # --- lists ------------------------------------------------------------------
    def orders_updated_since(self, since: dt.datetime) -> list[dict[str, Any]]:
        """Every order with updatedDate >= since, oldest first, each (id, updatedDate) once."""
        scan = self.scan_orders_updated_since(since)
        if scan.error is not None:
            raise scan.error
        return scan.rows

    def scan_orders_updated_since(self, since: dt.datetime, *, deadline: float | None = None) -> OrderScan:
        """Reads the orders changed since `since`, oldest first, by keyset: each page asks
        again for `updatedDate >= <newest stamp read so far>` instead of skipping rows by
        offset. An order edited while we page moves to a later stamp, where a later page
        (or the next cycle) finds it; with offset paging the rows behind it would shift
        one place and one of them would never be read.

        Filters, sorts and de-duplicates again on our side: the API may ignore the filter
        or the sort. If it visibly ignores the filter, the scan falls back to reading the
        whole list by offset (likewise if it ignores the sort). `deadline` (a time.monotonic() value) bounds the whole
        scan, waits included. An error after some pages returns what was read, with
        `error` set and `read_below` saying how far the reading is complete; an error
        before anything was read is raised.
        """
        before = self.requests_made
        received = 0
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        cursor, skip = since, 0
        error: CrmError | None = None
        try:
            while True:
                query = {"where": json.dumps(since_filter(cursor)), "orderby": json.dumps({"updatedDate": "asc"})}
                body = self._get("/v3/order", deadline=deadline, params={**query, "limit": PAGE_SIZE, "skip": skip})
                page = body.get("data") or []
                received += len(page)
                stamps = [parse_time(r.get("updatedDate")) for r in page]
                if any(t is None or t < cursor for t in stamps) or stamps != sorted(stamps):
                    # The API ignored our filter or our sort: a keyset over it would skip rows.
                    # On the first page the query is still the one we would page by offset:
                    # keep what it sent and read on from there.
                    first = cursor == since and skip == 0
                    rest = self._offset_scan(query, deadline, skip=len(page) if first else 0)
                    received += len(rest)
                    for row in (page if first else []) + rest:
                        _keep(seen, row, since)
                    cursor = None
                    break
                for row in page:
                    _keep(seen, row, since)
                if not (body.get("meta") or {}).get("hasMore") or not page:
                    cursor = None
                    break
                newest = max(stamps)
                # A full page of one stamp cannot move the cursor: step over it by offset.
                skip = skip + len(page) if newest == cursor else 0
                cursor = newest
        except CrmError as exc:
            if not received:
                raise
            error = exc
        rows = sorted(seen.values(), key=lambda r: (parse_time(r["updatedDate"]), r["id"]))
        newest_read = parse_time(rows[-1]["updatedDate"]) if rows else None
        read_below = cursor if error is not None else newest_read
        return OrderScan(rows, received, self.requests_made - before, read_below, error)

    def _offset_scan(self, query: dict[str, str], deadline: float | None, skip: int) -> list[dict[str, Any]]:
        """The whole list by offset (the API ignored our filter or sort): slow but complete."""
        rows = []
        while True:
            body = self._get("/v3/order", deadline=deadline, params={**query, "limit": PAGE_SIZE, "skip": skip})
            page = body.get("data") or []
            rows += page
            if not (body.get("meta") or {}).get("hasMore") or not page:
                return rows
            skip += len(page)

    # --- transport -------------------------------------------------------------
    def _get(self, path: str, params: dict[str, Any] | None = None, *,
             deadline: float | None = None) -> dict[str, Any]:
        stop = stop_after_attempt(self._max_attempts)
        if deadline is not None:
            stop = stop | _StopBefore(deadline)  # never sleep past the caller's budget
        pacer = self._pacer

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if pacer is not None and isinstance(exc, ShopMonkeyRateLimited):
                return 0.0  # the shared pacer decides how long every caller for this shop waits
            return _wait(state)

        @retry(retry=retry_if_exception(lambda e: isinstance(e, _Retryable)), wait=wait, stop=stop, reraise=True)
        def attempt() -> dict[str, Any]:
            if pacer is not None:
                pacer.wait_for_slot()  # CrmRateLimited when the shop's next slot is far off
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise ShopMonkeyTimeout(f"ShopMonkey {path}: time budget exhausted")
            self.requests_made += 1
            try:
                response = self._http.get(self._base + path, params=params, headers=self._headers, timeout=timeout)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise _Retryable(f"ShopMonkey {path}: {type(exc).__name__}") from exc
            if response.status_code == 429:
                retry_after = _retry_after(response)
                if pacer is not None:
                    pacer.rate_limited(retry_after)
                raise ShopMonkeyRateLimited(f"ShopMonkey {path}: HTTP 429", 429, retry_after)
            return self._parse(path, response)

        return attempt()

    @staticmethod
    def _parse(path: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"ShopMonkey {path}: HTTP {status}", status, _retry_after(response))
        if status in (401, 403):
            raise ShopMonkeyAuthError(f"ShopMonkey rejected the shop's API key (HTTP {status})", status)
        if status == 404:
            raise ShopMonkeyNotFound(f"ShopMonkey {path}: not found", status)
        try:
            body = response.json()
        except ValueError:
            raise ShopMonkeyError(f"ShopMonkey {path}: HTTP {status} with a non-JSON body", status) from None
        if status >= 500:
            raise _Retryable(f"ShopMonkey {path}: HTTP {status} {body.get('message', '')}".strip(), status)
        if status >= 400 or not body.get("success", False):
            raise ShopMonkeyError(f"ShopMonkey {path}: HTTP {status} {body.get('message', '')}".strip(), status)
        return body


def _keep(seen: dict, row: dict[str, Any], since: dt.datetime) -> None:
    updated = parse_time(row.get("updatedDate"))
    if updated is not None and updated >= since and row.get("id"):
        seen.setdefault((row["id"], row["updatedDate"]), row)
