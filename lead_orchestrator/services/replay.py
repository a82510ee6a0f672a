"""Giving inbox events another chance, on an operator's word or because the reason they
waited for is gone. Replaying is always safe: an event only re-runs the ingest path, and
every message is sent at most once per (lead, step, channel) whatever runs it."""
from __future__ import annotations

import datetime as dt

import psycopg

REPLAYABLE = ("pending", "parked", "dead")

_REQUEUE = """
    UPDATE inbox_events
       SET status = 'pending', available_at = clock_timestamp(), claimed_by = NULL, attempts = 0,
           unexpected_errors = 0, status_changed_at = clock_timestamp(),
           error = %(note)s || coalesce(error, status)
     WHERE tenant_id = %(tenant_id)s AND status = ANY(%(statuses)s)
       AND (%(order_id)s::text IS NULL OR object_id = %(order_id)s)
       AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)
       AND (%(until)s::timestamptz IS NULL OR received_at < %(until)s)
    RETURNING id"""


def replay_events(conn: psycopg.Connection, tenant_id: int, *, statuses: tuple[str, ...] = ("parked", "dead"),
                  order_id: str | None = None, since: dt.datetime | None = None,
                  until: dt.datetime | None = None) -> int:
    """Puts the shop's matching events back in the queue, at once and with
    fresh retry budgets; returns how many. `pending` events (waiting out a backoff) may be
    included to cut their wait short."""
    unknown = set(statuses) - set(REPLAYABLE)
    if unknown or not statuses:
        raise ValueError(f"can replay events that are {', '.join(REPLAYABLE)}; not {', '.join(sorted(unknown)) or 'none'}")
    rows = conn.execute(_REQUEUE, {"tenant_id": tenant_id, "statuses": list(statuses), "order_id": order_id, "since": since,
                                   "until": until, "note": "replayed by an operator after: "}).fetchall()
    return len(rows)
