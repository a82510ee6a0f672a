"""SendGrid Inbound Parse: the emails customers send to a lead's reply address
(`reply+<signed token>@INBOUND_PARSE_DOMAIN`, the Reply-To of every email we send).
See docs/replies.md.

One URL for the whole deployment: the parse domain is the deployment's, and the signed
address names the shop and the lead. SendGrid posts multipart/form-data, parsed or raw
(both read by lead_orchestrator.messaging.inbound_email). Inbound Parse signs nothing, so the
signature in the address is the authentication: an address we did not make is refused.

Answers. SendGrid retries a post only when the answer is 5xx (for up to 72 hours) and
drops it on 4xx, so every post that cannot succeed later gets a 4xx, and 5xx means "try
again" and nothing else:
  200  recorded (reply or auto-reply), or a duplicate of a message already recorded
  400  malformed multipart, envelope or charsets not JSON
  404  not configured (no INBOUND_PARSE_DOMAIN), no reply address of ours among the
       recipients, a forged or altered address, or its shop or lead no longer exists
  413  body (guard: INBOUND_PARSE_MAX_BYTES), a field, or the number of parts too large
  415  not multipart/form-data
  422  no valid From address
  503  the database is unavailable (nothing recorded), or the reply is recorded but the
       shop's copy was refused for now (SendGrid's retry forwards it; the reply itself
       is a duplicate then and changes nothing)
"""
from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.store.db import Database
from lead_orchestrator.services.email_replies import INBOUND_PARSE_PATH, forward_reply, receive_email_reply
from lead_orchestrator.messaging.inbound_email import InboundEmail, InboundEmailError, read_parse_post
from lead_orchestrator.messaging.reply_address import is_reply_address, read_reply_address
from lead_orchestrator.settings import Settings
from lead_orchestrator.store.shops import load_shop
from webhook_receiver import metrics
from webhook_receiver.deps import DATABASE_ERRORS, database_unavailable, get_db, get_settings
from webhook_receiver.errors import ApiError
from webhook_receiver.models import ErrorBody
from webhook_receiver.multipart_fields import read_multipart

router = APIRouter(tags=["sendgrid"])

PATH = INBOUND_PARSE_PATH
SOURCE = "sendgrid_inbound"
# Text fields are small; the raw MIME message (`email`) is the whole email, attachments
# included, so it may be as large as the post.
FIELD_LIMIT = 2 * 1024 * 1024
_ERRORS = {s: {"model": ErrorBody} for s in (400, 404, 413, 415, 422, 503)}


def _vendors(request: Request, settings: Settings):
    """Vendor clients for the shop's copy, made once per app."""
    vendors = getattr(request.app.state, "vendors", None)
    if vendors is None:
        from lead_orchestrator.services.shop_clients import vendors_from_settings

        vendors = request.app.state.vendors = vendors_from_settings(settings)
    return vendors


def _lead_of(mail: InboundEmail, settings: Settings) -> tuple[int, int]:
    domain = settings.inbound_parse_domain
    ours = [address for address in mail.recipients if is_reply_address(domain, address)]
    if not ours:
        raise ApiError(404, "no_reply_address", f"no recipient is a reply address at {domain}")
    for address in ours:
        found = read_reply_address(settings.secret_key(), domain, address)
        if found:
            return found
    raise ApiError(404, "unknown_reply_address", "the reply address was not issued here (bad signature)")


@router.post(PATH, responses=_ERRORS)
async def receive_inbound_email(request: Request, db: Database = Depends(get_db),
                                settings: Settings = Depends(get_settings)):
    """An email to a lead's reply address, as SendGrid Inbound Parse posts it."""
    if not settings.inbound_parse_domain:
        raise ApiError(404, "inbound_parse_not_configured",
                       "INBOUND_PARSE_DOMAIN is not set: this deployment does not receive email replies")
    parts = await read_multipart(request, field_limits={"email": settings.inbound_parse_max_bytes},
                                 default_limit=FIELD_LIMIT)
    try:
        mail = read_parse_post(parts.fields, parts.files)
    except InboundEmailError as exc:
        status = 422 if exc.code == "no_sender" else 400
        metrics.WEBHOOKS.labels(SOURCE, "invalid").inc()
        raise ApiError(status, exc.code, exc.message) from None
    try:
        tenant_id, lead_id = _lead_of(mail, settings)
    except ApiError:
        metrics.WEBHOOKS.labels(SOURCE, "unknown_address").inc()
        raise
    now = dt.datetime.now(dt.timezone.utc)

    def apply():
        with db.tenant_tx(tenant_id) as conn:
            shop = load_shop(conn, tenant_id, db.box)
            if shop is None or not shop.active:
                return None, None
            return shop, receive_email_reply(conn, shop, lead_id, mail, at=now)

    try:
        shop, outcome = await run_in_threadpool(apply)
    except DATABASE_ERRORS:
        metrics.WEBHOOKS.labels(SOURCE, "unavailable").inc()
        raise database_unavailable() from None
    if outcome is None:
        metrics.WEBHOOKS.labels(SOURCE, "unknown_lead").inc()
        raise ApiError(404, "unknown_lead", "the reply address names no active shop's lead")

    forward = outcome.forward_status
    if forward == "pending":  # a new reply, or one whose copy was refused for now before
        try:
            forward = await run_in_threadpool(forward_reply, db, shop, outcome.reply_id, _vendors(request, settings),
                                              now=now)
        except DATABASE_ERRORS:
            forward = "pending"  # the reservation or its record did not commit: SendGrid's retry tries again
    metrics.WEBHOOKS.labels(SOURCE, outcome.kind if outcome.status == "recorded" else "duplicate").inc()
    if forward == "pending":
        raise ApiError(503, "forward_pending", "the reply is recorded; the shop's copy could not be sent yet, "
                                               "post again to retry it", headers={"Retry-After": "300"})
    return {"status": outcome.status, "kind": outcome.kind, "lead": outcome.lead_id,
            "auto_reason": outcome.auto_reason, "leads_stopped": list(outcome.leads_stopped),
            "touches_cancelled": outcome.touches_cancelled, "forward": forward}
