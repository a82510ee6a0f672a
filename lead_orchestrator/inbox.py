"""Storing events in the inbox: the durable hand-off between the receiver (and the
poll) and the ingest job. A change seen twice — a re-delivered webhook, or a webhook
and the poll — is stored once, keyed by (table, object id, updatedDate)."""
from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def dedup_key(table: str, data: dict, operation: str) -> str:
    key = f"{table}:{data.get('id')}:{data.get('updatedDate') or ''}"
    # A delete may carry the same updatedDate as the last update; keep it distinct.
    return key + ":DELETE" if operation == "DELETE" else key


def store_event(conn: psycopg.Connection, *, source: str, operation: str, table: str, data: dict,
                payload: dict, webhook_id: str | None = None) -> int | None:
    """Inserts the event for the transaction's tenant. Returns its id, or None when the
    same delivery or the same change was stored before."""
    row = conn.execute(
        """INSERT INTO inbox_events (tenant_id, source, webhook_id, dedup_key, operation, table_name,
                                     object_id, payload)
           VALUES (current_tenant_id(), %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT DO NOTHING RETURNING id""",
        (source, webhook_id, dedup_key(table, data, operation), operation, table, str(data.get("id")),
         Jsonb(payload)),
    ).fetchone()
    return row["id"] if row else None
