"""POST /webhooks/tekmetric/{token}: a Tekmetric shop's webhook, checked, read, stored.

Tekmetric signs nothing (partners found no signature header), so the URL registered for
the shop carries an unguessable token (`shops add --crm tekmetric` prints it): the
token names the shop, and only its SHA-256 is stored. A token that names no active
Tekmetric shop, or that the shop's adapter does not accept (compared in constant time),
is 401 and nothing is stored. The body is read by the Tekmetric adapter
(`parse_webhook`) as a `ChangeHint` (400 for what is not Tekmetric's envelope; 200
`ignored` for an event about no repair order of the shop), and stored in the inbox with
the hint's key (crm, order, version): a duplicate or a late delivery of the same change,
or the poll's sighting of it, is stored once (200 `duplicate`). The estimate itself is
fetched again before anything is decided. As on every route, 2xx means committed;
503 when it cannot be stored. The guards (body size, per-shop rate limit) apply: the
rate limit counts per URL, that is per shop.
"""
from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from lead_orchestrator import redaction
from lead_orchestrator.crm.base import InvalidWebhook
from lead_orchestrator.crm.registry import webhook_reader_for
from lead_orchestrator.store.inbox import NewEvent
from webhook_receiver import metrics
from webhook_receiver.deps import read_limited_body, shop_for_tekmetric_token
from webhook_receiver.errors import ApiError
from webhook_receiver.models import ErrorBody, TekmetricAnswer
from webhook_receiver.payloads import PayloadError, parse_json_object
from webhook_receiver.stored_answer import store_and_answer

router = APIRouter(prefix="/webhooks/tekmetric", tags=["tekmetric"])

_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 413, 422, 429, 503)}
_COUNT = {r: metrics.WEBHOOKS.labels("tekmetric", r)
          for r in ("accepted", "duplicate", "ignored", "bad_token", "unavailable")}
# Partners' notes, not Tekmetric's text: documented so that /docs says what is read.
_DOCUMENTED_REQUEST = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "examples": ["Repair Order #1234 created"]},
            "data": {"type": "object", "description": "the repair order (sometimes under `repairOrder`), or a "
                                                      "payment/appointment naming `repairOrderId`"},
        }}}}},
}


def _refused() -> ApiError:
    _COUNT["bad_token"].inc()
    return ApiError(401, "invalid_token", "this URL's token names no Tekmetric shop")


@router.post("", status_code=401, responses={401: {"model": ErrorBody}})
@router.post("/", status_code=401, responses={401: {"model": ErrorBody}}, include_in_schema=False)
async def refuse_tekmetric_webhook_without_token():
    """A Tekmetric webhook URL without its token: always 401, nothing stored."""
    raise _refused()


async def handle_tekmetric_webhook(request: Request) -> Response:
    """The whole route: the shop its token names, the body read by the adapter, the inbox.
    Served ahead of FastAPI's middleware by hot_route.HotRoute, as the ShopMonkey route is."""
    token = request.path_params["token"]
    shop = await shop_for_tekmetric_token(request, token)
    if shop is None:
        raise _refused()
    # The token is the shop's credential: keep it out of every log line from here on
    # (the access log names the path).
    redaction.register(token)
    body = await read_limited_body(request)
    try:
        hint = webhook_reader_for(shop).parse_webhook(body, request.headers, url_token=token)
    except InvalidWebhook as exc:
        if exc.status == 401:
            raise _refused() from None
        raise ApiError(exc.status, "invalid_payload", str(exc)) from None
    if hint is None:
        _COUNT["ignored"].inc()
        return JSONResponse({"status": "ignored", "event_id": None}, status_code=200)
    try:
        text = body.decode("utf-8")
        parse_json_object(text)  # what PostgreSQL's jsonb would refuse is a 4xx, not a 503
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body is not UTF-8") from None
    except PayloadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    event = NewEvent.from_hint(hint, source="webhook", payload_json=text)
    return await store_and_answer(request, shop, event, _COUNT, "Tekmetric")


@router.post("/{token}", status_code=202, response_model=TekmetricAnswer,
             responses={200: {"model": TekmetricAnswer}, **_ERRORS}, openapi_extra=_DOCUMENTED_REQUEST)
async def receive_tekmetric_webhook(request: Request, token: str = Path(min_length=1, max_length=256,
                                                                        description="the shop's webhook URL token")):
    """A Tekmetric shop's webhook: 202 stored, 200 duplicate or ignored, 401 wrong token.
    Documents the route in /openapi.json; requests are served by hot_route.HotRoute (those
    whose token is longer than 256 characters by this route: 422)."""
    return await handle_tekmetric_webhook(request)
