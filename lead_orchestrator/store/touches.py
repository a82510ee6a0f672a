"""The `touches` table: one row per (lead, step, channel), and the statements the touch
engine, the send reconciler, delivery callbacks and the timeline run on it.

Every function takes a connection in a tenant transaction (`db.tenant_tx`; row-level
security applies). Rows come back as `Touch`, named and typed as the table's columns (tests/test_touch_store.py keeps
them in step with the schema), or as a narrower row where a statement returns less or more.
What to do with a touch is decided by the use cases (services/touches.py,
send_reconcile.py, delivery.py); the statements here only re-check status where a
concurrent writer could have moved it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

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
class NewTouch:
    """A step of a lead's sequence, as planned (the row `plan_touches` inserts)."""
    step: int
    channel: str
    status: str
    reason: str | None
    due_at: dt.datetime
    send_after: dt.datetime
    to_address: str | None


def _rows(conn: psycopg.Connection, row_type: type, query: str, params: Any) -> psycopg.Cursor:
    return conn.cursor(row_factory=class_row(row_type)).execute(query, params)


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
    return _rows(conn, Touch, "SELECT * FROM touches WHERE id = %s FOR UPDATE", (touch_id,)).fetchone()


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


# --- reading -------------------------------------------------------------------------------

def lead_touches(conn: psycopg.Connection, lead_id: int) -> list[Touch]:
    """Every touch of the lead, by step and channel."""
    return _rows(conn, Touch, "SELECT * FROM touches WHERE lead_id = %s ORDER BY step, channel",
                 (lead_id,)).fetchall()
