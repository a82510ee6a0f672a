"""Storing events in the inbox: the durable hand-off between the receiver (and the
poll) and the ingest path. A change seen twice — a re-delivered webhook, or a webhook
and the poll — is stored once, keyed by (table, object id, updatedDate).

De-duplication never swallows a second chance: a new sighting of a change whose event
is parked or dead revives that event (back to pending, counters reset)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg

# The payload goes in as JSON text: the receiver already holds the raw body, and
# re-serialising it would cost more than the insert.
INSERT_EVENT = """
    WITH revived AS (
        UPDATE inbox_events
           SET status = 'pending', available_at = clock_timestamp(), claimed_by = NULL, attempts = 0,
               unexpected_errors = 0, status_changed_at = clock_timestamp(),
               error = 'revived by a new ' || %(source)s || ' sighting after: ' || coalesce(error, status)
         WHERE dedup_key = %(dedup_key)s AND status IN ('parked', 'dead')
        RETURNING id
    ), inserted AS (
        INSERT INTO inbox_events (tenant_id, source, webhook_id, dedup_key, operation, table_name, object_id, payload)
        SELECT current_tenant_id(), %(source)s, %(webhook_id)s, %(dedup_key)s, %(operation)s, %(table)s,
               %(object_id)s, %(payload)s::jsonb
         WHERE NOT EXISTS (SELECT 1 FROM revived)
        ON CONFLICT DO NOTHING RETURNING id
    )
    SELECT id FROM revived UNION ALL SELECT id FROM inserted"""

RELEASE_PARKED = """
    UPDATE inbox_events SET status = 'pending', available_at = clock_timestamp(), claimed_by = NULL,
           status_changed_at = clock_timestamp(), error = 'released: ' || coalesce(error, 'parked')
     WHERE status = 'parked'"""


@dataclass(frozen=True)
class NewEvent:
    source: str
    operation: str
    table: str
    object_id: str
    updated_date: str | None
    payload_json: str
    webhook_id: str | None = None

    @property
    def dedup_key(self) -> str:
        key = f"{self.table}:{self.object_id}:{self.updated_date or ''}"
        # A delete may carry the same updatedDate as the last update; keep it distinct.
        return key + ":DELETE" if self.operation == "DELETE" else key

    def params(self) -> dict:
        return {"source": self.source, "webhook_id": self.webhook_id, "dedup_key": self.dedup_key,
                "operation": self.operation, "table": self.table, "object_id": self.object_id,
                "payload": self.payload_json}

    def batch_item(self, position: int, tenant_id: int) -> str:
        """This event as one element of store_inbox_events()'s JSON array. The payload is
        spliced in as it arrived (it was validated as JSON) instead of parsed and dumped."""
        head = json.dumps({"pos": position, "tenant_id": tenant_id, "source": self.source,
                           "webhook_id": self.webhook_id, "dedup_key": self.dedup_key,
                           "operation": self.operation, "table_name": self.table, "object_id": self.object_id},
                          separators=(",", ":"))
        return f'{head[:-1]},"payload":{self.payload_json}}}'

    @classmethod
    def from_row(cls, *, source: str, operation: str, table: str, data: dict, payload: dict,
                 webhook_id: str | None = None) -> "NewEvent":
        return cls(source, operation, table, str(data.get("id")), data.get("updatedDate"),
                   json.dumps(payload, separators=(",", ":")), webhook_id)


def insert_event(conn: psycopg.Connection, event: NewEvent) -> int | None:
    """Inserts the event for the transaction's tenant. Returns its id, or None when the
    same delivery or the same change was stored before (and is not parked or dead)."""
    row = conn.execute(INSERT_EVENT, event.params()).fetchone()
    if row is None:
        return None
    return row["id"] if isinstance(row, dict) else row[0]


def store_event(conn: psycopg.Connection, *, source: str, operation: str, table: str, data: dict,
                payload: dict, webhook_id: str | None = None) -> int | None:
    return insert_event(conn, NewEvent.from_row(source=source, operation=operation, table=table, data=data,
                                                payload=payload, webhook_id=webhook_id))


def release_parked_events(conn: psycopg.Connection) -> int:
    """Gives the transaction's shop's parked events back to the queue (its CRM key was
    fixed or works again); returns how many."""
    return conn.execute(RELEASE_PARKED).rowcount


def release_after_new_credentials(conn: psycopg.Connection, tenant_id: int) -> int:
    """The shop's CRM credentials were replaced (owner connection, `shops update`): its
    parked events go back to the queue and the poll tries the new key on its next cycle.
    If the new key is refused too, the first event parks the shop again."""
    conn.execute("UPDATE poll_state SET health = 'ok', next_poll_at = NULL, consecutive_errors = 0 "
                 "WHERE tenant_id = %s AND health <> 'ok'", (tenant_id,))
    return conn.execute(
        """UPDATE inbox_events SET status = 'pending', available_at = clock_timestamp(), claimed_by = NULL,
                  status_changed_at = clock_timestamp(), error = 'released (credentials updated) after: ' || coalesce(error, '')
            WHERE tenant_id = %s AND status = 'parked'""", (tenant_id,)).rowcount
