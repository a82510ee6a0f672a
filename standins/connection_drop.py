"""Close a connection instead of answering, to simulate an ambiguous outcome: the vendor
did the work (a message was queued) but the client never learns it.

ASGI has no way to say "drop this connection", so this wrapper reaches the transport of
uvicorn's request cycle (the `send` callable is a bound method of it). Under another
server (or an in-process test client) it raises ConnectionAbortedError out of the app.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import FastAPI

SCOPE_KEY = "standins.drop"


@dataclass
class DropOrder:
    after_seconds: float | None = None  # None: answer normally


def request_drop(scope: dict, after_seconds: float) -> None:
    """Called by a route: once it has done its work, close the connection without answering."""
    order = scope.get(SCOPE_KEY)
    if order is not None:
        order.after_seconds = after_seconds


class DroppableFastAPI(FastAPI):
    """A FastAPI app whose routes may call `request_drop`. The hook sits outside all
    middleware so that it still holds the server's own `send`."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        order = DropOrder()
        scope[SCOPE_KEY] = order
        dropped = False

        async def guarded_send(message) -> None:
            nonlocal dropped
            if dropped:
                return
            if message["type"] == "http.response.start" and order.after_seconds is not None:
                dropped = True
                await asyncio.sleep(order.after_seconds)
                await _abort(send)
                return
            await send(message)

        await super().__call__(scope, receive, guarded_send)


async def _abort(send) -> None:
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("stand-in dropped the connection on purpose")
    transport.abort()
    # Let uvicorn see connection_lost before the app returns, so it does not try to
    # write a 500 "returned without starting response" into the closed socket.
    for _ in range(3):
        await asyncio.sleep(0)
