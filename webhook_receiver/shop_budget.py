"""The per-shop webhook rate limit, held across every receiver process.

The count lives in PostgreSQL (table webhook_rate_windows, migration 0019), but a
request does not go there: each process *leases* a few requests' worth of a shop's
budget at a time (`lease_webhook_budget`) and spends them from memory, so a request
costs a dictionary look-up and a subtraction, and PostgreSQL sees one statement per
lease. Leases are granted under a row lock, so all processes together admit at most the
limit; the price is the other way round: a process may refuse while another still holds
leased requests it has not used (at most `lease_size` each, and less near the limit,
since a lease is at most half of what is left).

- A lease lasts until the end of its window; what was not used by then goes back to
  that window's count with the process's next lease (it weighs on the next window).
- A new lease is asked for in the background when a quarter of the last one is left,
  so that a busy shop's requests do not wait for it.
- A refusal is remembered until the moment PostgreSQL said a request would fit again:
  a shop that goes on sending past its limit costs no database work.
- Concurrent requests that find no budget share one lease request.

Everything here is bookkeeping without I/O: the lease itself is a coroutine given to
ShopBudgets (webhook_receiver/guards.py passes the one that calls PostgreSQL).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from limits import parse as parse_rate

log = logging.getLogger(__name__)

# A lease is at most an eighth of the limit, and never more than this: a round trip per
# thousand requests is nothing, and what one process holds unused stays small.
MAX_LEASE = 1000
# Budgets of shops not heard from lately are forgotten past this many (random shop names
# cannot grow the process's memory without limit).
MAX_SHOPS = 10_000
# Expired rows are deleted with one lease a minute, at most this many at a time (more at
# the next lease when there were more).
CLEAN_EVERY_S = 60.0
CLEAN_AT_MOST = 1000
# A refusal is remembered at least this long, however soon PostgreSQL said there is room.
MIN_REFUSAL_S = 0.05
# An index row is bounded and text cannot hold NUL: a name that long or that odd is no
# shop's; it only needs a key of its own.
MAX_NAME = 128


@dataclass(frozen=True)
class LeaseRequest:
    vendor: str
    shop: str
    limit: int
    period_s: int
    wanted: int
    return_window: int | None  # the window of `returned`
    returned: int  # leased earlier, unused when their window ended
    clean_at_most: int  # expired rows to delete on the way (0: none)


@dataclass(frozen=True)
class Grant:
    granted: int
    window: int
    window_left_s: float  # the lease is good for this long
    retry_after_s: float  # when nothing was granted: until a request would be
    cleaned: int = 0


Lease = Callable[[LeaseRequest], Awaitable[Grant]]


class _Budget:
    """What this process holds of one shop's budget."""

    __slots__ = ("tokens", "window", "expires", "low_water", "refused_until", "pending", "unused")

    def __init__(self) -> None:
        self.tokens = 0
        self.window: int | None = None
        self.expires = 0.0  # monotonic; no later than the window's end
        self.low_water = 0
        self.refused_until = 0.0
        self.pending: asyncio.Future | None = None
        self.unused: tuple[int, int] | None = None  # (window, requests) to give back


def key_part(name: str) -> str:
    return name[:MAX_NAME].replace("\x00", "\ufffd")


class ShopBudgets:
    """`await admit(vendor, shop)`: None when the request may go on, otherwise the
    seconds until this shop may send again. Raises whatever the lease raised when there
    was no budget in hand and none could be leased (the database is down)."""

    def __init__(self, rate: str, lease: Lease, *, clock: Callable[[], float] = time.monotonic,
                 max_lease: int = MAX_LEASE):
        item = parse_rate(rate)
        self.limit, self.period_s = int(item.amount), int(item.get_expiry())
        if self.limit < 1 or self.period_s < 1:
            raise ValueError(f"a webhook rate limit must allow at least one request per second or longer: {rate!r}")
        self.lease_size = max(1, min(max_lease, self.limit // 8))
        self._lease, self._clock = lease, clock
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._next_clean = 0.0
        self._renewals: set[asyncio.Task] = set()

    async def admit(self, vendor: str, shop: str) -> float | None:
        key = (key_part(vendor), key_part(shop))
        budget = self._budgets.get(key)
        if budget is None:
            if len(self._budgets) >= MAX_SHOPS:
                self._forget_idle()
            budget = self._budgets[key] = _Budget()
        while True:
            now = self._clock()
            if budget.tokens > 0 and now < budget.expires:
                budget.tokens -= 1
                if budget.tokens <= budget.low_water and budget.pending is None and now >= budget.refused_until:
                    self._start_renewal(key, budget)  # in advance: nobody waits for it
                return None
            if now < budget.refused_until:
                return budget.refused_until - now
            if budget.pending is None:
                self._start_renewal(key, budget)
            # Shielded: a client that hangs up must not cancel the lease the others wait for.
            await asyncio.shield(budget.pending)

    async def close(self) -> None:
        for task in list(self._renewals):
            task.cancel()
        await asyncio.gather(*self._renewals, return_exceptions=True)

    def _start_renewal(self, key: tuple[str, str], budget: _Budget) -> None:
        budget.pending = task = asyncio.ensure_future(self._renew(key, budget))
        self._renewals.add(task)
        task.add_done_callback(self._renewal_done)

    def _renewal_done(self, task: asyncio.Task) -> None:
        self._renewals.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Requests waiting for it saw the error; one asked in advance leaves the budget
            # in hand as it was, and a request that finds none asks again.
            log.debug("a webhook budget lease failed: %s", task.exception())

    async def _renew(self, key: tuple[str, str], budget: _Budget) -> None:
        try:
            now = self._clock()
            if budget.tokens > 0 and now >= budget.expires:
                self._give_back(budget)
            clean = now >= self._next_clean
            if clean:
                self._next_clean = now + CLEAN_EVERY_S
            window, returned = budget.unused or (None, 0)
            grant = await self._lease(LeaseRequest(
                vendor=key[0], shop=key[1], limit=self.limit, period_s=self.period_s, wanted=self.lease_size,
                return_window=window, returned=returned, clean_at_most=CLEAN_AT_MOST if clean else 0))
        finally:
            budget.pending = None
        if budget.unused == (window, returned):
            budget.unused = None
        if grant.cleaned >= CLEAN_AT_MOST:
            self._next_clean = now  # more to delete: again with the next lease
        self._take(budget, grant, asked_at=now)

    def _take(self, budget: _Budget, grant: Grant, asked_at: float) -> None:
        if grant.window != budget.window:
            if budget.tokens > 0:  # the old window ended while this lease was on its way
                self._give_back(budget)
            budget.window = grant.window
            budget.tokens = 0
        # asked_at + what was left at the server's moment: never later than the window's end.
        budget.expires = asked_at + grant.window_left_s
        budget.tokens += grant.granted
        if grant.granted:
            budget.low_water = grant.granted // 4
            budget.refused_until = 0.0
        else:
            # At least a moment: a refusal "until just now" would send the next request
            # straight back to the database.
            budget.refused_until = max(asked_at + grant.retry_after_s, self._clock() + MIN_REFUSAL_S)

    @staticmethod
    def _give_back(budget: _Budget) -> None:
        if budget.window is not None:
            budget.unused = (budget.window, budget.tokens)
        budget.tokens = 0

    def _forget_idle(self) -> None:
        now = self._clock()
        self._budgets = {k: b for k, b in self._budgets.items()
                         if b.pending is not None or now < b.expires or now < b.refused_until}
        if len(self._budgets) > MAX_SHOPS:
            self._budgets = {k: b for k, b in self._budgets.items() if b.pending is not None}


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
