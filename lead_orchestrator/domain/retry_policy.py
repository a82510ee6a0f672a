"""What happens to an inbox event whose CRM fetch failed: a plain decision, no I/O.

- rate limited: back to the queue after the wait the CRM (or our pacer) asked for; no
  attempt is spent, so a busy shop never loses an event to its own limit;
- CRM unavailable (connection refused, timeouts, 5xx): back to the queue with capped
  exponential backoff, for as long as the lead could still qualify (the shop's maximum
  lead age, counted from the estimate's creation) — then dead, with that reason;
- unauthorized: parked, shop-wide, until the credentials are fixed;
- unexpected (a bug, a malformed answer): a few tries with backoff, then dead.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MAX_UNEXPECTED_ERRORS = 5
BACKOFF_BASE = dt.timedelta(seconds=2)
BACKOFF_CAP = dt.timedelta(minutes=5)

RATE_LIMITED, UNAVAILABLE, UNAUTHORIZED, UNEXPECTED = "rate_limited", "unavailable", "unauthorized", "unexpected"


@dataclass(frozen=True)
class Decision:
    action: str  # "retry" | "park" | "dead"
    reason: str
    delay: dt.timedelta = dt.timedelta(0)
    spends_attempt: bool = True  # False: the claim's attempt is given back


def backoff(attempts: int) -> dt.timedelta:
    """2 s, 4 s, 8 s, … capped at 5 minutes."""
    return min(BACKOFF_BASE * 2 ** max(0, min(attempts - 1, 20)), BACKOFF_CAP)


def lead_deadline(estimate_created: dt.datetime | None, first_seen: dt.datetime, max_lead_age_days: int) -> dt.datetime:
    """Past this moment the estimate is too old to qualify, so retrying is pointless.
    Counted from the estimate's creation when known, else from when we first saw it."""
    return (estimate_created or first_seen) + dt.timedelta(days=max_lead_age_days)


def after_failure(kind: str, error: str, *, attempts: int, unexpected_errors: int, now: dt.datetime,
                  deadline: dt.datetime, retry_after: float | None = None) -> Decision:
    if kind == UNAUTHORIZED:
        return Decision("park", f"waiting for credentials: {error}", spends_attempt=False)
    if kind == RATE_LIMITED:
        delay = dt.timedelta(seconds=max(0.5, retry_after or 1.0))
        return Decision("retry", f"rate limited: {error}", delay, spends_attempt=False)
    if kind == UNEXPECTED:
        if unexpected_errors + 1 >= MAX_UNEXPECTED_ERRORS:
            return Decision("dead", f"gave up after {unexpected_errors + 1} unexpected errors: {error}")
        return Decision("retry", f"unexpected error {unexpected_errors + 1} of {MAX_UNEXPECTED_ERRORS}: {error}",
                        backoff(unexpected_errors + 1))
    delay = backoff(attempts)
    if retry_after:
        delay = max(delay, dt.timedelta(seconds=retry_after))
    if now + delay > deadline:
        return Decision("dead", f"the lead can no longer qualify (too old since {deadline:%Y-%m-%d %H:%M} UTC); "
                                f"last error: {error}")
    return Decision("retry", f"CRM unavailable (attempt {attempts}): {error}", delay)
