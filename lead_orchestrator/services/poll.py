"""The backup poll: the safety net for webhooks that never arrive (ShopMonkey disables a
webhook after repeated failures, a deploy drops a request, a shop was connected before
its webhook was configured; some Tekmetric shops never deliver one at all).

Each shop asks its CRM for the orders changed since its watermark minus an overlap,
stores every change in the same inbox as the webhooks (the inbox's key merges a webhook
and a poll sighting of the same change), and advances the watermark in the same
transaction, so it never runs ahead of what is stored. The ingest job then treats polled
changes exactly like webhook deliveries.

Scale (docs/poll.md):
- Every shop has a slot in the 30-second cycle (a fixed phase from its tenant id), so a
  tick every few seconds polls the shops whose slot has come instead of all of them at
  the start of the cycle. After each poll the shop's `next_poll_at` is its next slot.
- A poller claims the due shops of its shard (tenant id modulo the number of shards) in
  PostgreSQL with a lease, SKIP LOCKED: two pollers (two partitions, two replicas, a
  poll run by hand) never poll the same shop at once; a dead poller's shops come back
  when its lease runs out.
- A bounded thread pool polls the claimed shops: `concurrency` shops in flight, which is
  also the number of connections to the CRM; database connections come from the
  caller's pool, held only for the short transactions around each request.
- A shop whose CRM shares one request budget among many shops (a Tekmetric partner app)
  gets the cadence the app's plan allows: 30 s while the budget has room, longer for
  quiet shops when it has not (crm/tekmetric/budget.py); its requests pass the app's
  shared limiter (crm/app_budget.py), so no number of shops or pollers makes a 429 storm.

A shop whose key was revoked or whose API fails is recorded in `poll_state` (health,
last error) and waits out a growing backoff; each shop has its own time budget, so one
slow or broken shop never holds up the rest.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator

import httpx

from lead_orchestrator.crm.errors import CrmError, CrmRateLimited, CrmUnauthorized
from lead_orchestrator.crm.http import tls_context
from lead_orchestrator.crm.pace import pacer_for
from lead_orchestrator.services.shop_clients import MissingCredentials
from lead_orchestrator.store.inbox import RELEASE_PARKED, NewEvent, insert_event
from lead_orchestrator.store.shops import Shop, load_shop

log = logging.getLogger(__name__)

# Rows can become visible late, and paging a changing table can skip a row: each query
# reaches back this far before the watermark; the inbox drops what was already stored.
OVERLAP = dt.timedelta(minutes=2)
BACKOFF_STEP = dt.timedelta(seconds=30)
BACKOFF_MAX = dt.timedelta(minutes=10)
# A shop that changed within this long, or has an open lead, is busy: when a shared
# budget cannot give every shop 30 s, the busy ones keep it.
BUSY_FOR = dt.timedelta(hours=1)
# Spreads the shops' phases evenly over the cycle whatever their number (a Weyl sequence).
_GOLDEN = (math.sqrt(5) - 1) / 2
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class PollConfig:
    overlap: dt.timedelta = OVERLAP
    # Per shop, waits for Retry-After included; a tick stops starting shops after its own.
    shop_budget_s: float = 15.0
    failing_shop_budget_s: float = 5.0  # a shop that failed last time gets less of the cycle
    cycle_budget_s: float = 25.0  # under the 30 s cadence, so a shop not reached is still on time
    concurrency: int = 64  # shops in flight, and connections to the CRM, per poller
    cadence_s: int = 30  # each shop's slot comes round this often
    lease_s: float = 60.0  # a claim outlives any shop's budget; a dead poller's shops return after it
    claim_batch: int = 0  # shops claimed at a time (0: twice the concurrency)

    @property
    def batch(self) -> int:
        return self.claim_batch or 2 * self.concurrency


@dataclass(frozen=True)
class Shard:
    """Which shops a poller polls: those whose tenant id modulo `count` is `index`.
    Tenant ids are sequential, so shards stay even as shops are added."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is 0 <= index < count, not {self.index} of {self.count}")

    def holds(self, tenant_id: int) -> bool:
        return tenant_id % self.count == self.index

    def __str__(self) -> str:
        return f"shard {self.index + 1}/{self.count}"


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
    polled_at: dt.datetime | None = None  # when its poll began (the tick's clock)
    next_poll_at: dt.datetime | None = None
    cadence_s: int | None = None
    deletions_checked: bool = False


@dataclass
class PollCycle:
    shops: list[ShopPoll] = field(default_factory=list)
    in_backoff: dict[str, int] = field(default_factory=dict)  # health -> shops skipped this cycle
    seconds: float = 0.0
    shard: Shard = field(default_factory=Shard)

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
        where = f" ({self.shard})" if self.shard.count > 1 else ""
        text = (f"polled {counts['ok']}/{len(self.shops)} due shops{where} in {self.seconds:.1f}s with "
                f"{self.requests} requests: {self.stored} new events")
        for outcome in ("unauthorized", "failing", "error"):
            if counts[outcome]:
                text += f"; {outcome}: " + ", ".join(sorted(s.slug or str(s.tenant_id)
                                                            for s in self.with_outcome(outcome)))
        if counts["rate_limited"]:
            text += f"; {counts['rate_limited']} rate limited (moved to a later slot)"
        if counts["not_reached"]:
            text += f"; {counts['not_reached']} not reached (first in line next tick)"
        if self.in_backoff:
            text += "; in backoff: " + ", ".join(f"{n} {h}" for h, n in sorted(self.in_backoff.items()))
        return text


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def backoff(consecutive_errors: int) -> dt.timedelta:
    """How long a failing shop sits out: nothing after one error (its next slot retries),
    then 1, 2, 4, 8 minutes, capped at 10."""
    if consecutive_errors <= 1:
        return dt.timedelta(0)
    return min(BACKOFF_STEP * 2 ** (consecutive_errors - 1), BACKOFF_MAX)


def slot_phase_s(tenant_id: int, cadence_s: float) -> float:
    """Where in each cycle the shop's slot lies: fixed per shop, and spread evenly over
    the cycle (consecutive ids land far apart)."""
    return (tenant_id * _GOLDEN) % 1.0 * cadence_s


def next_slot(tenant_id: int, after: dt.datetime, cadence_s: float) -> dt.datetime:
    """The shop's first slot strictly after `after`: slots are `cadence_s` apart, at the
    shop's phase, on the UTC epoch (so every poller computes the same ones)."""
    # In whole microseconds, so that the slot after a slot is exactly one cadence later.
    cadence_us = round(cadence_s * 1_000_000)
    phase_us = round(slot_phase_s(tenant_id, cadence_s) * 1_000_000)
    after_us = (after - _EPOCH) // dt.timedelta(microseconds=1)
    cycles = (after_us - phase_us) // cadence_us + 1
    return _EPOCH + dt.timedelta(microseconds=cycles * cadence_us + phase_us)


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
    """Active shops whose slot has come and that no poller holds, most overdue first."""
    with db.system_tx() as conn:
        return [r["id"] for r in conn.execute("SELECT poll_due_tenant_ids(%s) AS id", (now,)).fetchall()]


def new_claimer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --- the one call to a shop's CRM, and what it stores ---------------------------------

@dataclass
class Changes:
    """What one scan of a shop found, as inbox events, whatever the CRM."""

    events: list[NewEvent] = field(default_factory=list)
    received: int = 0  # rows the API returned
    kept: int = 0  # of those, inside the window and de-duplicated
    read_below: dt.datetime | None = None  # every change stamped before this was read
    error: CrmError | None = None  # the scan stopped early (what it read is kept)
    requests: int = 0
    deletions_read: bool = False  # the CRM's separate deletion query ran to the end


def scan_changes(crm, since: dt.datetime, *, deadline: float,
                 deletions_since: dt.datetime | None = None) -> Changes:
    """The poll's one call to a shop's CRM: what changed since `since`, through the port
    (`CrmAdapter.changes_since`, crm/base.py). An adapter whose deletions need their own
    query (`deletions_separate`) is given `deletions_since` (None: not this time)."""
    separate = getattr(crm, "deletions_separate", False)
    try:
        scan = (crm.changes_since(since, deadline=deadline, deletions_since=deletions_since) if separate
                else crm.changes_since(since, deadline=deadline))
    except CrmError as exc:
        return Changes(error=exc, requests=exc.requests or 0)
    kept = len(scan.estimates)
    return Changes([NewEvent.from_estimate(e, source="poll") for e in scan.estimates],
                   scan.received if scan.received is not None else kept + len(scan.malformed), kept,
                   scan.read_below, scan.error, scan.requests,
                   deletions_read=separate and deletions_since is not None and scan.error is None)


def registry_adapters(vendors) -> Callable:
    """The default way to reach a shop's CRM: its adapter from the registry, by the
    shop's CRM (`Vendors.crm_adapter`)."""
    def crm_for(shop: Shop, *, http, pacer):
        return vendors.crm_adapter(shop, http=http, pacer=pacer)
    return crm_for


# --- a tick --------------------------------------------------------------------------

class _Tick:
    """What every shop of one tick shares: the pools, the clock, the claim, the plans."""

    def __init__(self, db, crm_for, http, now: dt.datetime, started: float, config: PollConfig,
                 claimer: str) -> None:
        self.db, self.crm_for, self.http, self.now = db, crm_for, http, now
        self.started, self.deadline = started, started + config.cycle_budget_s
        self.config, self.claimer = config, claimer
        self._plans: dict[str, object] = {}
        self._plans_lock = threading.Lock()

    def clock(self) -> dt.datetime:
        """The tick's `now` moved on by the time the tick has run: a shop polled late in
        a long tick gets its next slot after its poll, not after the tick's start (which
        could already have passed, and the shop would be asked twice in a few seconds)."""
        return self.now + dt.timedelta(seconds=time.monotonic() - self.started)

    def plan(self, budget):
        """The poll plan of a shared budget, once per tick (one count over all shards)."""
        with self._plans_lock:
            if budget.app not in self._plans:
                with self.db.system_tx() as conn:
                    row = conn.execute("SELECT * FROM poll_budget_counts(%s)", (budget.app,)).fetchone()
                self._plans[budget.app] = budget.plan(max(1, row["shops"]), min(row["busy"], max(1, row["shops"])))
            return self._plans[budget.app]


def poll_cycle(db, vendors, *, http: HttpClients | httpx.Client | None = None, now: dt.datetime | None = None,
               tenant_ids: list[int] | None = None, config: PollConfig = PollConfig(), shard: Shard = Shard(),
               claimer: str | None = None, crm_for: Callable | None = None) -> PollCycle:
    """One tick: claims the due shops of `shard` (or exactly `tenant_ids`, due or not)
    and polls each once.

    `http` is the poller's connections (new_http_client), kept across ticks by the
    caller; without them, connections live for this tick only. `crm_for(shop, http=,
    pacer=)` gives a shop's CRM adapter (default: the registry's, by the shop's CRM).
    """
    started = time.monotonic()
    now = now or utcnow()
    claimer = claimer or new_claimer_id()
    cycle = PollCycle(shard=shard)
    own_http = http is None
    http = http or new_http_client(config)
    if isinstance(http, httpx.Client):
        http = _OneClient(http)
    tick = _Tick(db, crm_for or registry_adapters(vendors), http, now, started, config, claimer)
    try:
        with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="poll") as pool:
            if tenant_ids is not None:
                cycle.shops = _poll_named(tick, pool, tenant_ids)
            else:
                with db.system_tx() as conn:
                    conn.execute("SELECT poll_prepare_shard(%s, %s)", (shard.index, shard.count))
                    cycle.in_backoff = {r["health"]: r["shops"] for r in conn.execute(
                        "SELECT * FROM poll_backoff_counts(%s, %s, %s)", (now, shard.index, shard.count)).fetchall()}
                cycle.shops = _poll_due(tick, pool, shard)
    finally:
        if own_http:
            http.close()
    unused = [s.tenant_id for s in cycle.shops if s.outcome == "not_reached"]
    if unused:
        with db.system_tx() as conn:
            conn.execute("SELECT poll_release(%s, %s)", (unused, claimer))
    cycle.seconds = round(time.monotonic() - started, 3)
    return cycle


def _poll_named(tick: _Tick, pool: ThreadPoolExecutor, tenant_ids: list[int]) -> list[ShopPoll]:
    with tick.db.system_tx() as conn:
        claimed = {r["id"] for r in conn.execute(
            "SELECT poll_claim_tenants(%s, %s, %s, %s) AS id",
            (list(tenant_ids), tick.now, dt.timedelta(seconds=tick.config.lease_s), tick.claimer)).fetchall()}
    futures = {t: pool.submit(_poll_one, tick, t) for t in tenant_ids if t in claimed}
    return [futures[t].result() if t in futures else
            ShopPoll(t, outcome="not_reached", error="inactive, or being polled by another poller")
            for t in tenant_ids]


def _poll_due(tick: _Tick, pool: ThreadPoolExecutor, shard: Shard) -> list[ShopPoll]:
    """Claims due shops a batch at a time while the workers keep up, so that few shops
    wait claimed but unstarted (and a second poller finds the rest unclaimed)."""
    config = tick.config
    results: list[ShopPoll] = []
    running: set[Future] = set()
    exhausted = False
    while True:
        if not exhausted and len(running) <= config.concurrency and time.monotonic() < tick.deadline:
            want = config.batch - len(running)
            with tick.db.system_tx() as conn:
                ids = [r["id"] for r in conn.execute(
                    "SELECT poll_claim_due(%s, %s, %s, %s, %s, %s) AS id",
                    (shard.index, shard.count, tick.now, want, dt.timedelta(seconds=config.lease_s),
                     tick.claimer)).fetchall()]
            exhausted = not ids  # fewer than asked may only mean another poller held some a moment
            running |= {pool.submit(_poll_one, tick, t) for t in ids}
        if not running:
            return results
        done, running = wait(running, return_when=FIRST_COMPLETED)
        results += [f.result() for f in done]


class HttpClients:
    """The poller's connections to the CRM: one small client per shop in flight, each
    keeping its one connection (and TLS session) alive from shop to shop and tick to
    tick. Not one shared pool of `concurrency` connections: httpx's pool walks every
    connection and waiting request at each request, which at 64 connections cost more
    CPU than the request itself (and 128 in flight tripled the poller's CPU per shop)."""

    def __init__(self, size: int, timeout: float = 10.0) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._all = [httpx.Client(limits=limits, timeout=timeout, verify=tls_context()) for _ in range(size)]
        self._free: queue.LifoQueue[httpx.Client] = queue.LifoQueue()
        for client in self._all:
            self._free.put(client)

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx.Client]:
        http = self._free.get()
        try:
            yield http
        finally:
            self._free.put(http)

    def close(self) -> None:
        for client in self._all:
            client.close()

    def __enter__(self) -> "HttpClients":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _OneClient:
    """A caller's own httpx.Client, lent to every shop."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx.Client]:
        yield self._http


def new_http_client(config: PollConfig = PollConfig()) -> HttpClients:
    """The poller's connections: keep them across ticks (the sensor does, per process)."""
    return HttpClients(config.concurrency)


def _poll_one(tick: _Tick, tenant_id: int) -> ShopPoll:
    started = time.monotonic()
    if started >= tick.deadline:
        return ShopPoll(tenant_id, outcome="not_reached")
    try:
        result = poll_shop(tick, tenant_id)
    except Exception as exc:  # noqa: BLE001 - e.g. the database went away; the other shops go on
        log.exception("poll of tenant %s failed", tenant_id)
        result = ShopPoll(tenant_id, outcome="error", error=f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.monotonic() - started, 3)
    return result


@dataclass
class _Turn:
    """One shop's turn: what its state writes need beside the result."""

    result: ShopPoll
    claimer: str
    now: dt.datetime  # the tick's: what last_polled_at says
    clock: Callable[[], dt.datetime]  # the tick's clock: next slots count from the poll itself
    cadence_s: int
    budget_app: str | None = None


_STATE = """SELECT watermark, consecutive_errors, busy, last_change_at, deletions_checked_at,
                   (SELECT created_at FROM tenants WHERE id = current_tenant_id()) AS connected_at
              FROM poll_state"""

_SUCCESS = """
    WITH state AS (UPDATE poll_state SET
        watermark = GREATEST(watermark, %(wm)s), last_polled_at = %(now)s, last_success_at = %(now)s,
        consecutive_errors = 0, health = 'ok', next_poll_at = %(next)s, wait_reason = 'cadence',
        cadence_s = %(cadence)s, last_rows_received = %(received)s, last_rows_kept = %(kept)s,
        budget_app = %(app)s, busy = %(busy)s,
        last_change_at = CASE WHEN %(changed)s THEN %(now)s ELSE last_change_at END,
        deletions_checked_at = CASE WHEN %(deletions)s THEN %(now)s ELSE deletions_checked_at END,
        claimed_by = NULL, claimed_until = NULL RETURNING 1),
    released AS (""" + RELEASE_PARKED + """ RETURNING 1)
    SELECT count(*) AS released FROM released"""

_FAILURE = """
    UPDATE poll_state SET
        last_polled_at = %(now)s, consecutive_errors = consecutive_errors + 1, last_error = %(error)s,
        last_error_at = %(now)s, health = %(health)s, next_poll_at = %(next)s, wait_reason = 'backoff',
        cadence_s = %(cadence)s, budget_app = %(app)s, claimed_by = NULL, claimed_until = NULL"""

_RATE_LIMITED = """
    UPDATE poll_state SET last_polled_at = %(now)s, next_poll_at = %(next)s, wait_reason = 'rate_limited',
        cadence_s = %(cadence)s, budget_app = %(app)s, claimed_by = NULL, claimed_until = NULL"""

_HAS_OPEN_LEAD = "SELECT EXISTS (SELECT 1 FROM leads WHERE status = 'active') AS open"


def poll_shop(tick: _Tick, tenant_id: int) -> ShopPoll:
    """One shop: read its watermark, list what changed, store it, advance the watermark
    and give the shop its next slot."""
    started = time.monotonic()
    config, now = tick.config, tick.now
    with tick.db.tenant_tx(tenant_id) as conn:
        shop = load_shop(conn, tenant_id, tick.db.box)
        state = conn.execute(_STATE).fetchone()
        # The first request's pacer slot, reserved in this transaction rather than one of its own.
        pacer = pacer_for(tick.db, shop).reserved_in(conn) if shop is not None and shop.active else None
    result = ShopPoll(tenant_id, slug=shop.slug if shop else None, polled_at=tick.clock())
    if shop is None or state is None or not shop.active:
        result.outcome = "not_reached"  # deactivated meanwhile
        return result
    errors = state["consecutive_errors"]
    # A shop once started has its whole budget: cutting it at the tick's end would only
    # turn a slow answer into a failure (the tick starts no shop after its own budget).
    deadline = started + (config.failing_shop_budget_s if errors else config.shop_budget_s)
    watermark = state["watermark"]
    result.since = window_start(watermark, state["connected_at"], shop.max_lead_age_days, now, config.overlap)
    turn = _Turn(result, tick.claimer, now, tick.clock, config.cadence_s)

    with tick.http.client() as http:
        try:
            crm = tick.crm_for(shop, http=http, pacer=pacer)
        except MissingCredentials as exc:
            return _record_failure(tick.db, turn, exc, errors)
        budget = getattr(crm, "shared_budget", None)
        plan = tick.plan(budget) if budget is not None else None
        if budget is not None:
            turn.budget_app = budget.app
            turn.cadence_s = _cadence(plan, state["busy"])
        deletions_since = _deletions_window(state, result.since, now, turn.cadence_s, plan, config.overlap)
        changes = scan_changes(crm, result.since, deadline=deadline, deletions_since=deletions_since)

    result.requests, result.received, result.kept = changes.requests, changes.received, changes.kept
    if changes.error is not None and not changes.events:
        return _record_failure(tick.db, turn, changes.error, errors)
    floor = watermark if watermark is not None else result.since + config.overlap
    # The watermark moves only as far as the reading is complete (an interrupted scan
    # stops at its last full page), and never past our own clock: a row stamped in the
    # future must not hide later changes.
    result.watermark = min(max(floor, changes.read_below or floor), now)
    with tick.db.tenant_tx(tenant_id) as conn:
        result.stored = sum(1 for event in changes.events if insert_event(conn, event) is not None)
        if changes.error is None:
            busy = result.stored > 0 or (state["last_change_at"] is not None
                                         and state["last_change_at"] > now - BUSY_FOR)
            if budget is not None:
                busy = busy or conn.execute(_HAS_OPEN_LEAD).fetchone()["open"]
                turn.cadence_s = _cadence(plan, busy)
            result.cadence_s = turn.cadence_s
            result.next_poll_at = next_slot(tenant_id, tick.clock(), turn.cadence_s)
            result.deletions_checked = changes.deletions_read
            # The key works: whatever waited for it goes back to the queue now (same statement).
            result.released = conn.execute(_SUCCESS, {
                "wm": result.watermark, "now": now, "next": result.next_poll_at, "cadence": turn.cadence_s,
                "received": changes.received, "kept": changes.kept, "app": turn.budget_app, "busy": busy,
                "changed": result.stored > 0, "deletions": changes.deletions_read}).fetchone()["released"]
        else:  # what was read is stored; the rest is read again from the watermark next time
            conn.execute("UPDATE poll_state SET watermark = GREATEST(watermark, %(wm)s)", {"wm": result.watermark})
    if changes.error is not None:
        return _record_failure(tick.db, turn, changes.error, errors)
    if result.released:
        log.info("shop %s: its CRM key works again; %s parked events released", shop.slug, result.released)
    if changes.received > 2 * changes.kept + 100:
        log.warning("shop %s: the CRM returned %s rows for a window holding %s; is the filter ignored?",
                    shop.slug, changes.received, changes.kept)
    return result


def _cadence(plan, busy: bool) -> int:
    return plan.busy_interval_s if busy else plan.quiet_interval_s


def _deletions_window(state, since: dt.datetime, now: dt.datetime, cadence_s: int, plan,
                      overlap: dt.timedelta) -> dt.datetime | None:
    """Where the separate deletion query starts, or None to leave it out this time: it
    runs every `deleted_every` cycles of the shop (every cycle without a plan), from where
    it last ran completely, so no deletion falls between two runs."""
    checked = state["deletions_checked_at"]
    if checked is None:
        return since
    if plan is not None and checked + dt.timedelta(seconds=(plan.deleted_every - 0.5) * cadence_s) > now:
        return None
    return min(since, checked - overlap)


def _record_failure(db, turn: _Turn, exc: Exception, errors_before: int) -> ShopPoll:
    result, now = turn.result, turn.now
    if isinstance(exc, CrmRateLimited):
        return _record_rate_limited(db, turn, exc)
    unauthorized = isinstance(exc, (CrmUnauthorized, MissingCredentials))
    result.outcome = "unauthorized" if unauthorized else "failing"
    result.error = str(exc)
    errors = errors_before + 1
    wait_for = backoff(errors)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        wait_for = max(wait_for, dt.timedelta(seconds=retry_after))
    # Back at the shop's own slot once the backoff is over: failing shops stay spread too.
    result.next_poll_at = next_slot(result.tenant_id, turn.clock() + wait_for, turn.cadence_s)
    log.warning("poll of shop %s: %s (attempt %s, next try at %s)", result.slug, exc, errors,
                result.next_poll_at.isoformat(timespec="seconds"))
    with db.tenant_tx(result.tenant_id) as conn:
        conn.execute(_FAILURE, {"now": now, "error": result.error[:500],
                                "health": "unauthorized" if unauthorized else "failing",
                                "next": result.next_poll_at, "cadence": turn.cadence_s, "app": turn.budget_app})
    return result


def _record_rate_limited(db, turn: _Turn, exc: CrmRateLimited) -> ShopPoll:
    """A 429 (or our own pacer or budget) is a pace, not a failure: the shop's health and
    error count stay as they are; it is polled again once the wait is over — for a shop
    of a shared budget, at its own slot after that, so the waiting shops come back spread
    out instead of all at once."""
    result, now = turn.result, turn.now
    result.outcome, result.error = "rate_limited", str(exc)
    wait_for = dt.timedelta(seconds=max(1.0, exc.retry_after or 1.0))
    at = turn.clock() + wait_for
    result.next_poll_at = next_slot(result.tenant_id, at, turn.cadence_s) if turn.budget_app else at
    with db.tenant_tx(result.tenant_id) as conn:
        conn.execute(_RATE_LIMITED, {"now": now, "next": result.next_poll_at, "cadence": turn.cadence_s,
                                     "app": turn.budget_app})
    log.info("poll of shop %s: rate limited, next poll at %s", result.slug,
             result.next_poll_at.isoformat(timespec="seconds"))
    return result
