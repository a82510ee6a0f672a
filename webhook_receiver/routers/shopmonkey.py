"""POST /webhooks/shopmonkey/{tenant}: verify, validate, store, then answer.

The answer 2xx is sent only after the event is committed to the inbox; when it cannot
be stored the answer is 503, which ShopMonkey retries.
"""
from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.db import Database
from lead_orchestrator.inbox import store_event
from lead_orchestrator.shops import Shop
from webhook_receiver import metrics
from webhook_receiver.deps import (DATABASE_ERRORS, current_shop, database_unavailable, get_db, read_body,
                                   require_content_type)
from webhook_receiver.errors import ApiError
from webhook_receiver.models import Accepted, ErrorBody, ShopMonkeyWebhook
from webhook_receiver.payloads import PayloadError, parse_json_object
from webhook_receiver.signatures import BadSignature, verify_standard_webhook

router = APIRouter(prefix="/webhooks/shopmonkey", tags=["shopmonkey"])

# Stored in a unique index: bounded, so no header can exceed what an index row holds.
WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,255}")

_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 415, 422, 429, 503)}


def _inline_schema(model) -> dict:
    """The model's JSON schema with its $defs inlined: the body is read raw (the
    signature covers the exact bytes), so FastAPI cannot document it by itself."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _header(name: str, description: str) -> dict:
    return {"name": name, "in": "header", "required": True, "description": description, "schema": {"type": "string"}}


_DOCUMENTED_REQUEST = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(ShopMonkeyWebhook)}}},
    "parameters": [
        _header("webhook-id", "Standard Webhooks message id (1-255 visible ASCII characters)"),
        _header("webhook-timestamp", "Unix seconds; refused more than 5 minutes from now"),
        _header("webhook-signature", "v1,<base64 HMAC-SHA256 of id.timestamp.body> (space-separated list)"),
    ],
}


@router.post("/{tenant}", status_code=202, response_model=Accepted, responses={200: {"model": Accepted}, **_ERRORS},
             openapi_extra=_DOCUMENTED_REQUEST)
async def receive_shopmonkey_webhook(
    request: Request,
    shop: Shop = Depends(current_shop),
    db: Database = Depends(get_db),
    body: bytes = Depends(read_body),
):
    require_content_type(request, "application/json")
    secret = shop.webhook_secret.get_secret_value() if shop.webhook_secret else None
    if not secret:
        raise ApiError(401, "no_webhook_secret", "this shop has no webhook secret configured")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body is not UTF-8") from None
    webhook_id = request.headers.get("webhook-id")
    if webhook_id is not None and not WEBHOOK_ID.fullmatch(webhook_id):
        raise ApiError(400, "invalid_webhook_id", "webhook-id must be 1-255 visible ASCII characters")
    try:
        verify_standard_webhook(secret, body, dict(request.headers))
    except BadSignature as exc:
        metrics.WEBHOOKS.labels("shopmonkey", "bad_signature").inc()
        raise ApiError(401, "bad_signature", f"signature check failed: {exc}") from None
    try:
        raw = parse_json_object(text)
    except PayloadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    try:
        event = ShopMonkeyWebhook.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, "invalid_payload", f"{where}: {first['msg']}") from None

    def store() -> int | None:
        with db.tenant_tx(shop.id) as conn:
            return store_event(conn, source="webhook", operation=event.operation, table=event.table,
                               data=raw["data"], payload=raw, webhook_id=webhook_id)

    try:
        event_id = await run_in_threadpool(store)
    except DATABASE_ERRORS:
        metrics.WEBHOOKS.labels("shopmonkey", "unavailable").inc()
        raise database_unavailable() from None
    if event_id is None:
        metrics.WEBHOOKS.labels("shopmonkey", "duplicate").inc()
        return JSONResponse({"status": "duplicate", "event_id": None}, status_code=200)
    metrics.WEBHOOKS.labels("shopmonkey", "accepted").inc()
    return JSONResponse({"status": "accepted", "event_id": event_id}, status_code=202)
