"""Pacing calls to one shop's CRM across every process that makes them (the dispatcher's
workers, ingest runs, the poll), so that a burst of estimates is spread at the rate the
CRM accepts instead of turning into a storm of 429s.

The state is one `crm_pace` row per shop: the next free request slot and the current
spacing. A caller reserves a slot in one statement (the row lock orders concurrent
callers) and sleeps until it; a slot further away than `max_wait` is not taken — the
caller gets `CrmRateLimited` and gives its event back to the queue, so no worker sits
idle on one busy shop while others wait. A 429 doubles the spacing and pushes the next
slot past the CRM's Retry-After; each granted slot shrinks the spacing back towards
the shop's base rate (by 1 % in the 10 s after a 429, by 10 % after that). So a shop's
calls settle just under whatever limit its CRM enforces, published or not, and a lifted
limit is forgotten within seconds. A caller whose slot was granted before a 429 arrived asks
again after its wait instead of walking into the same limit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from lead_orchestrator.crm.errors import CrmRateLimited

DEFAULT_REQUESTS_PER_SECOND = 10.0  # ShopMonkey publishes no limit; ~100 quick calls pass
MAX_INTERVAL_MS = 5000.0
# Each granted slot brings the spacing back towards the base rate: gently (1 %) in the
# 10 s after a 429, then briskly (10 %), so a lifted limit is forgotten within seconds.
RECOVERY_AFTER_429, RECOVERY = 0.99, 0.90
QUIET_AFTER_429_S = 10

# One round trip per request: take the next slot if it is within `max_wait`, else leave
# the row as it is and say how far off the next slot is.
_RESERVE = """
    INSERT INTO crm_pace AS p (tenant_id, next_slot, interval_ms, granted)
    VALUES (current_tenant_id(), now() + %(base)s * interval '1 millisecond', %(base)s, true)
    ON CONFLICT (tenant_id) DO UPDATE SET
        granted = p.next_slot <= now() + %(max_wait)s * interval '1 second',
        interval_ms = CASE WHEN p.next_slot <= now() + %(max_wait)s * interval '1 second'
                           THEN greatest(%(base)s, p.interval_ms * CASE
                                WHEN p.limited_at > now() - %(quiet)s * interval '1 second'
                                THEN %(slow)s ELSE %(fast)s END)
                           ELSE p.interval_ms END,
        next_slot = CASE WHEN p.next_slot <= now() + %(max_wait)s * interval '1 second'
                         THEN greatest(p.next_slot, now())
                              + greatest(%(base)s, p.interval_ms * CASE
                                    WHEN p.limited_at > now() - %(quiet)s * interval '1 second'
                                    THEN %(slow)s ELSE %(fast)s END) * interval '1 millisecond'
                         ELSE p.next_slot END
    RETURNING granted, now() AS asked_at,
              extract(epoch FROM next_slot - interval_ms * interval '1 millisecond' - now())::float AS wait_s,
              extract(epoch FROM next_slot - now())::float AS until_next_s"""
_LIMITED_SINCE = "SELECT coalesce(limited_at > %(since)s, false) AS limited FROM crm_pace"

_LIMITED = """
    INSERT INTO crm_pace AS p (tenant_id, next_slot, interval_ms, limited_at, limited_count)
    VALUES (current_tenant_id(), clock_timestamp() + %(after)s * interval '1 second', %(base)s * 2,
            clock_timestamp(), 1)
    ON CONFLICT (tenant_id) DO UPDATE SET
        -- The requests in flight when the limit hit all come back 429: slow down once
        -- per second of 429s, not once per answer.
        interval_ms = CASE WHEN p.limited_at > clock_timestamp() - interval '1 second' THEN p.interval_ms
                           ELSE least(%(max_ms)s, p.interval_ms * 2) END,
        next_slot = greatest(p.next_slot, clock_timestamp() + %(after)s * interval '1 second'),
        limited_at = clock_timestamp(), limited_count = p.limited_count + 1"""


@dataclass
class CrmPacer:
    """One shop's pacer. `db` is a lead_orchestrator.store.db.Database."""

    db: object
    tenant_id: int
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    max_wait_s: float = 2.0

    @property
    def base_interval_ms(self) -> float:
        return 1000.0 / max(0.01, self.requests_per_second)

    def wait_for_slot(self, sleep=time.sleep) -> None:
        """Blocks until this caller's slot (at most `max_wait_s`), or raises CrmRateLimited."""
        while True:
            with self.db.tenant_tx(self.tenant_id) as conn:
                row = self._reserve(conn)
            if self._take(row, sleep):
                return

    def reserved_in(self, conn) -> "ReservedPacer":
        """Reserves the next slot inside the caller's transaction of this shop (one round
        trip instead of a transaction of its own): the pacer to hand the shop's client,
        whose first request takes that slot and every later one asks as usual."""
        return ReservedPacer(self, self._reserve(conn))

    def _reserve(self, conn):
        return conn.execute(_RESERVE, {"base": self.base_interval_ms, "max_wait": self.max_wait_s,
                                       "slow": RECOVERY_AFTER_429, "fast": RECOVERY,
                                       "quiet": QUIET_AFTER_429_S}).fetchone()

    def _take(self, row, sleep) -> bool:
        """Waits for a reserved slot; False when a 429 came meanwhile (ask again)."""
        if not row["granted"]:
            raise CrmRateLimited("paced: this shop's CRM budget is spent for now",
                                 retry_after=row["until_next_s"])
        if row["wait_s"] <= 0:
            return True
        sleep(row["wait_s"])
        with self.db.tenant_tx(self.tenant_id) as conn:
            hit = conn.execute(_LIMITED_SINCE, {"since": row["asked_at"]}).fetchone()
        return not hit["limited"]

    def rate_limited(self, retry_after: float | None) -> None:
        """The CRM answered 429: every caller for this shop slows down."""
        with self.db.tenant_tx(self.tenant_id) as conn:
            conn.execute(_LIMITED, {"after": retry_after if retry_after is not None else 1.0,
                                    "base": self.base_interval_ms, "max_ms": MAX_INTERVAL_MS})


class ReservedPacer:
    """A shop's pacer whose first slot is already reserved (CrmPacer.reserved_in)."""

    def __init__(self, pacer: CrmPacer, row) -> None:
        self._pacer, self._row = pacer, row

    def wait_for_slot(self, sleep=time.sleep) -> None:
        row, self._row = self._row, None
        if row is None or not self._pacer._take(row, sleep):
            self._pacer.wait_for_slot(sleep)

    def rate_limited(self, retry_after: float | None) -> None:
        self._pacer.rate_limited(retry_after)


def pacer_for(db, shop) -> CrmPacer:
    """The shop's pacer; `crm_requests_per_second` in the shop's settings overrides the default."""
    rate = (shop.settings or {}).get("crm_requests_per_second") or DEFAULT_REQUESTS_PER_SECOND
    return CrmPacer(db, shop.id, float(rate))
