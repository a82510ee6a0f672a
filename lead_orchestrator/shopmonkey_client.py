"""ShopMonkey API v3 client: timeouts, retries that honour Retry-After, and no trust in
what the list endpoint claims to have filtered (it silently ignores what it does not
understand and caps pages at 100 rows).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from lead_orchestrator.qualification import parse_time

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
PAGE_SIZE = 100  # the API's cap; asking for more silently returns 100
MAX_RETRY_AFTER_SECONDS = 30.0


class ShopMonkeyError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ShopMonkeyAuthError(ShopMonkeyError):
    """The shop's API key is wrong or was revoked (401/403)."""


class ShopMonkeyNotFound(ShopMonkeyError):
    pass


class ShopMonkeyTimeout(ShopMonkeyError):
    """The caller's time budget ran out before the answer was complete."""


class _Retryable(ShopMonkeyError):
    def __init__(self, message: str, status: int | None, retry_after: float | None):
        super().__init__(message, status)
        self.retry_after = retry_after


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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class ShopMonkeyClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0,
                 max_attempts: int = 4, http: httpx.Client | None = None):
        self._http = http or httpx.Client(timeout=timeout)
        self._owns_http = http is None
        self._timeout = timeout
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._max_attempts = max_attempts
        self.requests_made = 0

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "ShopMonkeyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- single objects -------------------------------------------------------
    def get_order(self, order_id: str) -> dict[str, Any]:
        return self._get(f"/v3/order/{order_id}")["data"]

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        return self._get(f"/v3/customer/{customer_id}")["data"]

    def get_vehicle(self, vehicle_id: str) -> dict[str, Any]:
        return self._get(f"/v3/vehicle/{vehicle_id}")["data"]

    # --- lists ------------------------------------------------------------------
    def orders_updated_since(self, since: dt.datetime) -> list[dict[str, Any]]:
        """Every order with updatedDate >= since, oldest first, each (id, updatedDate) once."""
        return self.scan_orders_updated_since(since).rows

    def scan_orders_updated_since(self, since: dt.datetime, *, deadline: float | None = None) -> OrderScan:
        """Pages through the orders changed since `since` until `meta.hasMore` is false.

        Filters, sorts and de-duplicates again on our side: the API may ignore the filter
        or the sort, and a table that changes while we page can repeat rows. `deadline`
        (a time.monotonic() value) bounds the whole scan, waits for Retry-After included;
        past it, ShopMonkeyTimeout (or the last retryable error) is raised.
        """
        before = self.requests_made
        received = 0
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self._pages("/v3/order", deadline, where=since_filter(since), orderby={"updatedDate": "asc"}):
            received += 1
            updated = parse_time(row.get("updatedDate"))
            if updated is None or updated < since or not row.get("id"):
                continue
            seen.setdefault((row["id"], row["updatedDate"]), row)
        rows = sorted(seen.values(), key=lambda r: (parse_time(r["updatedDate"]), r["id"]))
        return OrderScan(rows, received, self.requests_made - before)

    def _pages(self, path: str, deadline: float | None = None, **query: Any) -> Iterator[dict[str, Any]]:
        params = {k: json.dumps(v) for k, v in query.items()}
        skip = 0
        while True:
            body = self._get(path, params={**params, "limit": PAGE_SIZE, "skip": skip}, deadline=deadline)
            rows = body.get("data") or []
            yield from rows
            if not (body.get("meta") or {}).get("hasMore") or not rows:
                return
            skip += len(rows)

    # --- transport -------------------------------------------------------------
    def _get(self, path: str, params: dict[str, Any] | None = None, *,
             deadline: float | None = None) -> dict[str, Any]:
        stop = stop_after_attempt(self._max_attempts)
        if deadline is not None:
            stop = stop | _StopBefore(deadline)  # never sleep past the caller's budget

        @retry(retry=retry_if_exception(lambda e: isinstance(e, _Retryable)), wait=_wait, stop=stop, reraise=True)
        def attempt() -> dict[str, Any]:
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise ShopMonkeyTimeout(f"ShopMonkey {path}: time budget exhausted")
            self.requests_made += 1
            try:
                response = self._http.get(self._base + path, params=params, headers=self._headers, timeout=timeout)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise _Retryable(f"ShopMonkey {path}: {type(exc).__name__}", None, None) from exc
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
        if status >= 400 or not body.get("success", False):
            raise ShopMonkeyError(f"ShopMonkey {path}: HTTP {status} {body.get('message', '')}".strip(), status)
        return body
