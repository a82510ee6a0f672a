"""The two baselines the receiver is measured against, served by the same uvicorn:
`bare` answers 200 and does nothing; `naive` verifies the signature and does one
INSERT (its own transaction) per request, as a first implementation would: an async
endpoint on an async connection pool, the way FastAPI's documentation leads one to
write it."""
from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response
from psycopg_pool import AsyncConnectionPool
from standardwebhooks import Webhook

bare = FastAPI()


@bare.post("/webhooks/shopmonkey/{tenant}")
async def bare_endpoint(tenant: str) -> dict:
    return {"status": "ok"}


naive = FastAPI()
_pool: AsyncConnectionPool | None = None


@naive.on_event("startup")
async def _open() -> None:
    global _pool
    _pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=4, max_size=16, open=False)
    await _pool.open()
    async with _pool.connection() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS naive_events (id bigserial PRIMARY KEY, tenant text, body jsonb)")


@naive.post("/webhooks/shopmonkey/{tenant}")
async def naive_endpoint(tenant: str, request: Request) -> Response:
    body = await request.body()
    try:
        Webhook(os.environ["NAIVE_SECRET"]).verify(body, dict(request.headers))
    except Exception:  # noqa: BLE001
        return Response(status_code=401)
    async with _pool.connection() as conn:  # commits when the block ends: one transaction per request
        await conn.execute("INSERT INTO naive_events (tenant, body) VALUES (%s, %s)", (tenant, body.decode()))
    return Response(status_code=202)
