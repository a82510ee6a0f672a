"""The decision log: every choice made about a lead, for "why didn't this customer get a text?"."""
from __future__ import annotations

import datetime as dt

import psycopg
from psycopg.types.json import Jsonb


def record(conn: psycopg.Connection, lead_id: int | None, kind: str, *, order_id: str | None = None,
           at: dt.datetime | None = None, **detail) -> None:
    """`at` is the moment the decision was made (the engine's `now`, which tests drive);
    unset, the database clock."""
    conn.execute(
        "INSERT INTO lead_events (tenant_id, lead_id, order_id, at, kind, detail) "
        "VALUES (current_tenant_id(), %s, %s, coalesce(%s, clock_timestamp()), %s, %s)",
        (lead_id, order_id, at, kind, Jsonb({k: v for k, v in detail.items() if v is not None})),
    )
