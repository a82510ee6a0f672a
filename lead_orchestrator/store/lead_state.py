"""Ending leads and recording consent: the few writes every stop condition shares.

Lock order, kept everywhere a lead and its touches are both written: the lead row first,
then its touch rows. The sender takes the lead `FOR SHARE` before reserving a touch, so a
stop that has begun (lead locked) is seen by any reservation that starts after it; a
reservation that was already made is in flight and is not recalled.
"""
from __future__ import annotations

import datetime as dt

import psycopg
from lead_orchestrator.store.db import typed_rows

from lead_orchestrator.store import lead_log
from lead_orchestrator.store.leads import Lead

PENDING = ("scheduled", "deferred")


def consent_key(channel: str, address: str) -> str:
    """Phones are compared in E.164 as stored; email addresses without regard to case."""
    return address.strip().lower() if channel == "email" else address.strip()


def cancel_pending(conn: psycopg.Connection, lead_id: int, reason: str, *, at: dt.datetime | None = None) -> int:
    """Stops every touch of the lead that has not gone out yet (and records which)."""
    rows = conn.execute(
        """UPDATE touches SET status = 'cancelled', reason = %s, updated_at = now()
            WHERE lead_id = %s AND status IN ('scheduled', 'deferred') RETURNING step, channel""",
        (reason, lead_id),
    ).fetchall()
    if rows:
        lead_log.record(conn, lead_id, "touches_cancelled", reason=reason, at=at,
                        touches=sorted(f"{r['step']}:{r['channel']}" for r in rows))
    return len(rows)


def share_lead_of_touch(conn: psycopg.Connection, touch_id: int) -> Lead | None:
    """The lead of the touch, locked FOR SHARE before the touch is locked (the order above),
    as the sender reserves it. None when there is no such touch."""
    return typed_rows(conn, Lead, "SELECT * FROM leads WHERE id = (SELECT lead_id FROM touches WHERE id = %s) FOR SHARE",
                      (touch_id,)).fetchone()


def share_lead_status(conn: psycopg.Connection, lead_id: int) -> str | None:
    """The lead's status, the lead locked FOR SHARE (before its touches: the order above)."""
    row = conn.execute("SELECT status FROM leads WHERE id = %s FOR SHARE", (lead_id,)).fetchone()
    return row["status"] if row else None


def end_lead(conn: psycopg.Connection, lead_id: int, status: str, reason: str, *, at: dt.datetime | None = None,
             **detail) -> bool:
    """Ends an active lead (`stopped`, `completed`, ...) and cancels what it still owed.
    Returns False when the lead had already ended."""
    row = conn.execute(
        """UPDATE leads SET status = %s, status_reason = %s, ended_at = coalesce(%s, now()), updated_at = now()
            WHERE id = %s AND status = 'active' RETURNING id""",
        (status, reason, at, lead_id),
    ).fetchone()
    if row is None:
        return False
    cancelled = cancel_pending(conn, lead_id, f"lead_{status}:{reason}", at=at)
    lead_log.record(conn, lead_id, f"lead_{status}", reason=reason, touches_cancelled=cancelled, at=at, **detail)
    return True


def complete_if_done(conn: psycopg.Connection, lead_id: int, *, at: dt.datetime | None = None) -> bool:
    """The last step is done (sent, failed, skipped, or unknown once the vendor has been
    asked all there is to ask: send_reconcile): the lead is `completed`."""
    row = conn.execute(
        """UPDATE leads SET status = 'completed', status_reason = 'sequence_finished',
                  ended_at = coalesce(%s, now()), updated_at = now()
            WHERE id = %s AND status = 'active'
              AND NOT EXISTS (SELECT 1 FROM touches
                               WHERE lead_id = %s AND (status IN ('scheduled', 'deferred', 'sending')
                                                       OR (status = 'unknown' AND resolve_after IS NOT NULL)))
        RETURNING id""",
        (at, lead_id, lead_id),
    ).fetchone()
    if row:
        lead_log.record(conn, lead_id, "lead_completed", reason="sequence_finished", at=at)
    return row is not None


def is_opted_out(conn: psycopg.Connection, channel: str, address: str) -> bool:
    row = conn.execute("SELECT opted_out FROM contacts WHERE channel = %s AND address = %s",
                       (channel, consent_key(channel, address))).fetchone()
    return bool(row and row["opted_out"])


def set_opt_out(conn: psycopg.Connection, channel: str, address: str, opted_out: bool, *, source: str) -> bool:
    """Records consent for the address (the whole shop). Returns True if it changed."""
    key = consent_key(channel, address)
    before = conn.execute("SELECT opted_out FROM contacts WHERE channel = %s AND address = %s FOR UPDATE",
                          (channel, key)).fetchone()
    conn.execute(
        """INSERT INTO contacts (tenant_id, channel, address, opted_out, change_source)
           VALUES (current_tenant_id(), %s, %s, %s, %s)
           ON CONFLICT (tenant_id, channel, address)
           DO UPDATE SET opted_out = EXCLUDED.opted_out, change_source = EXCLUDED.change_source, changed_at = now()""",
        (channel, key, opted_out, source),
    )
    return (before["opted_out"] if before else False) != opted_out


def leads_for_contact(conn: psycopg.Connection, channel: str, address: str, *, active_only: bool = True) -> list[int]:
    """The shop's leads reached at this address, locked (lead rows come first)."""
    column = "phone_e164 = %s" if channel == "sms" else "lower(email) = %s"
    status = "AND status = 'active'" if active_only else ""
    rows = conn.execute(f"SELECT id FROM leads WHERE {column} {status} ORDER BY id FOR UPDATE",
                        (consent_key(channel, address),)).fetchall()
    return [r["id"] for r in rows]


def opt_out_contact(conn: psycopg.Connection, channel: str, address: str, *, source: str, reason: str,
                    at: dt.datetime | None = None, **detail) -> list[int]:
    """The address is opted out of every sequence of the shop, and every active lead that
    reaches it stops now (all channels). Returns the leads stopped."""
    leads = leads_for_contact(conn, channel, address)
    changed = set_opt_out(conn, channel, address, True, source=source)
    lead_log.record(conn, None, "contact_opted_out", at=at, channel=channel, address=consent_key(channel, address),
                    source=source, changed=changed, leads=leads, **detail)
    return [lead for lead in leads if end_lead(conn, lead, "stopped", reason, at=at, source=source, **detail)]


def opt_in_contact(conn: psycopg.Connection, channel: str, address: str, *, source: str,
                   at: dt.datetime | None = None, **detail) -> bool:
    """Consent given again (START): later leads and steps may reach the address. Leads
    stopped by the opt-out stay stopped; their sequence is not resumed."""
    changed = set_opt_out(conn, channel, address, False, source=source)
    lead_log.record(conn, None, "contact_opted_in", at=at, channel=channel, address=consent_key(channel, address),
                    source=source, changed=changed, **detail)
    return changed
