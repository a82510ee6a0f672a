"""SendGrid's signed Event Webhook for one shop: a JSON array of events, ECDSA-signed
over `timestamp + raw body` and checked with the SDK's EventWebhook helper against the
shop's verification key. Event kinds and fields we do not use are accepted."""
from __future__ import annotations

import binascii
import datetime as dt
import json
import time

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.store.db import Database
from lead_orchestrator.services.delivery import apply_email_event
from lead_orchestrator.store.shops import Shop
from webhook_receiver import metrics
from webhook_receiver.deps import (DATABASE_ERRORS, current_shop, database_unavailable, get_db, read_limited_body,
                                   require_content_type)
from webhook_receiver.errors import ApiError
from webhook_receiver.models import ErrorBody

router = APIRouter(prefix="/webhooks/sendgrid", tags=["sendgrid"])

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
# SendGrid batches events, so bodies are larger than other webhooks'.
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_EVENTS = 10_000
# SendGrid documents no replay window and retries failed posts for hours, so the
# signature timestamp may be old; replaying an event changes nothing (statuses only
# move forward, opt-outs are idempotent). Reject only the absurd.
MAX_AGE = dt.timedelta(hours=26)
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)

_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 415, 422, 503)}


def verify(shop: Shop, body: bytes, signature: str | None, timestamp: str | None) -> str:
    """Returns the body as text when the signature is good; raises ApiError(401) if not."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    if not shop.sendgrid_event_public_key:
        raise ApiError(401, "no_event_webhook_key", "this shop has no SendGrid event webhook verification key")
    if not signature or not timestamp:
        raise ApiError(401, "missing_signature", "the event webhook signature and timestamp headers are required")
    if not timestamp.isdigit():
        raise ApiError(401, "bad_timestamp", "the signature timestamp is not a Unix time")
    age = dt.timedelta(seconds=time.time() - int(timestamp))
    if age > MAX_AGE or -age > MAX_CLOCK_SKEW:
        raise ApiError(401, "stale_timestamp", "the signature timestamp is too old or in the future")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body is not UTF-8") from None
    helper = EventWebhook()
    try:
        key = helper.convert_public_key_to_ecdsa(shop.sendgrid_event_public_key)
        valid = helper.verify_signature(text, signature, timestamp, key)
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise ApiError(401, "bad_signature", "the event webhook signature does not verify")
    return text


def parse_events(text: str) -> list[dict]:
    try:
        events = json.loads(text)
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(events, list):
        raise ApiError(422, "invalid_payload", "the body must be a JSON array of events")
    if len(events) > MAX_EVENTS:
        raise ApiError(413, "too_many_events", f"at most {MAX_EVENTS} events per request")
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise ApiError(422, "invalid_payload", f"{i}: each event is an object with an `event` name")
    return events


@router.post("/{tenant}/events", responses=_ERRORS)
async def receive_sendgrid_events(request: Request, shop: Shop = Depends(current_shop),
                                  db: Database = Depends(get_db)):
    require_content_type(request, "application/json")
    body = await read_limited_body(request, MAX_BODY_BYTES)
    try:
        text = verify(shop, body, request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER))
    except ApiError:
        metrics.WEBHOOKS.labels("sendgrid", "bad_signature").inc()
        raise
    events = parse_events(text)
    now = dt.datetime.now(dt.timezone.utc)

    def apply() -> int:
        with db.tenant_tx(shop.id) as conn:
            return sum(1 for event in events if apply_email_event(conn, event, at=now) is not None)

    try:
        matched = await run_in_threadpool(apply)
    except DATABASE_ERRORS:
        metrics.WEBHOOKS.labels("sendgrid", "unavailable").inc()
        raise database_unavailable() from None
    metrics.WEBHOOKS.labels("sendgrid", "accepted").inc()
    return {"status": "accepted", "events": len(events), "matched": matched}
