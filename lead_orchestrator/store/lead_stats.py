"""A shop's lead figures, read from the tables: what each `leads` materialization in
Dagster carries (cumulative figures, and those of the batch it records) and what the
daily report draws.

Time to first touch is measured two ways, from the touches actually sent:
- from the estimate's creation in the CRM (`leads.order_created_at`): what the customer
  waited. A lead the poll found (its webhook was lost) waited for the poll too.
- from our first sight of it (`leads.first_seen_at`, when its event reached the inbox):
  what our own processing took.
A lead whose first step was deferred for quiet hours is counted apart, not as a slow
touch. The 30-second SLA counts every qualified lead whose first step was owed (not
skipped for want of a contact or cancelled because the lead ended first), not deferred,
and at least 30 s old or already touched.

Every query runs in the shop's tenant transaction (row-level security applies).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import psycopg

SLA_SECONDS = 30
# Leads ended by these reasons stopped because the customer (or their mail server) said
# not to write again; see lead_state.opt_out_contact and delivery.EMAIL_STOPS.
OPT_OUT_REASONS = ("opted_out", "unsubscribed", "spam_report")

# One row per qualified lead: when its first touch went out, whether anything it was sent
# arrived or bounced, whether its first step was owed and whether quiet hours deferred it.
# A touch confirmed by a status callback after an unknown outcome has no sent_at: the
# reservation time is when it went out.
_LEAD_FACTS = """
SELECT l.id, l.status, l.status_reason, l.source, l.order_created_at, l.first_seen_at,
       t.first_sent_at,
       coalesce(t.delivered, false) AS delivered,
       coalesce(t.bounced, false) AS bounced,
       coalesce(t.first_step_owed, false) AS first_step_owed,
       EXISTS (SELECT 1 FROM lead_events e
                WHERE e.lead_id = l.id AND e.kind = 'touch_deferred'
                  AND e.detail->>'reason' = 'quiet_hours' AND e.detail->>'step' = '0') AS deferred,
       extract(epoch FROM t.first_sent_at - l.order_created_at)::float8 AS from_created_s,
       extract(epoch FROM t.first_sent_at - l.first_seen_at)::float8 AS from_seen_s
  FROM leads l
  LEFT JOIN LATERAL (
        SELECT min(coalesce(x.sent_at, x.reserved_at)) FILTER (WHERE x.status = 'sent') AS first_sent_at,
               bool_or(x.delivery_status IN ('delivered', 'read')) AS delivered,
               bool_or(x.channel = 'email' AND x.delivery_status IN ('bounce', 'dropped')) AS bounced,
               bool_or(x.step = 0 AND x.status NOT IN ('skipped', 'cancelled')) AS first_step_owed
          FROM touches x WHERE x.lead_id = l.id) t ON true
 WHERE l.status <> 'disqualified'
"""

_SLA_ELIGIBLE = f"""(first_step_owed AND NOT deferred AND order_created_at IS NOT NULL
                    AND (first_sent_at IS NOT NULL OR order_created_at < %(now)s - interval '{SLA_SECONDS} seconds'))"""

_AGGREGATES = f"""
SELECT count(*) AS leads_total,
       count(*) FILTER (WHERE status = 'active') AS active,
       count(first_sent_at) AS touched,
       count(*) FILTER (WHERE delivered) AS delivered,
       count(*) FILTER (WHERE status = 'stopped' AND status_reason = 'replied') AS replied,
       count(*) FILTER (WHERE status = 'converted') AS converted,
       count(*) FILTER (WHERE status = 'stopped' AND status_reason = ANY(%(opt_out)s)) AS opted_out,
       count(*) FILTER (WHERE bounced) AS bounced,
       count(*) FILTER (WHERE deferred) AS deferred_quiet_hours,
       count(*) FILTER (WHERE source = 'poll') AS poll_found,
       count(*) FILTER (WHERE {_SLA_ELIGIBLE}) AS sla_eligible,
       count(*) FILTER (WHERE {_SLA_ELIGIBLE} AND from_created_s <= {SLA_SECONDS}) AS sla_met,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY from_created_s) FILTER (WHERE NOT deferred) AS created_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY from_created_s) FILTER (WHERE NOT deferred) AS created_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY from_seen_s) FILTER (WHERE NOT deferred) AS seen_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY from_seen_s) FILTER (WHERE NOT deferred) AS seen_p95
  FROM facts
"""


@dataclass(frozen=True)
class LeadFigures:
    """Counts and first-touch figures of a set of qualified leads."""

    leads_total: int = 0
    active: int = 0
    touched: int = 0
    delivered: int = 0
    replied: int = 0
    converted: int = 0
    opted_out: int = 0
    bounced: int = 0
    deferred_quiet_hours: int = 0
    poll_found: int = 0
    sla_eligible: int = 0
    sla_met: int = 0
    first_touch_p50_s: float | None = None  # from the estimate's creation in the CRM
    first_touch_p95_s: float | None = None
    first_sight_to_touch_p50_s: float | None = None  # from our first sight of it
    first_sight_to_touch_p95_s: float | None = None

    @property
    def share_under_sla(self) -> float | None:
        """Share of SLA-eligible leads touched within 30 s of the estimate's creation."""
        return self.sla_met / self.sla_eligible if self.sla_eligible else None

    def as_dict(self) -> dict:
        return {**asdict(self), "share_under_30s": self.share_under_sla}


@dataclass(frozen=True)
class ShopStats:
    """A shop's cumulative figures (every lead it ever had) and its inbox's stuck events."""

    figures: LeadFigures
    disqualified: int
    unknown_sends: int
    events_parked: int
    events_dead: int


def lead_figures(conn: psycopg.Connection, now: dt.datetime, *, lead_ids: list[int] | None = None,
                 first_seen_from: dt.datetime | None = None, first_seen_to: dt.datetime | None = None
                 ) -> LeadFigures:
    """Figures of the shop's qualified leads: all of them, or those named, or those first
    seen in [first_seen_from, first_seen_to)."""
    where, params = _scope(lead_ids, first_seen_from, first_seen_to)
    row = conn.execute(f"WITH facts AS MATERIALIZED ({_LEAD_FACTS}{where}) {_AGGREGATES}",
                       {**params, "now": now, "opt_out": list(OPT_OUT_REASONS)}).fetchone()
    return LeadFigures(
        **{k: row[k] for k in ("leads_total", "active", "touched", "delivered", "replied", "converted",
                               "opted_out", "bounced", "deferred_quiet_hours", "poll_found", "sla_eligible",
                               "sla_met")},
        first_touch_p50_s=_round(row["created_p50"]), first_touch_p95_s=_round(row["created_p95"]),
        first_sight_to_touch_p50_s=_round(row["seen_p50"]), first_sight_to_touch_p95_s=_round(row["seen_p95"]),
    )


def shop_stats(conn: psycopg.Connection, now: dt.datetime) -> ShopStats:
    extra = conn.execute(
        """SELECT (SELECT count(*) FROM leads WHERE status = 'disqualified') AS disqualified,
                  (SELECT count(*) FROM touches WHERE status = 'unknown') AS unknown_sends,
                  (SELECT count(*) FROM inbox_events WHERE status = 'parked') AS parked,
                  (SELECT count(*) FROM inbox_events WHERE status = 'dead') AS dead"""
    ).fetchone()
    return ShopStats(lead_figures(conn, now), extra["disqualified"], extra["unknown_sends"], extra["parked"],
                     extra["dead"])


def first_touch_latencies(conn: psycopg.Connection, *, first_seen_from: dt.datetime,
                          first_seen_to: dt.datetime) -> list[float]:
    """Seconds from the estimate's creation to the first touch, for each lead first seen in
    the period that was touched and not deferred for quiet hours (the report's histogram)."""
    where, params = _scope(None, first_seen_from, first_seen_to)
    rows = conn.execute(f"SELECT from_created_s FROM ({_LEAD_FACTS}{where}) f "
                        "WHERE NOT deferred AND from_created_s IS NOT NULL ORDER BY from_created_s",
                        params).fetchall()
    return [r["from_created_s"] for r in rows]


def _scope(lead_ids, first_seen_from, first_seen_to) -> tuple[str, dict]:
    clauses, params = [], {}
    if lead_ids is not None:
        clauses.append("l.id = ANY(%(lead_ids)s)")
        params["lead_ids"] = list(lead_ids)
    if first_seen_from is not None:
        clauses.append("l.first_seen_at >= %(seen_from)s")
        params["seen_from"] = first_seen_from
    if first_seen_to is not None:
        clauses.append("l.first_seen_at < %(seen_to)s")
        params["seen_to"] = first_seen_to
    return "".join(f" AND {c}" for c in clauses), params


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


@dataclass(frozen=True)
class MissedLead:
    """A lead that was owed its first touch within 30 s of the estimate's creation and did
    not get it (it may still be untouched)."""

    lead_id: int
    order_created_at: dt.datetime
    first_sent_at: dt.datetime | None
    source: str


def missed_first_touches(conn: psycopg.Connection, now: dt.datetime, *, first_seen_from: dt.datetime,
                         limit: int = 20) -> list[MissedLead]:
    """The SLA misses among leads first seen since `first_seen_from`, oldest estimate first."""
    where, params = _scope(None, first_seen_from, None)
    rows = conn.execute(
        f"""SELECT id, order_created_at, first_sent_at, source FROM ({_LEAD_FACTS}{where}) f
             WHERE {_SLA_ELIGIBLE} AND (from_created_s IS NULL OR from_created_s > {SLA_SECONDS})
             ORDER BY order_created_at, id LIMIT %(limit)s""",
        {**params, "now": now, "limit": limit},
    ).fetchall()
    return [MissedLead(r["id"], r["order_created_at"], r["first_sent_at"], r["source"]) for r in rows]
