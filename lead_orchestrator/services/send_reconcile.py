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
from lead_orchestrator.store.lead_state import complete_if_done
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
            rows = conn.execute("SELECT tenants_with_sends_to_reconcile(%s, %s) AS id",
                                (now, STALE_RESERVATION)).fetchall()
        tenant_ids = [r["id"] for r in rows]
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
        due = _claim_unknown(conn, now)
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
    rows = conn.execute(
        """WITH live AS MATERIALIZED (SELECT live_sender_pids() AS pid),
           orphans AS (
               SELECT id, CASE WHEN reserved_by IS NOT NULL AND reserved_by NOT IN (SELECT pid FROM live)
                               THEN 'sender_gone' ELSE 'no_outcome_recorded' END AS why
                 FROM touches
                WHERE status = 'sending'
                  AND (reserved_at < %(stale)s
                       OR (reserved_by IS NOT NULL AND reserved_by NOT IN (SELECT pid FROM live)))
                FOR UPDATE SKIP LOCKED)
           UPDATE touches t
              SET status = CASE WHEN t.provider_message_id IS NULL THEN 'unknown' ELSE 'sent' END,
                  reason = CASE WHEN t.provider_message_id IS NULL THEN o.why ELSE 'confirmed_by_provider' END,
                  sent_at = CASE WHEN t.provider_message_id IS NULL THEN t.sent_at
                                 ELSE coalesce(t.sent_at, t.reserved_at) END,
                  resolve_after = CASE WHEN t.provider_message_id IS NULL THEN %(now)s END,
                  updated_at = now()
             FROM orphans o WHERE t.id = o.id
         RETURNING t.id, t.lead_id, t.step, t.channel, t.status, t.reason""",
        {"stale": now - STALE_RESERVATION, "now": now},
    ).fetchall()
    for r in rows:
        lead_log.record(conn, r["lead_id"], f"touch_{r['status']}", step=r["step"], channel=r["channel"],
                        reason=r["reason"], at=now)
        log.info("touch %s (%s) reservation orphaned: %s", r["id"], r["channel"], r["reason"])
        complete_if_done(conn, r["lead_id"], at=now)
    return len(rows)


def _claim_unknown(conn: psycopg.Connection, now: dt.datetime) -> list[dict]:
    rows = conn.execute(
        """UPDATE touches SET resolve_after = %(lease)s, resolve_attempts = resolve_attempts + 1, updated_at = now()
            WHERE id IN (SELECT id FROM touches
                          WHERE status = 'unknown' AND resolve_after IS NOT NULL AND resolve_after <= %(now)s
                          ORDER BY resolve_after LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
        RETURNING *""",
        {"lease": now + LEASE, "now": now, "batch": BATCH},
    ).fetchall()
    sms = [r["to_address"] for r in rows if r["channel"] == "sms"]
    taken: dict[str, set[tuple[int, str]]] = {}
    if sms:  # message ids already known to belong to other touches: never this one's proof
        for r in conn.execute("""SELECT id, to_address, provider_message_id FROM touches
                                  WHERE channel = 'sms' AND to_address = ANY(%s) AND provider_message_id IS NOT NULL""",
                              (sms,)).fetchall():
            taken.setdefault(r["to_address"], set()).add((r["id"], r["provider_message_id"]))
    return [{**r, "taken_ids": frozenset(mid for tid, mid in taken.get(r["to_address"], ()) if tid != r["id"])}
            for r in rows]


def ask_vendor(shop: Shop, touch: dict, vendors) -> Lookup:
    """The vendor's answer about one unknown touch (no transaction is open here)."""
    from lead_orchestrator.services.shop_clients import MissingCredentials

    if touch["provider_message_id"]:  # a status callback named it while the send was in flight
        return Lookup(FOUND, message_id=touch["provider_message_id"], detail="named by a status callback")
    try:
        finder = vendors.finder(shop, touch["channel"])
    except MissingCredentials as exc:
        return Lookup(UNAVAILABLE, detail=f"missing_credentials: {exc}")
    if touch["channel"] == "sms":
        return finder.find(SentSms(to=touch["to_address"], body=touch["body"] or "",
                                   reserved_at=touch["reserved_wall_at"] or touch["reserved_at"],
                                   exclude_ids=touch["taken_ids"]))
    # The reservation's own key when it has one; rows reserved before it existed carry
    # the touch id and the shop's slug (as every mail always has).
    args = {"send_key": touch["send_key"]} if touch["send_key"] else {"touch_id": str(touch["id"]), "tenant": shop.slug}
    return finder.find(args)


def record_lookup(conn: psycopg.Connection, touch: dict, lookup: Lookup, now: dt.datetime) -> str:
    """Applies the decision for one touch; returns what was done (for the report)."""
    lead = conn.execute("SELECT status FROM leads WHERE id = %s FOR SHARE", (touch["lead_id"],)).fetchone()
    current = conn.execute("SELECT status, replanned, resolve_attempts FROM touches WHERE id = %s FOR UPDATE",
                           (touch["id"],)).fetchone()
    if current is None or current["status"] != "unknown":
        return "settled_elsewhere"  # a status callback (or another reconciler) was first
    later = conn.execute(
        """SELECT min(step) AS step FROM touches WHERE lead_id = %s AND channel = %s AND step > %s
              AND status IN ('sending', 'sent', 'unknown')""",
        (touch["lead_id"], touch["channel"], touch["step"])).fetchone()["step"]
    decision = resolve(lookup, now=now, reserved_at=touch["reserved_at"], settle=SETTLE[touch["channel"]],
                       attempts=current["resolve_attempts"], replanned=current["replanned"],
                       lead_status=lead["status"], later_step_out=later)
    where = {"step": touch["step"], "channel": touch["channel"], "at": now}
    if decision.action == ASK_AGAIN:
        conn.execute("UPDATE touches SET resolve_after = %s, updated_at = now() WHERE id = %s",
                     (decision.ask_at, touch["id"]))
        return "asking"
    if decision.action == CONFIRM:
        conn.execute(
            """UPDATE touches SET status = 'sent', reason = %s, provider_message_id = coalesce(provider_message_id, %s),
                      sent_at = coalesce(sent_at, reserved_at), resolve_after = NULL, updated_at = now()
                WHERE id = %s""", (decision.reason, decision.message_id, touch["id"]))
        lead_log.record(conn, touch["lead_id"], "touch_sent", reason=decision.reason, message_id=decision.message_id,
                        detail=lookup.detail, **where)
        outcome = "confirmed"
    elif decision.action == REPLAN:
        # send_after is left as it was (in the past): the touch is due at once and goes out
        # before any later step, which then keeps its spacing from it.
        conn.execute(
            """UPDATE touches SET status = 'scheduled', replanned = true, reason = %s,
                      resolve_after = NULL, updated_at = now() WHERE id = %s""",
            (decision.reason, touch["id"]))
        lead_log.record(conn, touch["lead_id"], "touch_replanned", reason=decision.reason, detail=lookup.detail,
                        **where)
        outcome = "replanned"
    elif decision.action == FAIL:
        conn.execute("UPDATE touches SET status = 'failed', reason = %s, resolve_after = NULL, updated_at = now() "
                     "WHERE id = %s", (decision.reason, touch["id"]))
        lead_log.record(conn, touch["lead_id"], "touch_failed", reason=decision.reason, detail=lookup.detail, **where)
        outcome = "failed"
    else:
        _give_up(conn, touch, decision, lookup, now)
        outcome = "unresolved"
    log.info("touch %s (%s) unknown outcome: %s (%s)", touch["id"], touch["channel"], decision.reason, lookup.detail)
    complete_if_done(conn, touch["lead_id"], at=now)
    return outcome


def _give_up(conn: psycopg.Connection, touch: dict, decision: Resolution, lookup: Lookup, now: dt.datetime) -> None:
    conn.execute("UPDATE touches SET reason = %s, resolve_after = NULL, updated_at = now() WHERE id = %s",
                 (decision.reason, touch["id"]))
    lead_log.record(conn, touch["lead_id"], "touch_unresolved", step=touch["step"], channel=touch["channel"],
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
