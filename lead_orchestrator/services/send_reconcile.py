"""Settles sends whose outcome was not recorded: reservations left by a process that is
gone, and `unknown` outcomes, which are resolved by asking the vendor.

`reconcile_in_flight_sends(db, vendors, now)` is what the dispatcher runs every few
seconds (`start_send_reconciler`) and the touch-point job at every tick:
1. A `sending` touch whose sender session is gone (sender_session) or that is older than
   STALE_RESERVATION becomes `unknown` (or `sent`, when a status callback already told us
   the vendor's message id).
2. Each `unknown` touch due to be asked about is looked up at its vendor (Twilio's
   message list, SendGrid's Email Activity), outside any transaction; the answer is
   turned into a decision by `send_resolution.resolve` and recorded.
Two reconcilers may run at once: a touch being asked about is leased (its
`resolve_after` pushed out) under SKIP LOCKED, and every write re-checks the status.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter

import psycopg

from lead_orchestrator.store import lead_log
from lead_orchestrator.store.lead_state import complete_if_done, share_lead_status
from lead_orchestrator.store.touches import (UnknownTouch, ask_again_at, claim_unknown, confirm_sent, fail_unknown,
                                             later_step_out, lock_for_resolution, mark_orphans_unknown, replan_touch,
                                             stop_asking, tenants_with_sends_to_reconcile)
from lead_orchestrator.messaging.senders import EMAIL_SETTLE, SMS_SETTLE, SentSms
from lead_orchestrator.messaging.send_outcomes import FOUND, UNAVAILABLE, Lookup
from lead_orchestrator.messaging.send_resolution import ASK_AGAIN, CONFIRM, FAIL, REPLAN, Resolution, resolve
from lead_orchestrator.store.shops import Shop, load_shop
from lead_orchestrator.services.touches import STALE_RESERVATION

log = logging.getLogger(__name__)

SETTLE = {"sms": SMS_SETTLE, "email": EMAIL_SETTLE}
# A touch being asked about is left alone by other reconcilers for this long.
LEASE = dt.timedelta(minutes=2)
BATCH = 50
# How often the dispatcher reconciles (a crashed sender's reservation is settled within
# about this long).
RECONCILE_SECONDS = 3.0


def reconcile_in_flight_sends(db, vendors, now: dt.datetime, *, tenant_ids=None) -> Counter:
    """Settles what can be settled now, for the given shops or every shop that has
    something to settle. Returns counts: orphaned, confirmed, replanned, failed,
    unresolved, asking (still unknown, asked again later), error."""
    if tenant_ids is None:
        with db.system_tx() as conn:
            tenant_ids = tenants_with_sends_to_reconcile(conn, now, STALE_RESERVATION)
    report: Counter = Counter()
    for tenant_id in tenant_ids:
        try:
            report.update(reconcile_shop(db, vendors, tenant_id, now))
        except Exception:  # noqa: BLE001 - one shop's failure must not stop the others
            log.exception("could not reconcile the sends of tenant %s", tenant_id)
            report["error"] += 1
    return +report


def reconcile_shop(db, vendors, tenant_id: int, now: dt.datetime) -> Counter:
    report: Counter = Counter()
    with db.tenant_tx(tenant_id) as conn:
        shop = load_shop(conn, tenant_id, db.box)
        if shop is None or not shop.active:
            return report
        report["orphaned"] = mark_orphaned_reservations_unknown(conn, now)
        due = claim_unknown(conn, now, lease_until=now + LEASE, batch=BATCH)
    if not due:
        return report
    lookups = [ask_vendor(shop, touch, vendors) for touch in due]
    with db.tenant_tx(tenant_id) as conn:
        for touch, lookup in zip(due, lookups):
            report[record_lookup(conn, touch, lookup, now)] += 1
    return report


def mark_orphaned_reservations_unknown(conn: psycopg.Connection, now: dt.datetime) -> int:
    """`sending` touches whose sender is gone, or older than STALE_RESERVATION: the vendor
    may or may not have the message, so they become `unknown` (to be asked about at
    once). If a status callback already gave us the vendor's message id, it was sent."""
    orphans = mark_orphans_unknown(conn, now, now - STALE_RESERVATION)
    for t in orphans:
        lead_log.record(conn, t.lead_id, f"touch_{t.status}", step=t.step, channel=t.channel, reason=t.reason, at=now)
        log.info("touch %s (%s) reservation orphaned: %s", t.id, t.channel, t.reason)
        complete_if_done(conn, t.lead_id, at=now)
    return len(orphans)


def ask_vendor(shop: Shop, touch: UnknownTouch, vendors) -> Lookup:
    """The vendor's answer about one unknown touch (no transaction is open here)."""
    from lead_orchestrator.services.shop_clients import MissingCredentials

    if touch.provider_message_id:  # a status callback named it while the send was in flight
        return Lookup(FOUND, message_id=touch.provider_message_id, detail="named by a status callback")
    try:
        finder = vendors.finder(shop, touch.channel)
    except MissingCredentials as exc:
        return Lookup(UNAVAILABLE, detail=f"missing_credentials: {exc}")
    if touch.channel == "sms":
        return finder.find(SentSms(to=touch.to_address, body=touch.body or "",
                                   reserved_at=touch.reserved_wall_at or touch.reserved_at,
                                   exclude_ids=touch.taken_ids))
    # The reservation's own key when it has one; rows reserved before it existed carry
    # the touch id and the shop's slug (as every mail always has).
    args = {"send_key": touch.send_key} if touch.send_key else {"touch_id": str(touch.id), "tenant": shop.slug}
    return finder.find(args)


def record_lookup(conn: psycopg.Connection, touch: UnknownTouch, lookup: Lookup, now: dt.datetime) -> str:
    """Applies the decision for one touch; returns what was done (for the report)."""
    lead_status = share_lead_status(conn, touch.lead_id)
    current = lock_for_resolution(conn, touch.id)
    if current is None or current.status != "unknown":
        return "settled_elsewhere"  # a status callback (or another reconciler) was first
    decision = resolve(lookup, now=now, reserved_at=touch.reserved_at, settle=SETTLE[touch.channel],
                       attempts=current.resolve_attempts, replanned=current.replanned,
                       lead_status=lead_status, later_step_out=later_step_out(conn, touch))
    where = {"step": touch.step, "channel": touch.channel, "at": now}
    if decision.action == ASK_AGAIN:
        ask_again_at(conn, touch.id, decision.ask_at)
        return "asking"
    if decision.action == CONFIRM:
        confirm_sent(conn, touch.id, decision.reason, decision.message_id)
        lead_log.record(conn, touch.lead_id, "touch_sent", reason=decision.reason, message_id=decision.message_id,
                        detail=lookup.detail, **where)
        outcome = "confirmed"
    elif decision.action == REPLAN:
        # The touch is due at once and goes out before any later step (replan_touch).
        replan_touch(conn, touch.id, decision.reason)
        lead_log.record(conn, touch.lead_id, "touch_replanned", reason=decision.reason, detail=lookup.detail,
                        **where)
        outcome = "replanned"
    elif decision.action == FAIL:
        fail_unknown(conn, touch.id, decision.reason)
        lead_log.record(conn, touch.lead_id, "touch_failed", reason=decision.reason, detail=lookup.detail, **where)
        outcome = "failed"
    else:
        _give_up(conn, touch, decision, lookup, now)
        outcome = "unresolved"
    log.info("touch %s (%s) unknown outcome: %s (%s)", touch.id, touch.channel, decision.reason, lookup.detail)
    complete_if_done(conn, touch.lead_id, at=now)
    return outcome


def _give_up(conn: psycopg.Connection, touch: UnknownTouch, decision: Resolution, lookup: Lookup,
             now: dt.datetime) -> None:
    stop_asking(conn, touch.id, decision.reason)
    lead_log.record(conn, touch.lead_id, "touch_unresolved", step=touch.step, channel=touch.channel,
                    reason=decision.reason, detail=lookup.detail, at=now)


def start_send_reconciler(db, vendors, stop: threading.Event, *, every: float = RECONCILE_SECONDS,
                          clock=None) -> threading.Thread:
    """A daemon thread that reconciles every `every` seconds until `stop` is set (what the
    dispatcher runs beside its event loop). Errors are logged; the loop goes on."""

    def loop() -> None:
        while not stop.wait(every):
            try:
                now = clock() if clock else dt.datetime.now(dt.timezone.utc)
                report = reconcile_in_flight_sends(db, vendors, now)
                if report:
                    log.info("send reconciliation: %s", dict(report))
            except Exception as exc:  # noqa: BLE001 - e.g. the database is restarting: try again next round
                from lead_orchestrator.store.db import is_connection_error

                # A database outage is logged once by the dispatcher's own loop; a traceback
                # every few seconds would bury it.
                log.warning("send reconciliation failed; retrying in %.0f s", every,
                            exc_info=not is_connection_error(exc))

    thread = threading.Thread(target=loop, name="send-reconciler", daemon=True)
    thread.start()
    return thread
