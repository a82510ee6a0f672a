"""The `touches` table: one row per (lead, step, channel), and the statements the touch
engine, the send reconciler, delivery callbacks and the timeline run on it.

Every function takes a connection in a tenant transaction (`db.tenant_tx`; row-level
security applies), except `tenants_with_sends_to_reconcile` (`db.system_tx`). Rows come
back as `Touch`, named and typed as the table's columns (tests/test_touch_store.py keeps
them in step with the schema), or as a narrower row where a statement returns less or more.
What to do with a touch is decided by the use cases (services/touches.py,
send_reconcile.py, delivery.py); the statements here only re-check status where a
concurrent writer could have moved it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from lead_orchestrator.store.db import typed_rows


@dataclass(frozen=True)
class Touch:
    """A `touches` row (sql/0001_core.sql, sql/0010_send_outcomes.sql)."""
    id: int
    tenant_id: int
    lead_id: int
    step: int
    channel: str  # sms | email
    status: str  # scheduled | deferred | sending | sent | failed | unknown | skipped | cancelled
    reason: str | None
    due_at: dt.datetime
    send_after: dt.datetime
    to_address: str | None
    subject: str | None
    body: str | None
    provider_message_id: str | None
    delivery_status: str | None
    error_code: str | None
    attempts: int  # reservations made so far
    reserved_at: dt.datetime | None  # the caller's clock at the last reservation
    sent_at: dt.datetime | None
    updated_at: dt.datetime
    reserved_by: int | None  # backend pid of the reserving process's sender session
    reserved_wall_at: dt.datetime | None  # the database clock at the last reservation
    send_key: str | None  # per reservation: finds the mail again at SendGrid
    resolve_after: dt.datetime | None  # unknown: when to ask the vendor next (None: no more)
    resolve_attempts: int
    replanned: bool  # owed again once after the vendor proved it never took the message


@dataclass(frozen=True)
class UnknownTouch(Touch):
    """An `unknown` touch claimed to be asked about, with the message ids other touches to
    the same number already hold (never this one's proof)."""
    taken_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NewTouch:
    """A step of a lead's sequence, as planned (the row `plan_touches` inserts)."""
    step: int
    channel: str
    status: str
    reason: str | None
    due_at: dt.datetime
    send_after: dt.datetime
    to_address: str | None


@dataclass(frozen=True)
class OrphanedTouch:
    """A reservation whose sender is gone or stale, as `mark_orphans_unknown` settled it."""
    id: int
    lead_id: int
    step: int
    channel: str
    status: str  # unknown, or sent when a status callback had named the message
    reason: str


@dataclass(frozen=True)
class ResolutionState:
    """What deciding about an unknown touch needs of its row, read under its lock."""
    status: str
    replanned: bool
    resolve_attempts: int


# --- planning ------------------------------------------------------------------------

def plan_touches(conn: psycopg.Connection, lead_id: int, planned: list[NewTouch]) -> set[tuple[int, str]]:
    """Inserts the lead's planned touches that do not exist yet, with one statement (it
    runs for every new lead). Returns the (step, channel) of those it created."""
    if not planned:
        return set()
    values = ", ".join(["(current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s)"] * len(planned))
    params = [value for t in planned
              for value in (lead_id, t.step, t.channel, t.status, t.reason, t.due_at, t.send_after, t.to_address)]
    created = conn.execute(
        f"""INSERT INTO touches (tenant_id, lead_id, step, channel, status, reason, due_at, send_after, to_address)
            VALUES {values}
            ON CONFLICT (tenant_id, lead_id, step, channel) DO NOTHING RETURNING step, channel""",
        params,
    ).fetchall()
    return {(row["step"], row["channel"]) for row in created}


def due_touch_ids(conn: psycopg.Connection, now: dt.datetime, lead_id: int | None = None,
                  limit: int = 500) -> list[int]:
    rows = conn.execute(
        """SELECT id FROM touches WHERE status IN ('scheduled', 'deferred') AND send_after <= %s
              AND (%s::bigint IS NULL OR lead_id = %s) ORDER BY send_after, id LIMIT %s""",
        (now, lead_id, lead_id, limit),
    ).fetchall()
    return [r["id"] for r in rows]


# --- reserving -------------------------------------------------------------------------

def lock_touch(conn: psycopg.Connection, touch_id: int) -> Touch | None:
    """The touch, locked for this transaction (after its lead: lead_state's lock order)."""
    return typed_rows(conn, Touch, "SELECT * FROM touches WHERE id = %s FOR UPDATE", (touch_id,)).fetchone()


def defer_touch(conn: psycopg.Connection, touch_id: int, reason: str, send_after: dt.datetime) -> None:
    conn.execute("UPDATE touches SET status = 'deferred', reason = %s, send_after = %s, updated_at = now() "
                 "WHERE id = %s", (reason, send_after, touch_id))


def other_sms_out(conn: psycopg.Connection, lead_id: int, touch_id: int) -> bool:
    """Whether another SMS of the lead has gone out (or may have)."""
    return conn.execute(
        "SELECT 1 FROM touches WHERE lead_id = %s AND channel = 'sms' AND id <> %s "
        "AND status IN ('sending', 'sent', 'unknown')", (lead_id, touch_id)).fetchone() is not None


def spaced_until(conn: psycopg.Connection, touch: Touch) -> dt.datetime | None:
    """The earliest moment the touch keeps its sequence's spacing from every earlier step
    that went out (None when none did)."""
    return conn.execute(
        """SELECT max(reserved_at + (%s - due_at)) AS earliest FROM touches
            WHERE lead_id = %s AND step < %s AND status IN ('sending', 'sent', 'unknown')""",
        (touch.due_at, touch.lead_id, touch.step),
    ).fetchone()["earliest"]


def recent_sms_reservations(conn: psycopg.Connection, to_address: str | None, since: dt.datetime,
                            limit: int) -> list[dt.datetime]:
    """When the latest `limit` texts to the number since `since` were reserved, newest first."""
    rows = conn.execute(
        """SELECT reserved_at FROM touches WHERE channel = 'sms' AND to_address = %s
              AND status IN ('sending', 'sent', 'unknown') AND reserved_at > %s
            ORDER BY reserved_at DESC LIMIT %s""",
        (to_address, since, limit),
    ).fetchall()
    return [r["reserved_at"] for r in rows]


def reserve_touch(conn: psycopg.Connection, touch_id: int, *, now: dt.datetime, owner: int | None,
                  send_key: str, body: str, subject: str | None) -> None:
    """Moves the touch to `sending` with the message it is about to send."""
    conn.execute(
        """UPDATE touches SET status = 'sending', reserved_at = %s, reserved_wall_at = clock_timestamp(),
                  reserved_by = %s, send_key = %s, attempts = attempts + 1,
                  body = %s, subject = %s, updated_at = now() WHERE id = %s""",
        (now, owner, send_key, body, subject, touch_id),
    )


# --- recording an outcome ----------------------------------------------------------------

def record_status(conn: psycopg.Connection, touch_id: int, status: str, reason: str | None, *,
                  from_status: tuple[str, ...] | None = None, message_id: str | None = None,
                  code: str | None = None, sent_at: dt.datetime | None = None,
                  send_after: dt.datetime | None = None, resolve_after: dt.datetime | None = None) -> bool:
    """Records the touch's new status, only if it is still in `from_status` (when given).
    The message id, code, sent and send-after times are kept when not given. Returns
    whether it was recorded."""
    return conn.execute(
        """UPDATE touches SET status = %s, reason = %s, provider_message_id = coalesce(%s, provider_message_id),
                  error_code = coalesce(%s, error_code), sent_at = coalesce(%s, sent_at),
                  send_after = coalesce(%s, send_after), resolve_after = %s, updated_at = now()
            WHERE id = %s AND (%s::text[] IS NULL OR status = ANY(%s::text[])) RETURNING status""",
        (status, reason, message_id, code, sent_at, send_after, resolve_after, touch_id,
         list(from_status) if from_status else None, list(from_status) if from_status else None),
    ).fetchone() is not None


def status_of(conn: psycopg.Connection, touch_id: int) -> tuple[str, str | None]:
    """(status, reason) of the touch."""
    row = conn.execute("SELECT status, reason FROM touches WHERE id = %s", (touch_id,)).fetchone()
    return row["status"], row["reason"]


def skip_pending_sms(conn: psycopg.Connection, lead_id: int, reason: str) -> list[int]:
    """Skips the lead's SMS steps not sent yet; returns their step numbers."""
    rows = conn.execute(
        """UPDATE touches SET status = 'skipped', reason = %s, updated_at = now()
            WHERE lead_id = %s AND channel = 'sms' AND status IN ('scheduled', 'deferred') RETURNING step""",
        (reason, lead_id),
    ).fetchall()
    return [r["step"] for r in rows]


# --- settling lost outcomes (send_reconcile) -----------------------------------------------

def tenants_with_sends_to_reconcile(conn: psycopg.Connection, now: dt.datetime,
                                    stale_after: dt.timedelta) -> list[int]:
    """Every active shop with a reservation to settle or an unknown touch due to be asked
    about (system-wide: run in `db.system_tx`)."""
    rows = conn.execute("SELECT tenants_with_sends_to_reconcile(%s, %s) AS id", (now, stale_after)).fetchall()
    return [r["id"] for r in rows]


def mark_orphans_unknown(conn: psycopg.Connection, now: dt.datetime, stale_before: dt.datetime) -> list[OrphanedTouch]:
    """`sending` touches whose sender session is gone or reserved before `stale_before`
    become `unknown` (to be asked about at `now`), or `sent` when a status callback
    already named the vendor's message. Rows another transaction holds are left."""
    return typed_rows(
        conn, OrphanedTouch,
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
        {"stale": stale_before, "now": now},
    ).fetchall()


def claim_unknown(conn: psycopg.Connection, now: dt.datetime, *, lease_until: dt.datetime,
                  batch: int) -> list[UnknownTouch]:
    """Up to `batch` unknown touches due to be asked about by `now`, leased until
    `lease_until` (other reconcilers skip them) and counted as one more attempt."""
    claimed = typed_rows(
        conn, Touch,
        """UPDATE touches SET resolve_after = %(lease)s, resolve_attempts = resolve_attempts + 1, updated_at = now()
            WHERE id IN (SELECT id FROM touches
                          WHERE status = 'unknown' AND resolve_after IS NOT NULL AND resolve_after <= %(now)s
                          ORDER BY resolve_after LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
        RETURNING *""",
        {"lease": lease_until, "now": now, "batch": batch},
    ).fetchall()
    sms = [t.to_address for t in claimed if t.channel == "sms"]
    taken: dict[str, set[tuple[int, str]]] = {}
    if sms:  # message ids already known to belong to other touches: never this one's proof
        for r in conn.execute("""SELECT id, to_address, provider_message_id FROM touches
                                  WHERE channel = 'sms' AND to_address = ANY(%s) AND provider_message_id IS NOT NULL""",
                              (sms,)).fetchall():
            taken.setdefault(r["to_address"], set()).add((r["id"], r["provider_message_id"]))
    return [UnknownTouch(**vars(t),
                         taken_ids=frozenset(mid for tid, mid in taken.get(t.to_address, ()) if tid != t.id))
            for t in claimed]


def lock_for_resolution(conn: psycopg.Connection, touch_id: int) -> ResolutionState | None:
    return typed_rows(conn, ResolutionState,
                 "SELECT status, replanned, resolve_attempts FROM touches WHERE id = %s FOR UPDATE",
                 (touch_id,)).fetchone()


def later_step_out(conn: psycopg.Connection, touch: Touch) -> int | None:
    """The first later step of the lead on the touch's channel that went out (or may have)."""
    return conn.execute(
        """SELECT min(step) AS step FROM touches WHERE lead_id = %s AND channel = %s AND step > %s
              AND status IN ('sending', 'sent', 'unknown')""",
        (touch.lead_id, touch.channel, touch.step)).fetchone()["step"]


def ask_again_at(conn: psycopg.Connection, touch_id: int, at: dt.datetime) -> None:
    conn.execute("UPDATE touches SET resolve_after = %s, updated_at = now() WHERE id = %s", (at, touch_id))


def confirm_sent(conn: psycopg.Connection, touch_id: int, reason: str, message_id: str | None) -> None:
    """The vendor has the message: `sent`, as of its reservation."""
    conn.execute(
        """UPDATE touches SET status = 'sent', reason = %s, provider_message_id = coalesce(provider_message_id, %s),
                  sent_at = coalesce(sent_at, reserved_at), resolve_after = NULL, updated_at = now()
            WHERE id = %s""", (reason, message_id, touch_id))


def replan_touch(conn: psycopg.Connection, touch_id: int, reason: str) -> None:
    """Owed again, once. send_after is left as it was (in the past): the touch is due at
    once and goes out before any later step, which then keeps its spacing from it."""
    conn.execute(
        """UPDATE touches SET status = 'scheduled', replanned = true, reason = %s,
                  resolve_after = NULL, updated_at = now() WHERE id = %s""",
        (reason, touch_id))


def fail_unknown(conn: psycopg.Connection, touch_id: int, reason: str) -> None:
    conn.execute("UPDATE touches SET status = 'failed', reason = %s, resolve_after = NULL, updated_at = now() "
                 "WHERE id = %s", (reason, touch_id))


def stop_asking(conn: psycopg.Connection, touch_id: int, reason: str) -> None:
    """The touch stays `unknown` for good: the vendor is not asked again."""
    conn.execute("UPDATE touches SET reason = %s, resolve_after = NULL, updated_at = now() WHERE id = %s",
                 (reason, touch_id))


# --- delivery callbacks -------------------------------------------------------------------

def touch_of_channel(conn: psycopg.Connection, touch_id: int, channel: str) -> Touch | None:
    return typed_rows(conn, Touch, "SELECT * FROM touches WHERE id = %s AND channel = %s",
                 (touch_id, channel)).fetchone()


def touch_by_message_id(conn: psycopg.Connection, message_id: str, channel: str) -> Touch | None:
    return typed_rows(conn, Touch, "SELECT * FROM touches WHERE provider_message_id = %s AND channel = %s",
                 (message_id, channel)).fetchone()


def advance_delivery(conn: psycopg.Connection, touch_id: int, status: str, progress: dict[str, int], *,
                     message_id: str | None, error_code: str | None) -> bool:
    """Sets delivery_status to `status` if that is further along (`progress` ranks the
    statuses) than the one recorded; keeps the first message id. Returns whether it moved."""
    return conn.execute(
        """UPDATE touches SET delivery_status = %s, error_code = coalesce(%s, error_code),
                  provider_message_id = coalesce(provider_message_id, %s), updated_at = now()
            WHERE id = %s AND coalesce((%s::jsonb ->> delivery_status)::int, -1) < %s RETURNING id""",
        (status, error_code, message_id, touch_id, Jsonb(progress), progress[status]),
    ).fetchone() is not None


def confirm_unknown_by_provider(conn: psycopg.Connection, touch_id: int) -> bool:
    """An `unknown` touch the vendor reported on is `sent`. Returns False (and changes
    nothing) when the touch is no longer `unknown`: a reconciler settled it first."""
    return conn.execute("UPDATE touches SET status = 'sent', reason = 'confirmed_by_provider', resolve_after = NULL, "
                        "sent_at = coalesce(sent_at, reserved_at), updated_at = now() "
                        "WHERE id = %s AND status = 'unknown' RETURNING id", (touch_id,)).fetchone() is not None


# --- reading -------------------------------------------------------------------------------

def lead_touches(conn: psycopg.Connection, lead_id: int) -> list[Touch]:
    """Every touch of the lead, by step and channel."""
    return typed_rows(conn, Touch, "SELECT * FROM touches WHERE lead_id = %s ORDER BY step, channel",
                 (lead_id,)).fetchall()
