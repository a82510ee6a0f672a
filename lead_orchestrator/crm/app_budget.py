"""A request budget shared by every shop of one CRM partner app, across every process
that calls the CRM for it (the poll's pollers, the dispatcher's workers, ingest runs).

Tekmetric allows 600 requests a minute per partner app, all its shops together; a
limiter that counts one process (crm/tekmetric/limiter.py) cannot keep two pollers and a
dispatcher under that. This keeps one row per app in PostgreSQL (`crm_app_budget`,
reached through two SECURITY DEFINER functions, sql/0018_poll_scale.sql) and spaces the
app's requests with GCRA, the "virtual scheduling" form of a token bucket:

- each request takes the next slot, `interval = 60 s / rate` after the previous one;
- idle time builds up a credit of at most `burst` requests, which may go at once;
- so in any window of W seconds at most (W + burst × interval) / interval + 1 requests
  leave: at 570 a minute (95 % of 600) and a burst of 20, at most 591 in any minute.

A slot further away than `max_wait_s` (or the caller's deadline) is not taken: the
caller gets CrmRateLimited with the wait and gives its work back (the poll moves the
shop to a later slot, the dispatcher returns its event to the queue) instead of holding
a thread. After a 429 the client that met it calls `rate_limited(wait)`, and every
process of the app holds back for that long.

Same interface as SlidingWindowLimiter (`acquire(deadline)`), so a TekmetricClient takes
either. `plan(shops, busy)` gives the poll's cadences for this app (budget.py).
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Callable

from lead_orchestrator.crm.errors import CrmRateLimited

SAFE_SHARE = 0.95  # of the published budget, what is planned and let through
BURST = 20  # requests that may go at once after a quiet spell


def app_key(crm: str, client_id: str) -> str:
    """The row of an app: the CRM and a digest of its client id (an id, not a secret,
    but nothing to show in a table dump either)."""
    return f"{crm}:{hashlib.sha256(client_id.encode()).hexdigest()[:16]}"


class AppBudget:
    def __init__(self, db, app: str, budget_per_minute: int, *, planner: Callable | None = None,
                 burst: int = BURST, max_wait_s: float = 2.0, safe_share: float = SAFE_SHARE,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if budget_per_minute <= 0 or burst < 0:
            raise ValueError("a budget needs a positive number of requests a minute and a burst >= 0")
        self.db, self.app = db, app
        self.budget_per_minute = budget_per_minute
        self.requests_per_minute = math.floor(budget_per_minute * safe_share)
        self.burst = burst
        self.interval_ms = 60_000.0 / self.requests_per_minute
        self.tolerance_ms = burst * self.interval_ms
        self.max_wait_s = max_wait_s
        self._planner = planner
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self.waited_s = 0.0  # this process: time callers slept for a slot
        self.refused = 0  # this process: callers sent away with CrmRateLimited

    @property
    def max_per_minute(self) -> int:
        """The most this budget lets through in any 60 seconds: (60 s + burst × interval)
        / interval + 1."""
        return self.requests_per_minute + self.burst + 1

    def acquire(self, deadline: float | None = None) -> None:
        """Returns when a request may be sent (its slot is taken), or raises CrmRateLimited."""
        max_wait = self.max_wait_s
        if deadline is not None:
            max_wait = min(max_wait, deadline - self._clock())
        with self.db.system_tx() as conn:
            row = conn.execute("SELECT * FROM crm_app_reserve(%s, %s, %s, %s)",
                               (self.app, self.interval_ms, self.tolerance_ms, max(0.0, max_wait))).fetchone()
        if not row["granted"]:
            with self._lock:
                self.refused += 1
            why = "holding back after a 429" if row["held"] else "its request budget is spent"
            raise CrmRateLimited(f"{self.app}: the partner app is {why} for {row['wait_s']:.1f}s", None,
                                 retry_after=row["wait_s"])
        if row["wait_s"] > 0:
            with self._lock:
                self.waited_s += row["wait_s"]
            self._sleep(row["wait_s"])

    def rate_limited(self, wait_s: float) -> None:
        """The CRM answered 429: every process of the app waits `wait_s` before its next request."""
        with self.db.system_tx() as conn:
            conn.execute("SELECT crm_app_limited(%s, %s)", (self.app, max(0.0, wait_s)))

    def plan(self, shops: int, busy: int):
        """The poll's cadences for `shops` shops of this app, `busy` of them busy."""
        if self._planner is None:
            raise RuntimeError(f"{self.app}: no poll planner")
        return self._planner(shops, busy=busy, budget_per_minute=self.budget_per_minute)
