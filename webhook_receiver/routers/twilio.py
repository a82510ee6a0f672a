"""Twilio webhooks for one shop: inbound SMS (replies, STOP/START/HELP) and message
status callbacks. Both are form posts signed with the shop's auth token
(`X-Twilio-Signature`), checked with the SDK's RequestValidator over the public URL
Twilio called (PUBLIC_BASE_URL + path + query): behind a proxy the receiver's own URL
differs from it. Parameters we do not use are accepted and ignored.
"""
from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from lead_orchestrator.store.db import Database
from lead_orchestrator.services.delivery import apply_sms_status
from lead_orchestrator.settings import Settings
from lead_orchestrator.store.shops import Shop
from lead_orchestrator.services.stop_conditions import handle_inbound_sms
from webhook_receiver import metrics
from webhook_receiver.deps import (DATABASE_ERRORS, current_shop, database_unavailable, get_db, get_settings,
                                   read_body, require_content_type)
from webhook_receiver.errors import ApiError
from webhook_receiver.models import ErrorBody

router = APIRouter(prefix="/webhooks/twilio", tags=["twilio"])

_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 415, 422, 503)}
TWIML = "application/xml"


def public_url(settings: Settings, request: Request) -> str:
    url = settings.public_base_url.rstrip("/") + request.url.path
    return f"{url}?{request.url.query}" if request.url.query else url


def verified_form(request: Request, shop: Shop, settings: Settings, body: bytes, source: str) -> FormData:
    from twilio.request_validator import RequestValidator

    require_content_type(request, "application/x-www-form-urlencoded")
    token = shop.twilio_auth_token.get_secret_value() if shop.twilio_auth_token else ""
    if not token:
        raise ApiError(401, "no_twilio_auth_token", "this shop has no Twilio auth token configured")
    try:
        form = FormData(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body is not UTF-8") from None
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        metrics.WEBHOOKS.labels(source, "bad_signature").inc()
        raise ApiError(401, "missing_signature", "X-Twilio-Signature is required")
    if not RequestValidator(token).validate(public_url(settings, request), form, signature):
        metrics.WEBHOOKS.labels(source, "bad_signature").inc()
        raise ApiError(401, "bad_signature", "X-Twilio-Signature does not match this shop's auth token")
    return form


def required(form: FormData, *names: str) -> None:
    for name in names:
        if not form.get(name):
            raise ApiError(422, "invalid_payload", f"{name} is required")


async def _run(db_call, source: str):
    try:
        return await run_in_threadpool(db_call)
    except DATABASE_ERRORS:
        metrics.WEBHOOKS.labels(source, "unavailable").inc()
        raise database_unavailable() from None


@router.post("/{tenant}/inbound", responses={200: {"content": {TWIML: {}}}, **_ERRORS})
async def receive_inbound_sms(request: Request, shop: Shop = Depends(current_shop), db: Database = Depends(get_db),
                              settings: Settings = Depends(get_settings), body: bytes = Depends(read_body)):
    """A customer texted the shop. Answers TwiML: empty, or the HELP message."""
    from twilio.twiml.messaging_response import MessagingResponse

    form = verified_form(request, shop, settings, body, "twilio_inbound")
    required(form, "From")
    now = dt.datetime.now(dt.timezone.utc)

    def handle():
        with db.tenant_tx(shop.id) as conn:
            return handle_inbound_sms(conn, shop, from_=form["From"], body=form.get("Body", ""),
                                      message_sid=form.get("MessageSid"), at=now)

    outcome = await _run(handle, "twilio_inbound")
    metrics.WEBHOOKS.labels("twilio_inbound", outcome.kind).inc()
    reply = MessagingResponse()
    if outcome.answer:
        reply.message(outcome.answer)
    return Response(reply.to_xml(xml_declaration=True), media_type=TWIML)


@router.post("/{tenant}/status", status_code=204, responses=_ERRORS)
async def receive_status_callback(request: Request, shop: Shop = Depends(current_shop), db: Database = Depends(get_db),
                                  settings: Settings = Depends(get_settings), body: bytes = Depends(read_body)):
    """A message's delivery status changed (sent, delivered, undelivered + ErrorCode...)."""
    form = verified_form(request, shop, settings, body, "twilio_status")
    required(form, "MessageSid", "MessageStatus")
    touch = request.query_params.get("touch")
    touch_id = int(touch) if touch and touch.isdigit() else None
    now = dt.datetime.now(dt.timezone.utc)

    def handle():
        with db.tenant_tx(shop.id) as conn:
            return apply_sms_status(conn, touch_id=touch_id, message_sid=form["MessageSid"],
                                    status=form["MessageStatus"], error_code=form.get("ErrorCode") or None,
                                    to=form.get("To"), at=now)

    matched = await _run(handle, "twilio_status")
    metrics.WEBHOOKS.labels("twilio_status", "accepted" if matched else "unmatched").inc()
    return Response(status_code=204)
