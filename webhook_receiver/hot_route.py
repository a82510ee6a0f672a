"""The receiver's ASGI entry: guards first, then the hot route, then FastAPI.

POST /webhooks/shopmonkey/{tenant} is nearly all of the receiver's traffic. FastAPI
and Starlette wrap every request in eight layers (server-error middleware, telemetry,
app body limit, exception middleware, exit stack, router and included-router matching)
that this route does not need: profiled under wrk they were a quarter of the CPU per
webhook (py-spy; see BENCHMARKS.md). `ReceiverApp` serves that one route directly, with
the same guards, the same handler and the same error bodies; everything else, including
the lifespan, goes through FastAPI as usual. The route stays documented in
/openapi.json by its FastAPI twin in routers/shopmonkey.py.
"""
from __future__ import annotations

import re
from functools import partial

from fastapi import FastAPI
from starlette.requests import Request

from webhook_receiver.errors import ApiError, error_response, unexpected_error_response
from webhook_receiver.guards import BodySizeLimit, ShopRateLimit, database_lease
from webhook_receiver.shop_budget import ShopBudgets

# The same paths Starlette's "/webhooks/shopmonkey/{tenant}" would match.
SHOPMONKEY_WEBHOOK = re.compile(r"/webhooks/shopmonkey/([^/]+)")


class HotRoute:
    """Serves the ShopMonkey webhook route itself; passes every other request on."""

    def __init__(self, app, owner: FastAPI, handler):
        self.app, self.owner, self.handler = app, owner, handler

    async def __call__(self, scope, receive, send) -> None:
        match = (SHOPMONKEY_WEBHOOK.fullmatch(scope["path"])
                 if scope["type"] == "http" and scope["method"] == "POST" else None)
        if match is None:
            return await self.app(scope, receive, send)
        scope["app"] = self.owner  # what request.app reads (Starlette sets it on its own path)
        scope["path_params"] = {"tenant": match.group(1)}
        request = Request(scope, receive)
        try:
            response = await self.handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception as exc:  # noqa: BLE001 - the one 500 body, as on every other route
            response = unexpected_error_response(request, exc)
        await response(scope, receive, send)


class ReceiverApp(FastAPI):
    """A FastAPI app whose outermost layers are the guards and the hot route."""

    def __init__(self, *, hot_handler, rate_limit: str, max_body_bytes: int,
                 body_limits: dict[str, int] | None = None, **fastapi_options):
        super().__init__(**fastapi_options)
        framework = partial(FastAPI.__call__, self)
        # The lifespan opens state.db and closes the budgets (their leases in flight).
        self.rate_budgets = ShopBudgets(rate_limit, database_lease(lambda: self.state.db))
        self._entry = ShopRateLimit(BodySizeLimit(HotRoute(framework, self, hot_handler), max_bytes=max_body_bytes,
                                                  path_limits=body_limits), self.rate_budgets)

    async def __call__(self, scope, receive, send) -> None:
        await self._entry(scope, receive, send)
