"""The `leads` table: one row per estimate of a shop, and the statements ingest, the
timeline, email replies and the poll run on it.

Every function takes a connection in a tenant transaction (`db.tenant_tx`; row-level
security applies). Rows come back as `Lead`, named and typed as the table's columns
(tests/test_lead_store.py keeps them in step with the schema). Ending a lead and the lead
locks the sender takes are in `lead_state` (they go with the touches they cancel).
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass

import psycopg

from lead_orchestrator.store.db import typed_rows


@dataclass(frozen=True)
class Lead:
    """A `leads` row (sql/0001_core.sql, sql/0016_inbox_crm.sql)."""
    id: int
    tenant_id: int
    order_id: str  # the CRM's estimate id
    order_number: str | None  # the estimate number people read
    customer_id: str | None
    vehicle_id: str | None
    first_name: str | None
    last_name: str | None
    vehicle_name: str | None
    total_cents: int | None
    phone_e164: str | None  # the SMS address qualification chose (None: no SMS)
    email: str | None  # the email address qualification chose (None: no email)
    status: str  # active | disqualified | converted | closed | stopped | completed
    status_reason: str | None
    source: str  # webhook | poll | ... (the event that first made it)
    order_created_at: dt.datetime | None
    order_updated_at: dt.datetime | None
    first_seen_at: dt.datetime  # the sequence counts from here
    created_at: dt.datetime
    updated_at: dt.datetime
    ended_at: dt.datetime | None
    crm: str  # shopmonkey | tekmetric


@dataclass(frozen=True)
class NewLead:
    """What ingest writes of a qualified (or disqualified) estimate: the columns
    `upsert_lead` sets."""
    order_id: str
    order_number: str | None
    customer_id: str | None
    vehicle_id: str | None
    first_name: str | None
    last_name: str | None
    vehicle_name: str | None
    total_cents: int | None
    phone_e164: str | None
    email: str | None
    status: str
    status_reason: str | None
    source: str
    order_created_at: dt.datetime | None
    order_updated_at: dt.datetime | None
    first_seen_at: dt.datetime
    crm: str


# --- ingest ----------------------------------------------------------------------------------

def lock_order(conn: psycopg.Connection, order_id: str) -> Lead | None:
    """The lead of the order, locked for this transaction (None: no lead yet). Two events of
    one estimate (a webhook and a poll sighting) may be processed by two runs at once: the
    order is locked first, even without a lead, so they apply one after the other and the
    second sees the lead the first made."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, current_tenant_id()))", (order_id,))
    return typed_rows(conn, Lead, "SELECT * FROM leads WHERE order_id = %s FOR UPDATE", (order_id,)).fetchone()


def record_order_update(conn: psycopg.Connection, lead_id: int, updated_at: dt.datetime | None,
                        total_cents: int | None) -> None:
    """The estimate changed: its time, and its total when the CRM gave one."""
    conn.execute("UPDATE leads SET order_updated_at = %s, total_cents = coalesce(%s, total_cents), "
                 "updated_at = now() WHERE id = %s", (updated_at, total_cents, lead_id))


def upsert_lead(conn: psycopg.Connection, new: NewLead, now: dt.datetime) -> Lead:
    """Creates the order's lead, or (a disqualified estimate qualifying now) writes its
    customer, addresses and status over the old row; a lead that becomes active counts
    its sequence from `now`."""
    return typed_rows(
        conn, Lead,
        """INSERT INTO leads (tenant_id, order_id, order_number, customer_id, vehicle_id, first_name, last_name,
                              vehicle_name, total_cents, phone_e164, email, status, status_reason, source,
                              order_created_at, order_updated_at, first_seen_at, crm)
           VALUES (current_tenant_id(), %(order_id)s, %(order_number)s, %(customer_id)s, %(vehicle_id)s,
                   %(first_name)s, %(last_name)s, %(vehicle_name)s, %(total_cents)s, %(phone_e164)s, %(email)s,
                   %(status)s, %(status_reason)s, %(source)s, %(order_created_at)s, %(order_updated_at)s,
                   %(first_seen_at)s, %(crm)s)
           ON CONFLICT (tenant_id, order_id) DO UPDATE SET
               first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
               vehicle_name = EXCLUDED.vehicle_name, phone_e164 = EXCLUDED.phone_e164, email = EXCLUDED.email,
               status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,
               first_seen_at = CASE WHEN EXCLUDED.status = 'active' THEN %(now)s ELSE leads.first_seen_at END,
               updated_at = now()
           RETURNING *""",
        {**asdict(new), "now": now},
    ).fetchone()


def close_lead(conn: psycopg.Connection, lead_id: int, status: str, reason: str) -> None:
    """The estimate was approved, deleted or archived in the CRM: the lead ends as `status`."""
    conn.execute("UPDATE leads SET status = %s, status_reason = %s, ended_at = now(), updated_at = now() "
                 "WHERE id = %s", (status, reason, lead_id))


# --- reading ---------------------------------------------------------------------------------

def lead_by_id(conn: psycopg.Connection, lead_id: int) -> Lead | None:
    return typed_rows(conn, Lead, "SELECT * FROM leads WHERE id = %s", (lead_id,)).fetchone()


def lock_lead_status(conn: psycopg.Connection, lead_id: int) -> str | None:
    """The lead's status, the lead locked FOR UPDATE (before its touches: lead_state's lock
    order). None when there is no such lead."""
    row = conn.execute("SELECT id, status FROM leads WHERE id = %s FOR UPDATE", (lead_id,)).fetchone()
    return row["status"] if row else None


def leads_of_order(conn: psycopg.Connection, key: str) -> list[Lead]:
    """Leads whose order id or estimate number is `key`, newest first."""
    return typed_rows(conn, Lead, "SELECT * FROM leads WHERE order_id = %s OR order_number = %s ORDER BY id DESC",
                 (key, key)).fetchall()


def leads_of_email(conn: psycopg.Connection, email: str) -> list[Lead]:
    """Leads reached at the email address (lower case, as consent keys are), newest first."""
    return typed_rows(conn, Lead, "SELECT * FROM leads WHERE lower(email) = %s ORDER BY id DESC", (email,)).fetchall()


def leads_of_phone(conn: psycopg.Connection, phone: str) -> list[Lead]:
    """Leads reached at the E.164 number, newest first."""
    return typed_rows(conn, Lead, "SELECT * FROM leads WHERE phone_e164 = %s ORDER BY id DESC", (phone,)).fetchall()


def leads_named(conn: psycopg.Connection, name: str) -> list[Lead]:
    """Up to 100 leads whose customer's name holds the words of `name` in order (any case),
    the exact name first, then newest first."""
    words = [re.sub(r"([\\%_])", r"\\\1", w) for w in name.lower().split()]
    return typed_rows(
        conn, Lead,
        """SELECT * FROM leads WHERE lower(concat_ws(' ', first_name, last_name)) LIKE %s
            ORDER BY lower(concat_ws(' ', first_name, last_name)) = %s DESC, id DESC LIMIT 100""",
        ("%" + "%".join(words) + "%", " ".join(name.lower().split())),
    ).fetchall()


def has_active_lead(conn: psycopg.Connection) -> bool:
    """Whether the shop has a lead still being followed up."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM leads WHERE status = 'active') AS open").fetchone()["open"]
