"""Storing a CRM webhook's event and answering: the same for every CRM's route.

202 stored, 200 duplicate (the same delivery or change was stored before), 422 when the
payload itself cannot be stored, 503 when nothing could be stored (the CRM sends it
again); every 2xx comes after the commit (the group-commit writer, inbox_writer.py)."""
from __future__ import annotations

import logging

import psycopg
from fastapi import Request
from fastapi.responses import Response

from lead_orchestrator.store.db import is_connection_error
from lead_orchestrator.store.inbox import NewEvent
from webhook_receiver.deps import database_unavailable
from webhook_receiver.errors import ApiError

log = logging.getLogger(__name__)

# The answers' JSON written out (what JSONResponse renders for {"status": ..., "event_id": ...}):
# json.dumps of a two-key dict cost more than the rest of the answer on the hot path.
_DUPLICATE = b'{"status":"duplicate","event_id":null}'
_ACCEPTED = b'{"status":"accepted","event_id":%d}'


async def store_and_answer(request: Request, shop, event: NewEvent, counts: dict, vendor: str) -> Response:
    """`counts`: the route's metric counters by result ("accepted", "duplicate", "unavailable")."""
    try:
        event_id = await request.app.state.inbox_writer.store(shop.id, event)
    except psycopg.DataError as exc:
        # The payload itself cannot be stored (checked before, so this should not happen).
        raise ApiError(422, "invalid_payload", f"the payload cannot be stored: {exc.diag.message_primary}") from None
    except psycopg.Error as exc:
        # Whatever else went wrong, the event is not stored: 503 makes the CRM send it again.
        # The database being down is logged once, when it goes (lead_orchestrator.store.db.Availability).
        if not is_connection_error(exc):
            log.exception("could not store a %s webhook for shop %s", vendor, shop.slug)
        counts["unavailable"].inc()
        raise database_unavailable() from None
    if event_id is None:
        counts["duplicate"].inc()
        return Response(_DUPLICATE, status_code=200, media_type="application/json")
    counts["accepted"].inc()
    return Response(_ACCEPTED % event_id, status_code=202, media_type="application/json")
