"""POST /webhooks/shopmonkey/{tenant}: verify, validate, store, then answer.

The answer 2xx is sent only after the event is committed to the inbox; when it cannot
be stored the answer is 503, which ShopMonkey retries.

This is the hottest path of the product: the handler does its steps as plain calls
(no FastAPI dependencies), is served ahead of the framework's middleware stack (see
webhook_receiver/hot_route.py) and stores through the group-commit writer; the request
is still fully described in the OpenAPI document by the FastAPI route of the same path.
"""
from __future__ import annotations

import re

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import ValidationError

from lead_orchestrator.store.inbox import NewEvent
from webhook_receiver import metrics
from webhook_receiver.deps import read_limited_body, require_content_type, shop_for
from webhook_receiver.errors import ApiError
from webhook_receiver.models import Accepted, ErrorBody, ShopMonkeyWebhook, inline_schema
from webhook_receiver.payloads import PayloadError, parse_json_object
from webhook_receiver.signatures import BadSignature, signed_headers, verify_standard_webhook
from webhook_receiver.stored_answer import store_and_answer

router = APIRouter(prefix="/webhooks/shopmonkey", tags=["shopmonkey"])

# Stored in a unique index: bounded, so no header can exceed what an index row holds.
WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,255}")

_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 415, 422, 429, 503)}
_COUNT = {r: metrics.WEBHOOKS.labels("shopmonkey", r)
          for r in ("accepted", "duplicate", "bad_signature", "unavailable")}


def _header(name: str, description: str) -> dict:
    return {"name": name, "in": "header", "required": True, "description": description, "schema": {"type": "string"}}


# The body is read raw (the signature covers the exact bytes), so FastAPI cannot
# document it by itself.
_DOCUMENTED_REQUEST = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(ShopMonkeyWebhook)}}},
    "parameters": [
        _header("webhook-id", "Standard Webhooks message id (1-255 visible ASCII characters)"),
        _header("webhook-timestamp", "Unix seconds; refused more than 5 minutes from now"),
        _header("webhook-signature", "v1,<base64 HMAC-SHA256 of id.timestamp.body> (space-separated list)"),
    ],
}


def parse_webhook(text: str) -> ShopMonkeyWebhook:
    """400 for what is not JSON, 422 for JSON that PostgreSQL could not store or that has
    the wrong shape."""
    try:
        raw = parse_json_object(text)
    except PayloadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    try:
        return ShopMonkeyWebhook.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, "invalid_payload", f"{where}: {first['msg']}") from None


async def handle_shopmonkey_webhook(request: Request) -> Response:
    """The whole route: shop, body, content type, signature, shape, then the inbox."""
    tenant = request.path_params["tenant"]
    shop = await shop_for(request, tenant)
    body = await read_limited_body(request)
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
        verify_standard_webhook(secret, text, signed_headers(request.scope["headers"]))
    except BadSignature as exc:
        _COUNT["bad_signature"].inc()
        raise ApiError(401, "bad_signature", f"signature check failed: {exc}") from None
    hook = parse_webhook(text)
    event = NewEvent(source="webhook", operation=hook.operation, table=hook.table, object_id=hook.data.id,
                     updated_date=hook.data.updatedDate, payload_json=text, webhook_id=webhook_id)
    return await store_and_answer(request, shop, event, _COUNT, "ShopMonkey")


@router.post("/{tenant}", status_code=202, response_model=Accepted, responses={200: {"model": Accepted}, **_ERRORS},
             openapi_extra=_DOCUMENTED_REQUEST)
async def receive_shopmonkey_webhook(request: Request, tenant: str = Path(min_length=1, max_length=64)):
    """Documents the route in /openapi.json; requests are served by hot_route.HotRoute."""
    return await handle_shopmonkey_webhook(request)
