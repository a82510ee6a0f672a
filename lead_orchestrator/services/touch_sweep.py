"""Sends every touch that is owed, across all active shops: what the touch-point job runs."""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from typing import Callable, Iterable

from lead_orchestrator.services.send_reconcile import reconcile_in_flight_sends
from lead_orchestrator.store.shops import load_shop
from lead_orchestrator.store.touches import due_touch_ids
from lead_orchestrator.services.touches import send_touch

log = logging.getLogger(__name__)


def active_tenant_ids(db) -> list[int]:
    with db.system_tx() as conn:
        return [r["active_tenant_ids"] for r in conn.execute("SELECT active_tenant_ids()").fetchall()]


def send_due_touches(db, vendors, *, now: dt.datetime, due_before: dt.datetime,
                     clock: Callable[[], dt.datetime] | None = None, tenant_ids: Iterable[int] | None = None,
                     sleep: Callable[[float], None] = time.sleep) -> Counter:
    """For each shop (all active ones, or `tenant_ids`): settle sends whose outcome was
    not recorded (reservations of a gone or stale sender become `unknown`; unknown ones
    are asked about at the vendor: send_reconcile), then send what is due by
    `due_before` (and not after `now`).

    Sending only what is owed makes a run idempotent: running a window again, or
    backfilling it after an outage, sends what is still owed and nothing already sent.
    `clock` (optional) gives the time of each send and `sleep` waits between quick
    retries, so tests can drive time without sleeping. Returns counts of outcomes."""
    report: Counter = Counter()
    tenant_ids = active_tenant_ids(db) if tenant_ids is None else list(tenant_ids)
    for kind, count in reconcile_in_flight_sends(db, vendors, now, tenant_ids=tenant_ids).items():
        report[f"reconcile_{kind}"] += count
    for tenant_id in tenant_ids:
        with db.tenant_tx(tenant_id) as conn:
            shop = load_shop(conn, tenant_id, db.box)
            if shop is None or not shop.active:
                continue
            ids = due_touch_ids(conn, min(now, due_before))
        for touch_id in ids:
            try:
                outcome = send_touch(db, shop, touch_id, vendors, now=clock() if clock else now, sleep=sleep)
            except Exception:  # noqa: BLE001 - one shop's failure must not stop the others
                log.exception("touch %s of shop %s failed", touch_id, shop.slug)
                report["error"] += 1
                continue
            report[outcome.status if outcome.reason != "not_due" else "not_due"] += 1
    return report
