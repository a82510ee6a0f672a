"""How often each Tekmetric shop can be polled inside the partner app's request budget.

Tekmetric allows 600 requests a minute per partner app (300 on the sandbox), shared by
every shop the app serves; above it, 429s. A poll cycle costs one `updatedDateStart`
query per shop (one page while fewer than 100 orders changed in the window) plus, every
`deleted_every` cycles, one `deletedDateStart` query (deletions need their own query).
Plans use 95 % of the budget (570 of 600: the client's limiter enforces the same figure,
and the rest absorbs the difference between our clock's window and Tekmetric's), and of
that keep some back for the fetches webhooks and polled changes cause
(`reserve_per_minute`: each new or changed estimate costs three requests — the order, its
customer, its vehicle).

    per-shop requests/minute = 60 / interval × (1 + 1 / deleted_every)
    shops × per-shop requests/minute ≤ 0.95 × budget − reserve

With the defaults (600/min → 570, 120 kept back, deletions every 10th cycle) a 30-second
cadence serves 204 shops; 1,000 shops get a 147-second cadence. When not every shop
fits at the target cadence, the busy shops (an open lead, a recent change) keep it and
the quiet ones share what is left; when even the busy ones do not fit, every shop gets
the same longer cadence. Intervals are rounded up to whole seconds, so the plan never
spends more than it was given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

BUDGET_PER_MINUTE = 600
SANDBOX_BUDGET_PER_MINUTE = 300
SAFE_SHARE = 0.95  # of the published budget, what we plan with and the limiter allows
RESERVE_PER_MINUTE = 120  # 40 estimates a minute fetched (order, customer, vehicle) across the app
TARGET_INTERVAL_S = 30
DELETED_EVERY = 10  # cycles between two deletion queries of a shop (5 minutes at 30 s)


@dataclass(frozen=True)
class PollPlan:
    shops: int
    busy_shops: int
    busy_interval_s: int  # each busy shop's cadence
    quiet_interval_s: int  # each quiet shop's cadence
    deleted_every: int  # a shop's deletion query runs every this many of its cycles
    poll_budget_per_minute: float  # the safe share of the budget minus the reserve
    requests_per_minute: float  # what the plan spends at most (one page per query)

    @property
    def at_target(self) -> bool:
        return self.busy_interval_s == self.quiet_interval_s == TARGET_INTERVAL_S


def safe_per_minute(budget_per_minute: int) -> int:
    return math.floor(budget_per_minute * SAFE_SHARE)


def _per_minute(interval_s: float, deleted_every: int) -> float:
    return 60.0 / interval_s * (1 + 1 / deleted_every)


def _interval_for(shops: int, budget: float, deleted_every: int, target_s: int) -> int:
    """The shortest whole-second interval (not below the target) at which `shops` shops
    fit in `budget` requests a minute."""
    if shops == 0:
        return target_s
    return max(target_s, math.ceil(shops * 60.0 * (1 + 1 / deleted_every) / budget - 1e-9))


def plan_poll(shops: int, *, busy: int = 0, budget_per_minute: int = BUDGET_PER_MINUTE,
              reserve_per_minute: int = RESERVE_PER_MINUTE, target_interval_s: int = TARGET_INTERVAL_S,
              deleted_every: int = DELETED_EVERY) -> PollPlan:
    if shops < 0 or not 0 <= busy <= shops:
        raise ValueError("need 0 <= busy <= shops")
    if target_interval_s <= 0 or deleted_every <= 0:
        raise ValueError("the target interval and deleted_every must be positive")
    poll_budget = float(safe_per_minute(budget_per_minute) - reserve_per_minute)
    if poll_budget <= 0:
        raise ValueError("the reserve leaves nothing of the budget for polling")
    at_target = _per_minute(target_interval_s, deleted_every)
    quiet = shops - busy
    if shops * at_target <= poll_budget:
        busy_s = quiet_s = target_interval_s
    elif busy and busy * at_target < poll_budget:
        busy_s = target_interval_s
        quiet_s = _interval_for(quiet, poll_budget - busy * at_target, deleted_every, target_interval_s)
    else:
        busy_s = quiet_s = _interval_for(shops, poll_budget, deleted_every, target_interval_s)
    spent = busy * _per_minute(busy_s, deleted_every) + quiet * _per_minute(quiet_s, deleted_every)
    return PollPlan(shops, busy, busy_s, quiet_s, deleted_every, poll_budget, spent)


def shops_served(interval_s: int = TARGET_INTERVAL_S, *, budget_per_minute: int = BUDGET_PER_MINUTE,
                 reserve_per_minute: int = RESERVE_PER_MINUTE, deleted_every: int = DELETED_EVERY) -> int:
    """How many shops one partner app can poll at this cadence."""
    if interval_s <= 0 or deleted_every <= 0:
        raise ValueError("the interval and deleted_every must be positive")
    poll_budget = safe_per_minute(budget_per_minute) - reserve_per_minute
    return max(0, math.floor(poll_budget / _per_minute(interval_s, deleted_every) + 1e-9))
