"""Turns stored inbox events (webhook deliveries, polled orders) into leads.

`process_claimed_events` is the whole ingest path, used by the Dagster ingest job:
for each claimed event it fetches the estimate, with its customer and vehicle, through
the shop's CRM adapter (crm.registry; the stored event is only a hint), qualifies it,
upserts the lead, plans its sequence and sends the touches that are due now. Each event commits on its own, so one
bad event never holds back the others.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg

from lead_orchestrator.store import lead_log

from lead_orchestrator.domain import retry_policy
from lead_orchestrator.crm.base import ChangeHint, Estimate
from lead_orchestrator.crm.errors import CrmError, CrmNotFound, CrmRateLimited, CrmUnauthorized, CrmUnavailable
from lead_orchestrator.crm.pace import pacer_for
from lead_orchestrator.crm.registry import hint_from_stored_body
from lead_orchestrator.domain.qualification import qualify
from lead_orchestrator.domain.send_window import SendWindow
from lead_orchestrator.store.inbox import ESTIMATES, stored_hint
from lead_orchestrator.store.shops import Shop, load_shop
from lead_orchestrator.services.touches import cancel_pending, due_touch_ids, plan_sequence, send_touches
from lead_orchestrator.services.shop_clients import MissingCredentials

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class EventResult:
    tenant_id: int
    shop_slug: str
    event_id: int
    source: str
    outcome: str  # new_lead | updated | closed | disqualified | ignored | retry | parked | dead
    lead_id: int | None = None
    touches_sent: int = 0
    first_touch_latency_s: float | None = None


@dataclass
class ShopSummary:
    """What one run did for one shop: the metadata of that shop's `leads` partition."""

    slug: str
    outcomes: Counter = field(default_factory=Counter)
    lead_ids: list[int] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)


def claim_events(db, claimer: str, limit: int = 500) -> list[tuple[int, int]]:
    # Under this process's claim lease: if the process dies, its events are claimable
    # again at once, not after the 5-minute stale rule (lead_orchestrator/store/claim_lease.py).
    from lead_orchestrator.store.claim_lease import claim_under_lease

    return claim_under_lease(db, claimer, limit)


def process_claimed_events(db, vendors, claimed: list[tuple[int, int]], *, now=utcnow) -> list[EventResult]:
    results = []
    for tenant_id, event_id in claimed:
        try:
            results.append(process_event(db, vendors, tenant_id, event_id, now=now))
        except Exception:  # noqa: BLE001 - recorded on the event; the others go on
            log.exception("event %s of tenant %s failed", event_id, tenant_id)
            outcome = release_event(db, tenant_id, event_id, "unexpected error (see run logs)")
            results.append(EventResult(tenant_id, "?", event_id, "?", outcome))
    return results


def summarize(results: list[EventResult]) -> dict[str, ShopSummary]:
    by_shop: dict[str, ShopSummary] = defaultdict(lambda: ShopSummary(""))
    for r in results:
        s = by_shop[r.shop_slug]
        s.slug = r.shop_slug
        s.outcomes[r.outcome] += 1
        s.sources[r.source] += 1
        if r.lead_id is not None:
            s.lead_ids.append(r.lead_id)
        if r.first_touch_latency_s is not None:
            s.latencies_s.append(r.first_touch_latency_s)
    return dict(by_shop)


def process_event(db, vendors, tenant_id: int, event_id: int, *, now=utcnow) -> EventResult:
    with db.tenant_tx(tenant_id) as conn:
        event = conn.execute("SELECT e.*, (SELECT health FROM poll_state) AS crm_health "
                             "FROM inbox_events e WHERE e.id = %s", (event_id,)).fetchone()
        shop = load_shop(conn, tenant_id, db.box)
    result = EventResult(tenant_id, shop.slug, event_id, event["source"], "ignored")
    if event["table_name"] != ESTIMATES:
        return _done(db, result, "ignored", f"table {event['table_name']} is not used")
    hint = event_hint(event)
    if event["crm_health"] == "unauthorized":
        # The shop's key was refused moments ago: wait for it to be fixed rather than
        # spend a request (and a log line) per event on a key we know is bad.
        return _after_failure(db, result, event, hint, shop, retry_policy.UNAUTHORIZED,
                              CrmUnauthorized("the shop's CRM credentials were refused; waiting for new ones"), now)

    try:
        adapter = vendors.crm_adapter(shop, pacer=pacer_for(db, shop))
        estimate = adapter.fetch_estimate(hint.estimate_id, hint=hint)
    except (CrmUnauthorized, MissingCredentials) as exc:
        _mark_shop_unauthorized(db, tenant_id, str(exc), now())
        return _after_failure(db, result, event, hint, shop, retry_policy.UNAUTHORIZED, exc, now)
    except CrmRateLimited as exc:
        return _after_failure(db, result, event, hint, shop, retry_policy.RATE_LIMITED, exc, now)
    except (CrmUnavailable, CrmNotFound) as exc:  # not found: the estimate may not be visible yet
        return _after_failure(db, result, event, hint, shop, retry_policy.UNAVAILABLE, exc, now)
    except CrmError as exc:
        return _after_failure(db, result, event, hint, shop, retry_policy.UNEXPECTED, exc, now)

    due: list[int] = []
    with db.tenant_tx(tenant_id) as conn:
        lead = _upsert_lead(conn, shop, event, estimate, now(), result)
        if lead is not None and lead["status"] == "active":
            due = due_touch_ids(conn, now(), lead_id=lead["id"])
        if not due:
            _mark_event(conn, event_id, "done", result.outcome)
    if due:
        # The event is done only once its due touches are reserved and recorded: a process
        # that dies in between leaves it claimed under a dead lease, so it is processed
        # again at once and sends what is still owed (nothing is owed twice).
        _send_due(db, vendors, shop, lead, due, event, now, result)
    return result


def event_hint(event: dict) -> ChangeHint:
    """What the stored event says changed: the neutral hint it holds, or its CRM's
    reading of the raw body the receiver stored."""
    return stored_hint(event["payload"]) or hint_from_stored_body(
        event["crm"], event["payload"], estimate_id=event["object_id"], operation=event["operation"])


def _after_failure(db, result: EventResult, event: dict, hint: ChangeHint, shop: Shop, kind: str, exc: Exception,
                   now) -> EventResult:
    """Applies the retry policy to a failed fetch: back to the queue, parked or dead."""
    at = now()
    deadline = retry_policy.lead_deadline(hint.created_at, event["received_at"], shop.max_lead_age_days)
    decision = retry_policy.after_failure(kind, str(exc), attempts=event["attempts"],
                                          unexpected_errors=event["unexpected_errors"], now=at,
                                          deadline=deadline, retry_after=getattr(exc, "retry_after", None))
    _apply(db, result.tenant_id, result.event_id, decision, unexpected=kind == retry_policy.UNEXPECTED)
    level = logging.INFO if kind == retry_policy.RATE_LIMITED else logging.WARNING
    log.log(level, "shop %s order %s (event %s): %s -> %s%s", shop.slug, event["object_id"], result.event_id,
            decision.reason, decision.action,
            f" in {decision.delay.total_seconds():.0f}s" if decision.action == "retry" else "")
    result.outcome = {"retry": "retry", "park": "parked", "dead": "dead"}[decision.action]
    return result


def _apply(db, tenant_id: int, event_id: int, decision: retry_policy.Decision, *, unexpected: bool) -> None:
    status = {"retry": "pending", "park": "parked", "dead": "dead"}[decision.action]
    with db.tenant_tx(tenant_id) as conn:
        conn.execute(
            """UPDATE inbox_events
                  SET status = %(status)s, claimed_by = NULL, error = %(reason)s,
                      outcome = CASE WHEN %(status)s = 'pending' THEN outcome ELSE %(status)s END,
                      available_at = clock_timestamp() + %(delay)s,
                      attempts = attempts - CASE WHEN %(spends)s THEN 0 ELSE 1 END,
                      unexpected_errors = unexpected_errors + CASE WHEN %(unexpected)s THEN 1 ELSE 0 END,
                      status_changed_at = CASE WHEN status = %(status)s THEN status_changed_at
                                               ELSE clock_timestamp() END,
                      processed_at = CASE WHEN %(status)s = 'pending' THEN processed_at ELSE clock_timestamp() END
                WHERE id = %(id)s""",
            {"status": status, "reason": decision.reason[:1000], "delay": decision.delay,
             "spends": decision.spends_attempt, "unexpected": unexpected, "id": event_id},
        )


def _mark_shop_unauthorized(db, tenant_id: int, error: str, now: dt.datetime) -> None:
    """One refused key parks the whole shop: its other events park without a request,
    and the poll (which keeps trying the key on its backoff) releases them when it works."""
    with db.tenant_tx(tenant_id) as conn:
        conn.execute(
            """INSERT INTO poll_state (tenant_id, health, last_error, last_error_at, consecutive_errors)
               VALUES (current_tenant_id(), 'unauthorized', %(error)s, %(now)s, 1)
               ON CONFLICT (tenant_id) DO UPDATE SET health = 'unauthorized', last_error = EXCLUDED.last_error,
                   last_error_at = EXCLUDED.last_error_at""",
            {"error": error[:500], "now": now},
        )


def _upsert_lead(conn, shop: Shop, event, estimate: Estimate, now, result: EventResult):
    # Two events of one estimate (a webhook and a poll sighting) may be processed by two
    # runs at once: apply them one after the other, so the second sees the lead the first made.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, current_tenant_id()))", (estimate.id,))
    lead = conn.execute("SELECT * FROM leads WHERE order_id = %s FOR UPDATE", (estimate.id,)).fetchone()
    reason = estimate.closing_reason
    if lead is not None:
        result.lead_id = lead["id"]
        conn.execute("UPDATE leads SET order_updated_at = %s, total_cents = coalesce(%s, total_cents), "
                     "updated_at = now() WHERE id = %s", (estimate.updated_at, estimate.total_cents, lead["id"]))
        if reason and lead["status"] == "active":
            return _close(conn, lead, reason, result)
        if lead["status"] != "disqualified" or reason:
            result.outcome = "updated"
            return lead
        # A disqualified estimate may qualify now (e.g. a mobile number was added).
    q = qualify(estimate, now=now, max_age_days=shop.max_lead_age_days)
    customer, vehicle = estimate.customer, estimate.vehicle
    values = {
        "order_id": estimate.id, "order_number": estimate.number or None,
        "customer_id": estimate.customer_id, "vehicle_id": estimate.vehicle_id,
        "first_name": customer.first_name if customer else None,
        "last_name": customer.last_name if customer else None,
        "vehicle_name": (vehicle.display_name if vehicle else None) or None, "total_cents": estimate.total_cents,
        "phone": q.reach.phone, "email": q.reach.email,
        "status": "active" if q.qualified else "disqualified",
        "reason": None if q.qualified else q.reason, "source": event["source"],
        "created": estimate.created_at, "updated": estimate.updated_at,
        "first_seen": event["received_at"], "crm": estimate.crm,
    }
    lead = conn.execute(
        """INSERT INTO leads (tenant_id, order_id, order_number, customer_id, vehicle_id, first_name, last_name,
                              vehicle_name, total_cents, phone_e164, email, status, status_reason, source,
                              order_created_at, order_updated_at, first_seen_at, crm)
           VALUES (current_tenant_id(), %(order_id)s, %(order_number)s, %(customer_id)s, %(vehicle_id)s,
                   %(first_name)s, %(last_name)s, %(vehicle_name)s, %(total_cents)s, %(phone)s, %(email)s,
                   %(status)s, %(reason)s, %(source)s, %(created)s, %(updated)s, %(first_seen)s, %(crm)s)
           ON CONFLICT (tenant_id, order_id) DO UPDATE SET
               first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
               vehicle_name = EXCLUDED.vehicle_name, phone_e164 = EXCLUDED.phone_e164, email = EXCLUDED.email,
               status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,
               first_seen_at = CASE WHEN EXCLUDED.status = 'active' THEN %(now)s ELSE leads.first_seen_at END,
               updated_at = now()
           RETURNING *""",
        {**values, "now": now},
    ).fetchone()
    result.lead_id = lead["id"]
    if not q.qualified:
        result.outcome = "disqualified"
        lead_log.record(conn, lead["id"], "disqualified", order_id=estimate.id, reason=q.reason,
                        notes=list(q.reach.notes))
        return lead
    result.outcome = "new_lead"
    lead_log.record(conn, lead["id"], "qualified", order_id=estimate.id, source=event["source"],
                    channels=list(q.reach.channels), notes=list(q.reach.notes))
    plan_sequence(conn, shop, lead, SendWindow.for_shop(shop))
    return lead


def _close(conn, lead, reason: str, result: EventResult):
    status = "closed" if reason in ("deleted", "archived") else "converted"
    cancelled = cancel_pending(conn, lead["id"], f"lead_{status}:{reason}")
    conn.execute("UPDATE leads SET status = %s, status_reason = %s, ended_at = now(), updated_at = now() "
                 "WHERE id = %s", (status, reason, lead["id"]))
    lead_log.record(conn, lead["id"], f"lead_{status}", reason=reason, touches_cancelled=cancelled)
    result.outcome = "closed"
    return {**lead, "status": status}


def _send_due(db, vendors, shop, lead, touch_ids: list[int], event, now, result: EventResult) -> None:
    marked = False

    def record(conn, outcomes) -> None:
        # In the transaction that records the sends: no extra round trips per lead.
        nonlocal marked
        result.touches_sent = sum(1 for o in outcomes if o.status == "sent")
        if result.touches_sent and result.outcome == "new_lead":
            result.first_touch_latency_s = round((now() - event["received_at"]).total_seconds(), 3)
            lead_log.record(conn, lead["id"], "first_touch_latency", seconds=result.first_touch_latency_s)
        _mark_event(conn, event["id"], "done", result.outcome)
        marked = True

    send_touches(db, shop, touch_ids, vendors, now=now(), on_recorded=record)
    if not marked:  # nothing was reserved (e.g. a stop rule declined every touch)
        with db.tenant_tx(shop.id) as conn:
            _mark_event(conn, event["id"], "done", result.outcome)


def _mark_event(conn, event_id: int, status: str, outcome: str | None, error: str | None = None) -> None:
    conn.execute("UPDATE inbox_events SET status = %s, outcome = %s, error = %s, processed_at = clock_timestamp(), "
                 "status_changed_at = clock_timestamp() WHERE id = %s", (status, outcome, error, event_id))


def _done(db, result: EventResult, outcome: str, note: str) -> EventResult:
    with db.tenant_tx(result.tenant_id) as conn:
        _mark_event(conn, result.event_id, "done", outcome, note)
    result.outcome = outcome
    return result


def release_event(db, tenant_id: int, event_id: int, error: str, *, unexpected: bool = True) -> str:
    """An unexpected error escaped processing (a bug): the event goes back to the queue
    with backoff, and after a few such errors it is dead-lettered with its reason rather
    than retried forever. `unexpected=False` (the work was interrupted, e.g. the database
    connection dropped) gives it back at once and spends nothing. Returns the outcome
    ("retry" or "dead")."""
    with db.tenant_tx(tenant_id) as conn:
        event = conn.execute("SELECT e.object_id, e.unexpected_errors, t.slug FROM inbox_events e "
                             "JOIN tenants t ON t.id = e.tenant_id WHERE e.id = %s", (event_id,)).fetchone()
    if event is None:
        return "retry"
    if unexpected:
        decision = retry_policy.after_failure(retry_policy.UNEXPECTED, error, attempts=0,
                                              unexpected_errors=event["unexpected_errors"], now=utcnow(),
                                              deadline=utcnow())
    else:
        decision = retry_policy.Decision("retry", error, spends_attempt=False)
    _apply(db, tenant_id, event_id, decision, unexpected=unexpected)
    log.warning("shop %s order %s (event %s): %s -> %s", event["slug"], event["object_id"], event_id,
                decision.reason, decision.action)
    return "dead" if decision.action == "dead" else "retry"
