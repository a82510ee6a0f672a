"""Email unsubscribe: the link in every email's footer and its `List-Unsubscribe` header.

`POST /unsubscribe/{token}` is RFC 8058's one-click endpoint: mailbox providers post
`List-Unsubscribe=One-Click` to it, and the opt-out takes effect at once. `GET` shows a
page with a button that posts the same form: a GET never unsubscribes, because mail
scanners follow links. The token is signed (itsdangerous) and names the shop and the
address, so nobody can unsubscribe an address they did not receive mail at.
"""
from __future__ import annotations

import datetime as dt
import html

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.store.db import Database
from lead_orchestrator.settings import Settings
from lead_orchestrator.store.shops import Shop, load_shop
from lead_orchestrator.services.stop_conditions import unsubscribe_email
from lead_orchestrator.services.shop_clients import read_unsubscribe_token
from webhook_receiver import metrics
from webhook_receiver.deps import DATABASE_ERRORS, database_unavailable, get_db, get_settings, read_limited_body
from webhook_receiver.errors import ApiError
from webhook_receiver.models import ErrorBody

router = APIRouter(prefix="/unsubscribe", tags=["unsubscribe"])

MAX_BODY_BYTES = 4096
_ERRORS = {s: {"model": ErrorBody} for s in (404, 413, 503)}
# Pages answer HTML; errors keep the JSON error body of every other route.
_PAGE = {200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "An HTML page"}}


def _page(title: str, text: str, form: bool = False) -> HTMLResponse:
    button = ("<form method='post'><input type='hidden' name='List-Unsubscribe' value='One-Click'>"
              "<button type='submit'>Unsubscribe</button></form>") if form else ""
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"</head><body style='font:16px sans-serif;margin:2em'><h1>{html.escape(title)}</h1>"
                        f"<p>{html.escape(text)}</p>{button}</body></html>")


async def _resolve(token: str, settings: Settings, db: Database) -> tuple[Shop, str]:
    found = read_unsubscribe_token(settings.secret_key(), token)
    if found is None:
        raise ApiError(404, "unknown_link", "this unsubscribe link is not valid")
    tenant_id, email = found

    def shop() -> Shop | None:
        with db.tenant_tx(tenant_id) as conn:
            return load_shop(conn, tenant_id, db.box)

    try:
        found_shop = await run_in_threadpool(shop)
    except DATABASE_ERRORS:
        raise database_unavailable() from None
    if found_shop is None:
        raise ApiError(404, "unknown_link", "this unsubscribe link is not valid")
    return found_shop, email


@router.get("/{token}", responses={**_PAGE, **_ERRORS})
async def unsubscribe_page(token: str, settings: Settings = Depends(get_settings), db: Database = Depends(get_db)):
    shop, email = await _resolve(token, settings, db)
    return _page(f"Unsubscribe from {shop.name}",
                 f"Stop all emails from {shop.name} to {email}?", form=True)


@router.post("/{token}", responses={**_PAGE, **_ERRORS})
async def unsubscribe_one_click(token: str, request: Request, settings: Settings = Depends(get_settings),
                                db: Database = Depends(get_db)):
    # The body (List-Unsubscribe=One-Click) carries nothing we need: the signed token
    # names the address. It is read only to bound its size.
    await read_limited_body(request, MAX_BODY_BYTES)
    shop, email = await _resolve(token, settings, db)
    now = dt.datetime.now(dt.timezone.utc)

    def apply() -> None:
        with db.tenant_tx(shop.id) as conn:
            unsubscribe_email(conn, email, source="list_unsubscribe", at=now)

    try:
        await run_in_threadpool(apply)
    except DATABASE_ERRORS:
        metrics.WEBHOOKS.labels("unsubscribe", "unavailable").inc()
        raise database_unavailable() from None
    metrics.WEBHOOKS.labels("unsubscribe", "accepted").inc()
    return _page("You are unsubscribed", f"{shop.name} will not email {email} again.")
