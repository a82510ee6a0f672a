"""Per-shop health: the figures behind the asset checks on `leads`, read from the
tables, and the rules that turn them into pass/fail (plain functions, no I/O).

The five checks, each over every active shop, naming each failing shop with its reason
and since when:

- first_touch_sla: leads first seen in the last hour that were owed their first touch
  within 30 s of the estimate's creation in the CRM, and got it (quiet-hour deferrals
  counted apart). ERROR below SLA_TARGET.
- stuck_events: inbox events `parked` (waiting for CRM credentials) or `dead` (given up;
  those that died in the last week). 0 expected; ERROR.
- oldest_pending_event: the oldest event still waiting (pending or being processed).
  WARN after a minute, ERROR after five.
- crm_poll: the backup poll's health per shop. ERROR when the CRM refuses the shop's
  key, WARN while its calls fail.
- unknown_sends: sends whose outcome is unknown (never re-sent automatically) in the last
  week. WARN: someone should look at the provider's log.

Reads run in each shop's tenant transaction (row-level security applies).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import psycopg

from lead_orchestrator import redaction
from lead_orchestrator.store.lead_stats import SLA_SECONDS, LeadFigures, MissedLead, lead_figures, missed_first_touches
from lead_orchestrator.services.touch_sweep import active_tenant_ids

SLA_WINDOW = dt.timedelta(hours=1)
SLA_TARGET = 0.95
# A dead event or an unknown send stops counting after this long: by then the lead is past
# any shop's usual max age, and the alert went out when it appeared.
RECENT = dt.timedelta(days=7)
PENDING_WARN = dt.timedelta(minutes=1)
PENDING_ERROR = dt.timedelta(minutes=5)
ERROR, WARN = "ERROR", "WARN"
CHECK_NAMES = ("first_touch_sla", "stuck_events", "oldest_pending_event", "crm_poll", "unknown_sends")


@dataclass(frozen=True)
class EventsInState:
    count: int = 0
    since: dt.datetime | None = None  # the oldest one entered the state then
    error: str | None = None  # the latest one's recorded reason


@dataclass(frozen=True)
class ShopHealth:
    tenant_id: int
    slug: str
    sla: LeadFigures = field(default_factory=LeadFigures)  # leads first seen in the SLA window
    sla_missed: tuple[MissedLead, ...] = ()
    parked: EventsInState = field(default_factory=EventsInState)
    dead: EventsInState = field(default_factory=EventsInState)  # recent ones
    pending: int = 0
    oldest_pending_at: dt.datetime | None = None
    poll_health: str = "ok"  # ok | failing | unauthorized (poll_state.health)
    poll_error: str | None = None
    poll_last_success_at: dt.datetime | None = None
    poll_failing_since: dt.datetime | None = None
    unknown_sends: int = 0
    unknown_since: dt.datetime | None = None


@dataclass(frozen=True)
class ShopProblem:
    slug: str
    severity: str
    reason: str
    since: dt.datetime | None


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    shops_checked: int
    problems: tuple[ShopProblem, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def severity(self) -> str:
        return ERROR if any(p.severity == ERROR for p in self.problems) or not self.problems else WARN

    @property
    def description(self) -> str:
        if not self.problems:
            return f"all {self.shops_checked} shops pass"
        return f"{len(self.problems)} of {self.shops_checked} shops failing: " + "; ".join(
            f"{p.slug}: {p.reason}" for p in self.problems)


# --- figures from the database -------------------------------------------------------

def shop_health(conn: psycopg.Connection, tenant_id: int, now: dt.datetime) -> ShopHealth:
    """One shop's figures; `conn` is a transaction of that tenant."""
    shop = conn.execute("SELECT slug, created_at FROM tenants WHERE id = %s", (tenant_id,)).fetchone()
    window_start = now - SLA_WINDOW

    def in_state(status: str, since: dt.datetime | None = None) -> EventsInState:
        row = conn.execute(
            """SELECT count(*) AS n, min(status_changed_at) AS since,
                      (array_agg(error ORDER BY status_changed_at DESC))[1] AS error
                 FROM inbox_events WHERE status = %s AND (%s::timestamptz IS NULL OR status_changed_at >= %s)""",
            (status, since, since),
        ).fetchone()
        return EventsInState(row["n"], row["since"], _clean(row["error"]))

    pending = conn.execute("SELECT count(*) AS n, min(received_at) AS oldest FROM inbox_events "
                           "WHERE status IN ('pending', 'processing')").fetchone()
    poll = conn.execute("SELECT health, last_error, last_success_at FROM poll_state").fetchone()
    unknown = conn.execute("SELECT count(*) AS n, min(updated_at) AS since FROM touches "
                           "WHERE status = 'unknown' AND updated_at >= %s", (now - RECENT,)).fetchone()
    return ShopHealth(
        tenant_id=tenant_id, slug=shop["slug"],
        sla=lead_figures(conn, now, first_seen_from=window_start),
        sla_missed=tuple(missed_first_touches(conn, now, first_seen_from=window_start)),
        parked=in_state("parked"), dead=in_state("dead", now - RECENT),
        pending=pending["n"], oldest_pending_at=pending["oldest"],
        poll_health=poll["health"] if poll else "ok",
        poll_error=_clean(poll["last_error"]) if poll else None,
        poll_last_success_at=poll["last_success_at"] if poll else None,
        # Not working since its last success; a shop that never succeeded, since it was added.
        poll_failing_since=(poll["last_success_at"] or shop["created_at"]) if poll else None,
        unknown_sends=unknown["n"], unknown_since=unknown["since"],
    )


def all_shops_health(db, now: dt.datetime) -> list[ShopHealth]:
    """Every active shop's figures, one tenant transaction each."""
    healths = []
    for tenant_id in active_tenant_ids(db):
        with db.tenant_tx(tenant_id) as conn:
            healths.append(shop_health(conn, tenant_id, now))
    return healths


def _clean(text: str | None, limit: int = 200) -> str | None:
    # Recorded errors come from vendor answers: never let one carry a secret onward.
    return redaction.redact(text)[:limit] if text else None


# --- the rules -------------------------------------------------------------------------

def evaluate(healths: list[ShopHealth], now: dt.datetime) -> list[CheckOutcome]:
    """Every check over every shop, in CHECK_NAMES order."""
    rules = (first_touch_sla, stuck_events, oldest_pending_event, crm_poll, unknown_sends)
    return [CheckOutcome(rule.__name__, len(healths),
                         tuple(p for h in sorted(healths, key=lambda h: h.slug) if (p := rule(h, now))))
            for rule in rules]


def first_touch_sla(h: ShopHealth, now: dt.datetime) -> ShopProblem | None:
    share = h.sla.share_under_sla
    if share is None or share >= SLA_TARGET:
        return None
    poll_found = sum(1 for m in h.sla_missed if m.source == "poll")
    untouched = sum(1 for m in h.sla_missed if m.first_sent_at is None)
    parts = [f"{h.sla.sla_met} of {h.sla.sla_eligible} leads of the last hour touched within {SLA_SECONDS} s "
             f"of the estimate's creation ({share:.0%}, target {SLA_TARGET:.0%})"]
    if untouched:
        parts.append(f"{untouched} not touched at all")
    if poll_found:
        parts.append(f"{poll_found} of the misses found by the poll (webhook lost)")
    if h.sla.deferred_quiet_hours:
        parts.append(f"{h.sla.deferred_quiet_hours} deferred for quiet hours (not counted)")
    if h.sla_missed:
        parts.append("lead ids " + ", ".join(str(m.lead_id) for m in h.sla_missed[:5]))
    since = min((m.order_created_at for m in h.sla_missed), default=None)
    return ShopProblem(h.slug, ERROR, "; ".join(parts), since)


def stuck_events(h: ShopHealth, now: dt.datetime) -> ShopProblem | None:
    parts, since = [], []
    if h.parked.count:
        parts.append(f"{h.parked.count} events parked (waiting for CRM credentials): {h.parked.error}")
        since.append(h.parked.since)
    if h.dead.count:
        parts.append(f"{h.dead.count} events dead (given up; replayable): {h.dead.error}")
        since.append(h.dead.since)
    if not parts:
        return None
    return ShopProblem(h.slug, ERROR, "; ".join(parts), min(s for s in since if s is not None))


def oldest_pending_event(h: ShopHealth, now: dt.datetime) -> ShopProblem | None:
    if h.oldest_pending_at is None:
        return None
    waited = now - h.oldest_pending_at
    if waited <= PENDING_WARN:
        return None
    severity = ERROR if waited > PENDING_ERROR else WARN
    return ShopProblem(h.slug, severity, f"{h.pending} events waiting, the oldest for {_duration(waited)}",
                       h.oldest_pending_at)


def crm_poll(h: ShopHealth, now: dt.datetime) -> ShopProblem | None:
    if h.poll_health == "ok":
        return None
    severity = ERROR if h.poll_health == "unauthorized" else WARN
    what = "the CRM refuses the shop's API key" if h.poll_health == "unauthorized" else "the CRM's API fails"
    last = (f"last success {h.poll_last_success_at:%Y-%m-%d %H:%M} UTC" if h.poll_last_success_at
            else "never succeeded")
    return ShopProblem(h.slug, severity, f"{what} ({h.poll_error or 'no detail'}); {last}", h.poll_failing_since)


def unknown_sends(h: ShopHealth, now: dt.datetime) -> ShopProblem | None:
    if not h.unknown_sends:
        return None
    return ShopProblem(h.slug, WARN, f"{h.unknown_sends} sends with an unknown outcome in the last "
                       f"{RECENT.days} days (never re-sent automatically: check the provider's log)",
                       h.unknown_since)


def _duration(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
