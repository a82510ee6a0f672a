"""Removing old inbox events: the ones that are `done` (applied) and older than the
retention age. Pending, parked and dead events stay whatever their age: they still
need someone. Leads, touches and their decision log (lead_events) are the lead history
and are never removed here.

Every shop (deactivated ones too), one at a time, in its tenant transaction, in
batches: a year of a busy shop's events is not deleted in one long transaction.
"""
from __future__ import annotations

import datetime as dt

BATCH = 5000


def purge_done_events(db, older_than: dt.datetime, *, batch: int = BATCH) -> int:
    """Deletes done events processed (or, lacking that, received) before `older_than`.
    Returns how many were deleted."""
    with db.system_tx() as conn:
        tenant_ids = [r["t"] for r in conn.execute("SELECT t FROM all_tenant_ids() t").fetchall()]
    deleted = 0
    for tenant_id in tenant_ids:
        while True:
            with db.tenant_tx(tenant_id) as conn:
                n = conn.execute(
                    """DELETE FROM inbox_events WHERE id IN (
                           SELECT id FROM inbox_events
                            WHERE status = 'done' AND coalesce(processed_at, received_at) < %s
                            LIMIT %s)""",
                    (older_than, batch),
                ).rowcount
            deleted += n
            if n < batch:
                break
    return deleted
