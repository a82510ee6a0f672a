"""The decision log: every choice made about a lead, for "why didn't this customer get a text?"."""
from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def record(conn: psycopg.Connection, lead_id: int | None, kind: str, *, order_id: str | None = None,
           **detail) -> None:
    conn.execute(
        "INSERT INTO lead_events (tenant_id, lead_id, order_id, kind, detail) VALUES (current_tenant_id(), %s, %s, %s, %s)",
        (lead_id, order_id, kind, Jsonb({k: v for k, v in detail.items() if v is not None})),
    )
