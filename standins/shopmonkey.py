"""ShopMonkey API v3 stand-in: the read endpoints the lead flow uses, the quirks
integrators reported, signed webhooks, and `/_standin/...` control endpoints.

Guesses where ShopMonkey documents nothing: error codes (UNAUTHORIZED, NOT_FOUND,
TOO_MANY_REQUESTS, SERVICE_UNAVAILABLE, ...), a 400 INVALID_QUERY when `where`/`orderby`
is not JSON at all, and soft-deleted orders staying readable with `deleted: true`.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from standins.faults import add_bookkeeping_routes
from standins.outbox import add_outbox_routes
from standins.shopmonkey_query import matches, sort_rows
from standins.shopmonkey_state import Shop, ShopMonkeyError, ShopMonkeyState

PAGE_MAX = 100
INJECTED_CODES = {502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT"}


def _bearer(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


def _gate(state: ShopMonkeyState):
    async def gate(request: Request) -> Shop:
        key = _bearer(request)
        state.count_request(key, request.url.path)
        injected = state.take_injected(key)
        if injected is not None:
            if injected.hang_seconds:
                await asyncio.sleep(injected.hang_seconds)
            if injected.status is not None:
                code = INJECTED_CODES.get(injected.status, "ERROR")
                raise ShopMonkeyError(injected.status, code, f"Injected failure ({injected.status})")
        return state.authorize(key)

    return gate


def _json_param(request: Request, name: str) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ShopMonkeyError(400, "INVALID_QUERY", f"{name} must be JSON") from None


def _int_param(request: Request, name: str, default: int) -> int:
    try:
        return int(request.query_params.get(name, default))
    except ValueError:
        return default


def _one(data: dict | None, what: str) -> dict:
    if data is None:
        raise ShopMonkeyError(404, "NOT_FOUND", f"{what} not found")
    return {"success": True, "data": data}


def _api_routes(state: ShopMonkeyState) -> APIRouter:
    r = APIRouter(prefix="/v3", tags=["ShopMonkey v3"])
    gate = Depends(_gate(state))

    @r.get("/order")
    async def list_orders(request: Request, shop: Shop = gate) -> dict:
        where, orderby = _json_param(request, "where"), _json_param(request, "orderby")
        limit = _int_param(request, "limit", PAGE_MAX)
        limit = PAGE_MAX if limit <= 0 else min(limit, PAGE_MAX)  # silently capped
        skip = max(0, _int_param(request, "skip", 0))  # offset/page are not read at all
        state.list_requested(shop.api_key)  # an order may move between two pages (tests' hook)
        rows = sort_rows([o for o in state.rows(shop, "order") if matches(o, where)], orderby)
        page = rows[skip: skip + limit]
        return {"success": True, "data": page, "meta": {"total": len(rows), "hasMore": skip + len(page) < len(rows)}}

    @r.get("/order/{order_id}")
    async def get_order(order_id: str, shop: Shop = gate) -> dict:
        return _one(state.row(shop, "order", order_id), "Order")

    @r.get("/customer/{customer_id}")
    async def get_customer(customer_id: str, shop: Shop = gate) -> dict:
        return _one(state.row(shop, "customer", customer_id), "Customer")

    @r.get("/vehicle/{vehicle_id}")
    async def get_vehicle(vehicle_id: str, shop: Shop = gate) -> dict:
        return _one(state.row(shop, "vehicle", vehicle_id), "Vehicle")

    @r.get("/workflow_status")
    async def workflow_statuses(shop: Shop = gate) -> dict:
        rows = state.rows(shop, "workflow_status")
        return {"success": True, "data": rows, "meta": {"total": len(rows), "hasMore": False}}

    return r


class ShopIn(BaseModel):
    api_key: str
    webhook_url: str | None = None
    webhook_secret: str | None = None


class OrderIn(BaseModel):
    api_key: str
    order: dict | None = None
    customer: dict | None = None
    vehicle: dict | None = None
    with_customer: bool = True
    with_vehicle: bool = True
    emit_webhook: bool = True
    wait_webhook: bool = False


class PatchIn(BaseModel):
    fields: dict
    emit_webhook: bool = True
    wait_webhook: bool = False


class FailuresIn(BaseModel):
    count: int = Field(1, ge=0)
    status: int | None = 503
    hang_seconds: float = 0.0
    api_key: str | None = None


class RateLimitIn(BaseModel):
    requests: int | None
    window_seconds: float = 1.0
    api_key: str | None = None  # this key only


class PageEditIn(BaseModel):
    api_key: str
    order_id: str
    fields: dict
    after_pages: int = Field(1, ge=1)
    emit_webhook: bool = False


class WebhookIn(BaseModel):
    operation: str = "INSERT"
    diff: list[str] | None = None
    wait: bool = True


def _with_delivery(result: dict) -> dict:
    d = result.get("delivery")
    return {**result, "delivery": d.as_dict() if d is not None else None}


def _control_routes(state: ShopMonkeyState) -> APIRouter:
    # Plain defs: FastAPI runs them on worker threads, so wait_webhook may block.
    r = APIRouter(prefix="/_standin", tags=["stand-in control"])

    def known(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @r.post("/shops")
    def add_shop(s: ShopIn) -> dict:
        shop = known(state.add_shop, s.api_key, s.webhook_url, s.webhook_secret)
        return {"api_key": shop.api_key, "webhook_url": shop.webhook_url, "webhook_secret": shop.webhook_secret,
                "company_id": shop.company_id, "location_id": shop.location_id}

    @r.post("/shops/{api_key}/revoke")
    def revoke(api_key: str) -> dict:
        known(state.revoke_key, api_key)
        return {"revoked": api_key}

    @r.post("/shops/{api_key}/restore")
    def restore(api_key: str) -> dict:
        known(state.restore_key, api_key)
        return {"restored": api_key}

    @r.post("/orders")
    def create_order(o: OrderIn) -> dict:
        return _with_delivery(known(state.create_order, o.api_key, order=o.order, customer=o.customer,
                                    vehicle=o.vehicle, with_customer=o.with_customer, with_vehicle=o.with_vehicle,
                                    emit_webhook=o.emit_webhook, wait_webhook=o.wait_webhook))

    @r.patch("/orders/{order_id}")
    def update_order(order_id: str, p: PatchIn) -> dict:
        return _with_delivery(known(state.update_order, order_id, p.fields, emit_webhook=p.emit_webhook,
                                    wait_webhook=p.wait_webhook))

    @r.delete("/orders/{order_id}")
    def delete_order(order_id: str, emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        return _with_delivery(known(state.delete_order, order_id, emit_webhook=emit_webhook, wait_webhook=wait_webhook))

    @r.post("/orders/{order_id}/webhook")
    def send_webhook(order_id: str, w: WebhookIn) -> dict:
        return known(state.send_webhook, order_id, w.operation, w.diff, wait=w.wait).as_dict()

    @r.post("/failures")
    def failures(f: FailuresIn) -> dict:
        state.inject_failures(f.count, f.status, hang_seconds=f.hang_seconds, api_key=f.api_key)
        return f.model_dump()

    @r.post("/rate-limit")
    def rate_limit(rl: RateLimitIn) -> dict:
        state.set_rate_limit(rl.requests, rl.window_seconds, api_key=rl.api_key)
        return rl.model_dump()

    @r.post("/page-edits")
    def page_edit(e: PageEditIn) -> dict:
        known(state.edit_between_pages, e.api_key, e.order_id, e.fields, after_pages=e.after_pages,
              emit_webhook=e.emit_webhook)
        return e.model_dump()

    @r.get("/page-edits")
    def page_edits() -> list[dict]:
        return [{"api_key": e.api_key, "order_id": e.order_id, "after_pages": e.after_pages,
                 "fired": e.fired_at is not None} for e in state.page_edits]

    add_bookkeeping_routes(r, state)  # GET/DELETE /requests, GET /deliveries, POST /reset

    return r


def create_app(state: ShopMonkeyState) -> FastAPI:
    app = FastAPI(title="ShopMonkey stand-in", description=__doc__)

    @app.exception_handler(ShopMonkeyError)
    async def shopmonkey_error(_: Request, exc: ShopMonkeyError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    app.include_router(_api_routes(state))
    app.include_router(_control_routes(state))
    add_outbox_routes(
        app, "ShopMonkey stand-in: webhook deliveries", {"webhook_deliveries": state.deliveries},
        {"webhook_deliveries": ["request_id", "operation", "order_id", "updatedDate", "url", "attempts", "final_status", "error"]},
    )
    return app
