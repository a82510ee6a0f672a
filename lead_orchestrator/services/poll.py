"""The backup poll: the safety net for webhooks that never arrive (ShopMonkey disables a
webhook after repeated failures, a deploy drops a request, a shop was connected before
its webhook was configured).

One cycle asks each due shop for the orders changed since its watermark minus an
overlap, stores every row in the same inbox as the webhooks (the inbox's key
(table, id, updatedDate) merges a webhook and a poll sighting of the same change), and
advances the watermark in the same transaction, so it never runs ahead of what is
stored. The ingest job then treats polled orders exactly like webhook deliveries.

A shop whose key was revoked or whose API fails is recorded in `poll_state` (health,
last error) and waits out a growing backoff; shops are polled by a small thread pool,
each within its own time budget, so one slow or broken shop never holds up the rest.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from lead_orchestrator.crm.errors import CrmError, CrmRateLimited, CrmUnauthorized
from lead_orchestrator.crm.pace import pacer_for
from lead_orchestrator.store.inbox import NewEvent, insert_event, release_parked_events
from lead_orchestrator.store.shops import load_shop
from lead_orchestrator.services.shop_clients import MissingCredentials

log = logging.getLogger(__name__)

# Rows can become visible late, and paging a changing table can skip a row: each query
# reaches back this far before the watermark; the inbox drops what was already stored.
OVERLAP = dt.timedelta(minutes=2)
BACKOFF_STEP = dt.timedelta(seconds=30)
BACKOFF_MAX = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class PollConfig:
    overlap: dt.timedelta = OVERLAP
    # Per shop, waits for Retry-After included; the cycle stops starting shops after its own.
    shop_budget_s: float = 15.0
    failing_shop_budget_s: float = 5.0  # a shop that failed last time gets less of the cycle
    cycle_budget_s: float = 25.0  # under the 30 s cadence, so cycles never pile up
    concurrency: int = 8  # at most this many shops in flight (and connections to ShopMonkey)


@dataclass
class ShopPoll:
    """What one cycle did for one shop."""

    tenant_id: int
    slug: str | None = None
    outcome: str = "ok"  # ok | rate_limited | unauthorized | failing | not_reached | error
    since: dt.datetime | None = None
    watermark: dt.datetime | None = None
    received: int = 0  # rows the API returned
    kept: int = 0  # rows inside the window, de-duplicated
    stored: int = 0  # new inbox events, or failed ones revived (the rest were already there)
    released: int = 0  # parked events given back because the shop's key works again
    requests: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PollCycle:
    shops: list[ShopPoll] = field(default_factory=list)
    in_backoff: dict[str, int] = field(default_factory=dict)  # health -> shops skipped this cycle
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.shops)

    @property
    def stored(self) -> int:
        return sum(s.stored for s in self.shops)

    def with_outcome(self, outcome: str) -> list[ShopPoll]:
        return [s for s in self.shops if s.outcome == outcome]

    def summary(self) -> str:
        counts = Counter(s.outcome for s in self.shops)
        text = (f"polled {counts['ok']}/{len(self.shops)} shops in {self.seconds:.1f}s with {self.requests} "
                f"requests: {self.stored} new events")
        for outcome in ("unauthorized", "failing", "error"):
            if counts[outcome]:
                text += f"; {outcome}: " + ", ".join(sorted(s.slug or str(s.tenant_id)
                                                            for s in self.with_outcome(outcome)))
        if counts["not_reached"]:
            text += f"; {counts['not_reached']} not reached (first in line next cycle)"
        if self.in_backoff:
            text += "; in backoff: " + ", ".join(f"{n} {h}" for h, n in sorted(self.in_backoff.items()))
        return text


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def backoff(consecutive_errors: int) -> dt.timedelta:
    """How long a failing shop sits out: nothing after one error (next cycle retries),
    then 1, 2, 4, 8 minutes, capped at 10."""
    if consecutive_errors <= 1:
        return dt.timedelta(0)
    return min(BACKOFF_STEP * 2 ** (consecutive_errors - 1), BACKOFF_MAX)


def window_start(watermark: dt.datetime | None, connected_at: dt.datetime, max_lead_age_days: int,
                 now: dt.datetime, overlap: dt.timedelta = OVERLAP) -> dt.datetime:
    """Where a shop's query starts.

    With a watermark: the watermark minus the overlap, however old (after an outage, the
    changes made meanwhile may close active leads). A shop's first poll starts when the
    shop was connected, and never further back than its max lead age: estimates written
    before we were connected were the shop's own to answer, and older ones cannot
    qualify anyway.
    """
    if watermark is not None:
        return watermark - overlap
    return max(connected_at, now - dt.timedelta(days=max_lead_age_days)) - overlap


def due_tenant_ids(db, now: dt.datetime) -> list[int]:
    with db.system_tx() as conn:
        return [r["id"] for r in conn.execute("SELECT poll_due_tenant_ids(%s) AS id", (now,)).fetchall()]


def poll_cycle(db, vendors, *, http: httpx.Client | None = None, now: dt.datetime | None = None,
               tenant_ids: list[int] | None = None, config: PollConfig = PollConfig()) -> PollCycle:
    """Polls every due shop (or exactly `tenant_ids`, backoff or not) once.

    `http` is a shared connection pool, kept across cycles by the caller; without one a
    pool lives for this cycle only.
    """
    started = time.monotonic()
    now = now or utcnow()
    cycle = PollCycle()
    ids = tenant_ids if tenant_ids is not None else due_tenant_ids(db, now)
    if tenant_ids is None:
        with db.system_tx() as conn:
            cycle.in_backoff = {r["health"]: r["shops"] for r in
                                conn.execute("SELECT * FROM poll_backoff_counts(%s)", (now,)).fetchall()}
    own_http = http is None
    http = http or new_http_client(config)
    cycle_deadline = started + config.cycle_budget_s
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(config.concurrency, len(ids))),
                                thread_name_prefix="poll") as pool:
            futures = [pool.submit(_poll_one, db, vendors, tenant_id, http, now, cycle_deadline, config)
                       for tenant_id in ids]
            cycle.shops = [f.result() for f in futures]
    finally:
        if own_http:
            http.close()
    cycle.seconds = round(time.monotonic() - started, 3)
    return cycle


def new_http_client(config: PollConfig = PollConfig()) -> httpx.Client:
    """One connection pool for every shop: ShopMonkey is one host, so connections (and
    TLS sessions) are reused from shop to shop and from cycle to cycle."""
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    return httpx.Client(limits=limits, timeout=10.0)


def _poll_one(db, vendors, tenant_id: int, http, now, cycle_deadline: float, config: PollConfig) -> ShopPoll:
    started = time.monotonic()
    if started >= cycle_deadline:
        return ShopPoll(tenant_id, outcome="not_reached")
    try:
        result = poll_shop(db, vendors, tenant_id, http=http, now=now, cycle_deadline=cycle_deadline, config=config)
    except Exception as exc:  # noqa: BLE001 - e.g. the database went away; the other shops go on
        log.exception("poll of tenant %s failed", tenant_id)
        result = ShopPoll(tenant_id, outcome="error", error=f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.monotonic() - started, 3)
    return result


def poll_shop(db, vendors, tenant_id: int, *, http, now: dt.datetime, cycle_deadline: float | None = None,
              config: PollConfig = PollConfig()) -> ShopPoll:
    """One shop: read its watermark, list what changed, store it and advance the watermark."""
    started = time.monotonic()
    with db.tenant_tx(tenant_id) as conn:
        shop = load_shop(conn, tenant_id)
        state = conn.execute("SELECT watermark, consecutive_errors FROM poll_state").fetchone()
        connected_at = conn.execute("SELECT created_at FROM tenants WHERE id = %s", (tenant_id,)).fetchone()
    result = ShopPoll(tenant_id, slug=shop.slug if shop else None)
    if shop is None or connected_at is None:
        result.outcome = "not_reached"  # deactivated meanwhile
        return result
    errors = state["consecutive_errors"] if state else 0
    deadline = started + (config.failing_shop_budget_s if errors else config.shop_budget_s)
    if cycle_deadline is not None:
        deadline = min(deadline, cycle_deadline)
    watermark = state["watermark"] if state else None
    result.since = window_start(watermark, connected_at["created_at"], shop.max_lead_age_days, now, config.overlap)

    try:
        adapter = vendors.crm_adapter(shop, http=http, pacer=pacer_for(db, shop))
    except MissingCredentials as exc:
        return _record_failure(db, result, exc, errors, now)
    try:
        scan = adapter.changes_since(result.since, deadline=deadline)
    except CrmError as exc:
        result.requests = exc.requests or 0
        return _record_failure(db, result, exc, errors, now)

    kept = len(scan.estimates)
    received = scan.received if scan.received is not None else kept
    result.requests, result.received, result.kept = scan.requests, received, kept
    floor = watermark if watermark is not None else result.since + config.overlap
    # The watermark moves only as far as the reading is complete (an interrupted scan
    # stops at its last full page), and never past our own clock: a row stamped in the
    # future must not hide later changes.
    result.watermark = min(max(floor, scan.read_below or floor), now)
    with db.tenant_tx(tenant_id) as conn:
        for estimate in scan.estimates:
            if insert_event(conn, NewEvent.from_estimate(estimate, source="poll")):
                result.stored += 1
        if scan.error is None:
            conn.execute(
                """INSERT INTO poll_state (tenant_id, watermark, last_polled_at, last_success_at, consecutive_errors,
                                           health, next_poll_at, last_rows_received, last_rows_kept)
                   VALUES (current_tenant_id(), %(wm)s, %(now)s, %(now)s, 0, 'ok', NULL, %(received)s, %(kept)s)
                   ON CONFLICT (tenant_id) DO UPDATE SET
                       watermark = GREATEST(poll_state.watermark, EXCLUDED.watermark),
                       last_polled_at = EXCLUDED.last_polled_at, last_success_at = EXCLUDED.last_success_at,
                       consecutive_errors = 0, health = 'ok', next_poll_at = NULL,
                       last_rows_received = EXCLUDED.last_rows_received, last_rows_kept = EXCLUDED.last_rows_kept""",
                {"wm": result.watermark, "now": now, "received": received, "kept": kept},
            )
            # The key works: whatever waited for it goes back to the queue now.
            result.released = release_parked_events(conn)
        else:  # what was read is stored; the rest is read again from the watermark next time
            conn.execute("""INSERT INTO poll_state (tenant_id, watermark) VALUES (current_tenant_id(), %(wm)s)
                            ON CONFLICT (tenant_id) DO UPDATE
                            SET watermark = GREATEST(poll_state.watermark, EXCLUDED.watermark)""",
                         {"wm": result.watermark})
    if scan.error is not None:
        return _record_failure(db, result, scan.error, errors, now)
    if result.released:
        log.info("shop %s: its CRM key works again; %s parked events released", shop.slug, result.released)
    if received > 2 * kept + 100:
        log.warning("shop %s: its CRM returned %s rows for a window holding %s; is the filter ignored?",
                    shop.slug, received, kept)
    return result


def _record_failure(db, result: ShopPoll, exc: Exception, errors_before: int, now: dt.datetime) -> ShopPoll:
    if isinstance(exc, CrmRateLimited):
        return _record_rate_limited(db, result, exc, now)
    unauthorized = isinstance(exc, (CrmUnauthorized, MissingCredentials))
    result.outcome = "unauthorized" if unauthorized else "failing"
    result.error = str(exc)
    errors = errors_before + 1
    wait = backoff(errors)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        wait = max(wait, dt.timedelta(seconds=retry_after))
    log.warning("poll of shop %s: %s (attempt %s, next try in %ss)", result.slug, exc, errors, wait.total_seconds())
    with db.tenant_tx(result.tenant_id) as conn:
        conn.execute(
            """INSERT INTO poll_state (tenant_id, last_polled_at, consecutive_errors, last_error, last_error_at,
                                       health, next_poll_at)
               VALUES (current_tenant_id(), %(now)s, 1, %(error)s, %(now)s, %(health)s, %(next)s)
               ON CONFLICT (tenant_id) DO UPDATE SET
                   last_polled_at = EXCLUDED.last_polled_at, consecutive_errors = poll_state.consecutive_errors + 1,
                   last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at,
                   health = EXCLUDED.health, next_poll_at = EXCLUDED.next_poll_at""",
            {"now": now, "error": result.error[:500], "health": "unauthorized" if unauthorized else "failing",
             "next": now + wait if wait else None},
        )
    return result


def _record_rate_limited(db, result: ShopPoll, exc: CrmRateLimited, now: dt.datetime) -> ShopPoll:
    """A 429 (or our own pacer) is a pace, not a failure: the shop's health and error
    count stay as they are; it is polled again once the wait is over."""
    result.outcome, result.error = "rate_limited", str(exc)
    wait = dt.timedelta(seconds=max(1.0, exc.retry_after or 1.0))
    with db.tenant_tx(result.tenant_id) as conn:
        conn.execute("""INSERT INTO poll_state (tenant_id, last_polled_at, next_poll_at)
                        VALUES (current_tenant_id(), %(now)s, %(next)s)
                        ON CONFLICT (tenant_id) DO UPDATE SET last_polled_at = EXCLUDED.last_polled_at,
                            next_poll_at = EXCLUDED.next_poll_at""", {"now": now, "next": now + wait})
    log.info("poll of shop %s: rate limited, next poll in %.0fs", result.slug, wait.total_seconds())
    return result
