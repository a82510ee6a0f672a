"""Keeps one process's requests to a Tekmetric partner app under its per-minute budget.

The poll plan (budget.py) chooses cadences that fit the budget on average; this makes
sure bursts do not break it (a run of webhooks each costing three fetches, a poll cycle
starting late and catching up). It is a sliding window over the last 60 seconds of
*sent* requests: a request that would make it fuller than the limit waits for the oldest
to leave the window, and when that wait is longer than `max_wait_s` the caller gets
CrmRateLimited at once (a pace: the event goes back to its queue, the poll ends the
shop's turn) instead of holding a worker.

It counts only this process. Processes that share one partner app (the dispatcher, the
poll, ingest runs) need a shared limiter with the same `acquire` (e.g. a row per app, as
crm_pace keeps one per shop), or a share of the budget each.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from lead_orchestrator.crm.errors import CrmRateLimited

WINDOW_S = 60.0


class SlidingWindowLimiter:
    def __init__(self, requests: int, window_s: float = WINDOW_S, *, max_wait_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if requests <= 0 or window_s <= 0:
            raise ValueError("a limiter needs a positive number of requests and window")
        self.requests, self.window_s, self.max_wait_s = requests, window_s, max_wait_s
        self._clock, self._sleep = clock, sleep
        self._sent: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.waited_s = 0.0  # total time callers slept here
        self.refused = 0  # callers sent away with CrmRateLimited

    def acquire(self, deadline: float | None = None) -> None:
        """Returns when a request may be sent (its slot is taken), or raises CrmRateLimited."""
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and self._sent[0] <= now - self.window_s:
                    self._sent.popleft()
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return
                wait = self._sent[0] + self.window_s - now
                if wait > self.max_wait_s or (deadline is not None and now + wait >= deadline):
                    self.refused += 1
                    raise CrmRateLimited(f"Tekmetric: this process's share of the partner app's budget is spent "
                                         f"for {wait:.1f}s", None, retry_after=wait)
                self.waited_s += wait
            self._sleep(wait)

    def in_window(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for t in self._sent if t > now - self.window_s)
