"""The two baselines the receiver is measured against, served by the same uvicorn:
`bare` answers 200 and does nothing; `naive` verifies the signature and does one
INSERT (its own transaction) per request, as a first implementation would."""
from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response
from psycopg_pool import ConnectionPool
from standardwebhooks import Webhook

bare = FastAPI()


@bare.post("/webhooks/shopmonkey/{tenant}")
async def bare_endpoint(tenant: str) -> dict:
    return {"status": "ok"}


naive = FastAPI()
_pool: ConnectionPool | None = None


@naive.on_event("startup")
def _open() -> None:
    global _pool
    _pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=4, max_size=16, open=True)
    with _pool.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS naive_events (id bigserial PRIMARY KEY, tenant text, body jsonb)")


@naive.post("/webhooks/shopmonkey/{tenant}")
def naive_endpoint(tenant: str, request: Request) -> Response:
    import anyio.from_thread

    body = anyio.from_thread.run(request.body)
    try:
        Webhook(os.environ["NAIVE_SECRET"]).verify(body, dict(request.headers))
    except Exception:  # noqa: BLE001
        return Response(status_code=401)
    with _pool.connection() as conn:
        conn.execute("INSERT INTO naive_events (tenant, body) VALUES (%s, %s)", (tenant, body.decode()))
    return Response(status_code=202)
