"""Tekmetric API v1 stand-in: the OAuth token endpoint, repair orders, customers and
vehicles as the contract describes them, webhooks that can be dropped, delayed and
duplicated, and `/_standin/...` control endpoints.

Answers as the contract gives them: a bad bearer token → 401 with an empty body; a
shop outside the token's scope → 403 `{"type": "ERROR", "message": "Access Denied",
"data": null, "details": {}}`; OAuth errors `{"error", "error_description"}`; above the
partner app's budget (600 requests a minute unless set otherwise) → 429, empty body.
"""
from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from standins.faults import add_bookkeeping_routes, add_fault_routes
from standins.outbox import add_outbox_routes
from standins.tekmetric_query import bad_request, order_query
from standins.tekmetric_state import App, TekmetricError, TekmetricState, error_body
from standins.tekmetric_webhooks import redact_token

FORM = "application/x-www-form-urlencoded"


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _basic(request: Request) -> tuple[str | None, str | None]:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)


def _injected(state: TekmetricState) -> None:
    status = state.take_injected_status()
    if status == 429:
        raise TekmetricError(429)
    if status is not None:
        raise TekmetricError(status, error_body(f"Injected failure ({status})"))


def _gate(state: TekmetricState):
    async def gate(request: Request) -> App:
        app = None
        try:
            _injected(state)
            app = state.authorize(_bearer(request))
            return app
        finally:
            state.count_request(request.url.path, app.client_id if app else None, request.query_params.get("shop"))

    return gate


def _id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"not an id: {raw!r}") from None


def _api_routes(state: TekmetricState) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["Tekmetric v1"])
    gate = Depends(_gate(state))

    @r.post("/oauth/token")
    async def token(request: Request) -> dict:
        client_id, secret = _basic(request)
        try:
            _injected(state)
            if not request.headers.get("content-type", "").lower().startswith(FORM):
                raise TekmetricError(400, {"error": "invalid_request",
                                           "error_description": f"Content-Type must be {FORM}"})
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            return state.issue_token(client_id, secret, (form.get("grant_type") or [None])[0])
        finally:
            state.count_request(request.url.path, client_id if client_id in state.apps else None, None)

    @r.get("/repair-orders")
    async def list_repair_orders(request: Request, app: App = gate) -> dict:
        q = order_query(request.query_params)
        return state.list_orders(app, q.shop_id, q.keep, q.sort, q.descending, q.page, q.size)

    @r.get("/repair-orders/{order_id}")
    async def get_repair_order(order_id: str, app: App = gate) -> dict:
        return state.record(app, "order", _id(order_id))

    @r.get("/customers/{customer_id}")
    async def get_customer(customer_id: str, app: App = gate) -> dict:
        return state.record(app, "customer", _id(customer_id))

    @r.get("/vehicles/{vehicle_id}")
    async def get_vehicle(vehicle_id: str, app: App = gate) -> dict:
        return state.record(app, "vehicle", _id(vehicle_id))

    @r.delete("/shops/{shop_id}/scope")
    async def drop_shop(shop_id: str, app: App = gate) -> dict:
        """The partner app gives up a shop: 403 for it from then on."""
        sid = _id(shop_id)
        state.check_scope(app, sid)
        state.disconnect_shop(sid, app.client_id)
        return {"type": "SUCCESS", "message": "", "data": None, "details": {}}

    return r


class AppIn(BaseModel):
    client_id: str
    client_secret: str


class RevokeIn(BaseModel):
    refuse_credentials: bool = False


class ShopIn(BaseModel):
    shop_id: int | None = None
    client_id: str | None = None
    name: str | None = None
    webhook_url: str | None = None
    webhook_style: str | None = None
    webhook_shop_id_zero: bool | None = None


class DisconnectIn(BaseModel):
    client_id: str | None = None


class OrderIn(BaseModel):
    shop_id: int
    order: dict | None = None
    customer: dict | None = None
    vehicle: dict | None = None
    jobs: list[dict] | None = None
    with_customer: bool = True
    with_vehicle: bool = True
    emit_webhook: bool = True
    wait_webhook: bool = False


class PatchIn(BaseModel):
    fields: dict
    event: str | None = None
    emit_webhook: bool = True
    wait_webhook: bool = False


class JobsIn(BaseModel):
    authorized: bool | None
    job_ids: list[int] | None = None
    emit_webhook: bool = True
    wait_webhook: bool = False


class WebhookIn(BaseModel):
    event: str | None = None
    wait: bool = True


class FaultsIn(BaseModel):
    drop_next: int | None = Field(None, ge=0)
    duplicate_next: int | None = Field(None, ge=0)
    delay_seconds: float | None = Field(None, ge=0)
    drop_rate: float | None = Field(None, ge=0, le=1)
    duplicate_rate: float | None = Field(None, ge=0, le=1)
    seed: int | None = None


class BudgetIn(BaseModel):
    requests: int | None
    window_seconds: float = Field(60.0, gt=0)


def _sent(result: dict) -> dict:
    return {**result, "deliveries": [d.as_dict() for d in result.get("deliveries", [])]}


def _control_routes(state: TekmetricState) -> APIRouter:
    # Plain defs: FastAPI runs them on worker threads, so wait_webhook may block.
    r = APIRouter(prefix="/_standin", tags=["stand-in control"])

    def known(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @r.post("/apps")
    def add_app(a: AppIn) -> dict:
        app = known(state.add_app, a.client_id, a.client_secret)
        return {"client_id": app.client_id, "shop_ids": sorted(app.shop_ids)}

    @r.post("/apps/{client_id}/revoke")
    def revoke(client_id: str, rv: RevokeIn | None = None) -> dict:
        refuse = bool(rv and rv.refuse_credentials)
        known(state.revoke_token, client_id, refuse_credentials=refuse)
        return {"revoked": client_id, "credentials_refused": refuse}

    @r.post("/shops")
    def add_shop(s: ShopIn) -> dict:
        shop = known(state.add_shop, s.shop_id, client_id=s.client_id, name=s.name, webhook_url=s.webhook_url,
                     webhook_style=s.webhook_style, webhook_shop_id_zero=s.webhook_shop_id_zero)
        return {"shop_id": shop.id, "name": shop.name,
                "webhook_url": redact_token(shop.webhook_url) if shop.webhook_url else None,
                "webhook_style": shop.webhook_style, "webhook_shop_id_zero": shop.webhook_shop_id_zero}

    @r.post("/shops/{shop_id}/disconnect")
    def disconnect(shop_id: int, d: DisconnectIn | None = None) -> dict:
        known(state.disconnect_shop, shop_id, d.client_id if d else None)
        return {"disconnected": shop_id}

    @r.post("/orders")
    def create_order(o: OrderIn) -> dict:
        return _sent(known(state.create_order, o.shop_id, order=o.order, customer=o.customer, vehicle=o.vehicle,
                           jobs=o.jobs, with_customer=o.with_customer, with_vehicle=o.with_vehicle,
                           emit_webhook=o.emit_webhook, wait_webhook=o.wait_webhook))

    @r.patch("/orders/{order_id}")
    def update_order(order_id: int, p: PatchIn) -> dict:
        return _sent(known(state.update_order, order_id, p.fields, event=p.event, emit_webhook=p.emit_webhook,
                           wait_webhook=p.wait_webhook))

    @r.post("/orders/{order_id}/jobs")
    def answer_jobs(order_id: int, j: JobsIn) -> dict:
        return _sent(known(state.answer_jobs, order_id, j.authorized, j.job_ids, emit_webhook=j.emit_webhook,
                           wait_webhook=j.wait_webhook))

    @r.delete("/orders/{order_id}")
    def delete_order(order_id: int, emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        return _sent(known(state.delete_order, order_id, emit_webhook=emit_webhook, wait_webhook=wait_webhook))

    @r.post("/orders/{order_id}/webhook")
    def send_webhook(order_id: int, w: WebhookIn) -> list[dict]:
        return [d.as_dict() for d in known(state.send_webhook, order_id, w.event, wait=w.wait)]

    @r.get("/webhooks")
    def webhook_faults() -> dict:
        return state.webhooks.faults()

    @r.post("/webhooks")
    def set_webhook_faults(f: FaultsIn) -> dict:
        return known(state.webhooks.set_faults, **f.model_dump())

    @r.post("/budget")
    def budget(b: BudgetIn) -> dict | None:
        state.set_budget(b.requests, b.window_seconds)
        return state.budget()

    add_fault_routes(r, state)  # POST /throttle {count} (429s), /fail {count, status}

    add_bookkeeping_routes(r, state)  # GET/DELETE /requests, GET /deliveries, POST /reset

    return r


def create_app(state: TekmetricState) -> FastAPI:
    app = FastAPI(title="Tekmetric stand-in", description=__doc__)

    @app.exception_handler(TekmetricError)
    async def tekmetric_error(_: Request, exc: TekmetricError) -> Response:
        if exc.body is None:
            return Response(status_code=exc.status)
        return JSONResponse(exc.body, status_code=exc.status)

    app.include_router(_api_routes(state))
    app.include_router(_control_routes(state))
    add_outbox_routes(
        app, "Tekmetric stand-in: webhook deliveries", {"webhook_deliveries": state.deliveries},
        {"webhook_deliveries": ["id", "event", "order_id", "updatedDate", "url", "copy", "delay", "dropped",
                                "status", "error"]},
    )
    return app
