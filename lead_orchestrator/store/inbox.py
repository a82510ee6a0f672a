"""Storing events in the inbox: the durable hand-off between the receiver (and the
poll) and the ingest path. A change seen twice — a re-delivered webhook, or a webhook
and the poll — is stored once, keyed by (CRM, table, object id, version stamp).

De-duplication never swallows a second chance: a new sighting of a change whose event
is parked or dead revives that event (back to pending, counters reset).

Two kinds of payload are stored: an event made from a CRM's change hint
(`NewEvent.from_hint`: the poll, and webhook routes that parse their body through the
CRM's adapter) holds `{"hint": <the hint, CRM-neutral>, "body": <the raw body or null>}`;
the ShopMonkey webhook route stores the raw body as it came (it is the hot path), which
`crm.registry.hint_from_stored_body` reads back."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from lead_orchestrator.crm.base import (ChangeHint, ChangeKind, Estimate, EstimateStatus, operation_of_kind,
                                        parse_stamp, stamp_key, utc_iso)
from lead_orchestrator.crm.registry import hint_from_stored_body

# The table name estimate events are stored under, whatever the CRM (ShopMonkey's word,
# kept so that every stored event keeps its meaning); events of other tables are ignored.
ESTIMATES = "order"
DEFAULT_CRM = "shopmonkey"  # events stored before the inbox knew CRMs

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
        INSERT INTO inbox_events (tenant_id, source, webhook_id, dedup_key, operation, table_name, object_id, payload,
                                  crm)
        SELECT current_tenant_id(), %(source)s, %(webhook_id)s, %(dedup_key)s, %(operation)s, %(table)s,
               %(object_id)s, %(payload)s::jsonb, %(crm)s
         WHERE NOT EXISTS (SELECT 1 FROM revived)
        ON CONFLICT DO NOTHING RETURNING id
    )
    SELECT id FROM revived UNION ALL SELECT id FROM inserted"""

# A JSON string as json.dumps writes it (ASCII, escaped): batch_item writes its object out
# with it, since json.dumps builds an encoder at every call, which cost the receiver more
# than the rest of storing a webhook's event.
_json_text = json.encoder.encode_basestring_ascii

RELEASE_PARKED = """
    UPDATE inbox_events SET status = 'pending', available_at = clock_timestamp(), claimed_by = NULL,
           status_changed_at = clock_timestamp(), error = 'released: ' || coalesce(error, 'parked')
     WHERE status = 'parked'"""


@dataclass(frozen=True)
class NewEvent:
    source: str
    operation: str  # INSERT | UPDATE | DELETE
    table: str
    object_id: str
    updated_date: str | None  # the version stamp as the sender spelled it
    payload_json: str
    webhook_id: str | None = None
    crm: str = DEFAULT_CRM

    @property
    def dedup_key(self) -> str:
        # The stamp in one spelling (domain.estimates.stamp_key), so that a webhook's text
        # and the poll's parsed moment of the same change give the same key.
        key = f"{self.crm}:{self.table}:{self.object_id}:{stamp_key(self.updated_date)}"
        # A delete may carry the same updatedDate as the last update; keep it distinct.
        return key + ":DELETE" if self.operation == "DELETE" else key

    def params(self) -> dict:
        return {"source": self.source, "webhook_id": self.webhook_id, "dedup_key": self.dedup_key,
                "operation": self.operation, "table": self.table, "object_id": self.object_id,
                "payload": self.payload_json, "crm": self.crm}

    def batch_item(self, position: int, tenant_id: int) -> str:
        """This event as one element of store_inbox_events()'s JSON array. The payload is
        spliced in as it arrived (it was validated as JSON) instead of parsed and dumped."""
        webhook_id = "null" if self.webhook_id is None else _json_text(self.webhook_id)
        return (f'{{"pos":{position:d},"tenant_id":{tenant_id:d},"source":{_json_text(self.source)},'
                f'"webhook_id":{webhook_id},"dedup_key":{_json_text(self.dedup_key)},'
                f'"operation":{_json_text(self.operation)},"table_name":{_json_text(self.table)},'
                f'"object_id":{_json_text(self.object_id)},"crm":{_json_text(self.crm)},'
                f'"payload":{self.payload_json}}}')

    @classmethod
    def from_hint(cls, hint: ChangeHint, *, source: str, payload_json: str | None = None,
                  webhook_id: str | None = None) -> "NewEvent":
        """The event for a CRM's change hint. `payload_json` (the raw body, valid JSON
        text, or None) is kept beside the hint for `why` and for debugging."""
        if not hint.estimate_id:
            raise ValueError("a change hint without an estimate id cannot be stored")
        stored = json.dumps(_hint_fields(hint), separators=(",", ":"))
        body = payload_json if payload_json is not None else "null"
        # A hint that names no version (e.g. a payment event) cannot be told apart from the
        # next one of the same estimate: keyed by the estimate alone, the second would be
        # swallowed as a duplicate of the first once that one is done. Each is its own
        # sighting instead (the delivery's id when it has one, so a re-delivery is still
        # one event); the price is one more fetch of an estimate the lead handles once.
        stamp = utc_iso(hint.updated_at) if hint.updated_at is not None \
            else f"unversioned:{webhook_id or uuid.uuid4().hex}"
        return cls(source, operation_of_kind(hint.kind), ESTIMATES, hint.estimate_id, stamp,
                   f'{{"hint":{stored},"body":{body}}}', webhook_id, hint.crm)

    @classmethod
    def from_estimate(cls, estimate: Estimate, *, source: str) -> "NewEvent":
        """A listed estimate (the poll) as an event: the same key its webhook would have."""
        return cls.from_hint(hint_of(estimate), source=source)

    @classmethod
    def from_row(cls, *, source: str, operation: str, table: str, object_id: str, updated_date: str | None,
                 payload: dict, webhook_id: str | None = None, crm: str = DEFAULT_CRM) -> "NewEvent":
        return cls(source, operation, table, object_id, updated_date, json.dumps(payload, separators=(",", ":")),
                   webhook_id, crm)


def hint_of(estimate: Estimate, description: str = "") -> ChangeHint:
    kind = ChangeKind.DELETED if estimate.status is EstimateStatus.DELETED else ChangeKind.UPDATED
    return ChangeHint(crm=estimate.crm, estimate_id=estimate.id, kind=kind, updated_at=estimate.updated_at,
                      created_at=estimate.created_at, description=description)


def _hint_fields(hint: ChangeHint) -> dict[str, Any]:
    return {"crm": hint.crm, "estimate_id": hint.estimate_id, "kind": hint.kind.value,
            "updated_at": utc_iso(hint.updated_at) if hint.updated_at is not None else None,
            "created_at": utc_iso(hint.created_at) if hint.created_at is not None else None,
            "description": hint.description}


def stored_hint(payload: Any) -> ChangeHint | None:
    """The hint an event made by `NewEvent.from_hint` holds; None for a raw body."""
    fields = payload.get("hint") if isinstance(payload, dict) else None
    if not isinstance(fields, dict) or not fields.get("estimate_id") or not fields.get("crm"):
        return None
    try:
        kind = ChangeKind(fields.get("kind"))
    except ValueError:
        kind = ChangeKind.UPDATED
    return ChangeHint(crm=str(fields["crm"]), estimate_id=str(fields["estimate_id"]), kind=kind,
                      updated_at=parse_stamp(fields.get("updated_at")), created_at=parse_stamp(fields.get("created_at")),
                      description=str(fields.get("description") or ""))


def insert_event(conn: psycopg.Connection, event: NewEvent) -> int | None:
    """Inserts the event for the transaction's tenant. Returns its id, or None when the
    same delivery or the same change was stored before (and is not parked or dead)."""
    row = conn.execute(INSERT_EVENT, event.params()).fetchone()
    if row is None:
        return None
    return row["id"] if isinstance(row, dict) else row[0]


def store_event(conn: psycopg.Connection, *, source: str, operation: str, table: str, data: dict,
                payload: dict, webhook_id: str | None = None, crm: str = DEFAULT_CRM) -> int | None:
    """Stores a row as the CRM's webhook would deliver it (`data`: the row): the way
    tests and tools put an event in. The row's version is read by the CRM's own reader."""
    object_id = str(data.get("id"))
    seen = hint_from_stored_body(crm, {"operation": operation, "table": table, "data": data},
                                 estimate_id=object_id, operation=operation)
    stamp = utc_iso(seen.updated_at) if seen.updated_at is not None else None
    return insert_event(conn, NewEvent.from_row(source=source, operation=operation, table=table, object_id=object_id,
                                                updated_date=stamp, payload=payload, webhook_id=webhook_id, crm=crm))


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
