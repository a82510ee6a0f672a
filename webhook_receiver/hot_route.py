"""The receiver's ASGI entry: guards first, then the hot routes, then FastAPI.

The CRM webhook routes (POST /webhooks/shopmonkey/{tenant}, nearly all of the receiver's
traffic, and POST /webhooks/tekmetric/{token}) do not need the eight layers FastAPI and
Starlette wrap every request in (server-error middleware, telemetry, app body limit,
exception middleware, exit stack, router and included-router matching): profiled under
wrk they were a quarter of the CPU per webhook (py-spy; see BENCHMARKS.md), and measured
in-process they cost more than the ShopMonkey route's own work (168 against 63 µs of CPU
per webhook). `ReceiverApp` serves these routes directly, with the same guards, the same
handlers and the same error bodies; everything else, including the lifespan, goes through
FastAPI as usual. The routes stay documented in /openapi.json by their FastAPI twins in
routers/.
"""
from __future__ import annotations

import re
from functools import partial

from fastapi import FastAPI
from starlette.requests import Request

from webhook_receiver.errors import ApiError, error_response, unexpected_error_response
from webhook_receiver.guards import BodySizeLimit, ShopRateLimit, database_lease
from webhook_receiver.shop_budget import ShopBudgets

# By CRM: the paths its FastAPI twin would match and serve (a Tekmetric token longer than
# the twin's 256 characters is left to FastAPI, whose answer is its 422), and the name of
# the path parameter.
HOT_PATHS = {
    "shopmonkey": (re.compile(r"/webhooks/shopmonkey/([^/]+)"), "tenant"),
    "tekmetric": (re.compile(r"/webhooks/tekmetric/([^/]{1,256})"), "token"),
}


class HotRoute:
    """Serves the webhook routes of `handlers` (by CRM, see HOT_PATHS) itself; passes every
    other request on."""

    def __init__(self, app, owner: FastAPI, handlers: dict):
        self.app, self.owner = app, owner
        self.routes = [(*HOT_PATHS[crm], handler) for crm, handler in handlers.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for pattern, parameter, handler in self.routes:
                match = pattern.fullmatch(path)
                if match is not None:
                    return await self._serve(scope, receive, send, handler, {parameter: match.group(1)})
        return await self.app(scope, receive, send)

    async def _serve(self, scope, receive, send, handler, path_params: dict) -> None:
        scope["app"] = self.owner  # what request.app reads (Starlette sets it on its own path)
        scope["path_params"] = path_params
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception as exc:  # noqa: BLE001 - the one 500 body, as on every other route
            response = unexpected_error_response(request, exc)
        await response(scope, receive, send)


class ReceiverApp(FastAPI):
    """A FastAPI app whose outermost layers are the guards and the hot route."""

    def __init__(self, *, hot_handlers: dict, rate_limit: str, max_body_bytes: int,
                 body_limits: dict[str, int] | None = None, **fastapi_options):
        super().__init__(**fastapi_options)
        framework = partial(FastAPI.__call__, self)
        # The lifespan opens state.db and closes the budgets (their leases in flight).
        self.rate_budgets = ShopBudgets(rate_limit, database_lease(lambda: self.state.db))
        self._entry = ShopRateLimit(BodySizeLimit(HotRoute(framework, self, hot_handlers), max_bytes=max_body_bytes,
                                                  path_limits=body_limits), self.rate_budgets)

    async def __call__(self, scope, receive, send) -> None:
        await self._entry(scope, receive, send)
