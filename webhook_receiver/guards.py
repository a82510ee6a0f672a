"""Guards in front of every route, so that routes added later get them too:

- a per-shop rate limit on `/webhooks/{vendor}/{shop}/...` (429 + Retry-After), held
  across every receiver process (shop_budget.py);
- a body size cap on every request that carries a body (413), whether or not the
  client declared a Content-Length.

Both answer before the route runs, so nothing is stored for a request they stop and
nothing accepted is ever dropped: the sender sees 429/413 and keeps its event.
They are plain ASGI middleware (not BaseHTTPMiddleware) so that streaming bodies stay
streaming.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Callable

import psycopg
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.store.db import Database, is_connection_error, short_reason
from webhook_receiver import metrics
from webhook_receiver.deps import database_unavailable
from webhook_receiver.errors import ApiError
from webhook_receiver.shop_budget import Grant, Lease, LeaseRequest, ShopBudgets, retry_after_header

log = logging.getLogger(__name__)

_LEASES = {r: metrics.RATE_LEASES.labels(r) for r in ("granted", "refused", "failed")}
WEBHOOK_PATH = re.compile(r"^/webhooks/([^/]+)/([^/]+)")


async def send_error(send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ShopRateLimit:
    """At most `budgets.limit` requests per `budgets.period_s` for each (vendor, shop)
    path prefix, across every receiver process (webhook_receiver/shop_budget.py). It is
    checked before the shop is even looked up; a shop over its limit costs no database
    work (the refusal is remembered until PostgreSQL said there is room again). With no
    budget in hand and the database down, the answer is the routes' own 503."""

    def __init__(self, app, budgets: ShopBudgets):
        self.app = app
        self.budgets = budgets

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            match = WEBHOOK_PATH.match(scope.get("path", ""))
            if match:
                try:
                    wait = await self.budgets.admit(match.group(1), match.group(2))
                except psycopg.Error as exc:  # PoolTimeout and DatabaseUnavailable too
                    if not is_connection_error(exc):
                        log.error("could not lease webhook budget for %s: %s", match.group(0), short_reason(exc))
                    unavailable = database_unavailable()
                    return await send_error(send, unavailable.status, unavailable.code, unavailable.message,
                                            unavailable.headers)
                except Exception:  # noqa: BLE001 - the one 500 body, as on every route
                    log.exception("the webhook rate limit failed on %s", match.group(0))
                    return await send_error(send, 500, "internal_error", "the request could not be handled")
                if wait is not None:
                    metrics.RATE_LIMITED.inc()
                    retry_after = retry_after_header(wait)
                    return await send_error(send, 429, "rate_limited",
                                            f"too many requests for this shop; retry after {retry_after}s",
                                            {"Retry-After": retry_after})
        await self.app(scope, receive, send)


def database_lease(database: Callable[[], Database]) -> Lease:
    """Leases through the receiver's pool, on a worker thread (a lease is rare: one per
    `lease_size` requests of a shop). `database` is called each time: the pool is
    opened with the app, after the guards are built."""

    def lease(request: LeaseRequest) -> Grant:
        try:
            with database().system_tx() as conn:
                row = conn.execute(
                    "SELECT * FROM lease_webhook_budget(%s, %s, %s, %s, %s, %s, %s, %s)",
                    (request.vendor, request.shop, request.limit, request.period_s, request.wanted,
                     request.return_window, request.returned, request.clean_at_most)).fetchone()
        except Exception:
            _LEASES["failed"].inc()
            raise
        _LEASES["granted" if row["granted"] else "refused"].inc()
        return Grant(granted=row["granted"], window=row["window_no"], window_left_s=row["window_left_s"],
                     retry_after_s=row["retry_after_s"], cleaned=row["cleaned"])

    async def in_thread(request: LeaseRequest) -> Grant:
        return await run_in_threadpool(lease, request)

    return in_thread


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "body_too_large", f"the body is larger than {limit} bytes")


class BodySizeLimit:
    """Refuses a declared Content-Length over the limit at once, and stops reading an
    undeclared (chunked) body as soon as it passes the limit."""

    def __init__(self, app, max_bytes: int, path_limits: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Routes whose vendor posts more (SendGrid Inbound Parse: emails with attachments).
        self.path_limits = path_limits or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, 400, "invalid_content_length", "Content-Length is not a number")
            if int(declared) > max_bytes:
                return await send_error(send, 413, "body_too_large", f"the body is larger than {max_bytes} bytes")
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    # An ApiError: the app's handler turns it into the one error body.
                    raise BodyTooLarge(max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # raised outside any route (no handler saw it)
            if not started:
                await send_error(send, exc.status, exc.code, exc.message)
