"""Liveness, readiness (the database answers) and Prometheus metrics."""
from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.db import Database
from webhook_receiver.deps import DATABASE_ERRORS, get_db
from webhook_receiver.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(db: Database = Depends(get_db)):
    def ping() -> None:
        with db.system_tx() as conn:
            conn.execute("SELECT 1")

    try:
        await run_in_threadpool(ping)
    except DATABASE_ERRORS:
        return error_response(503, "database_unavailable", "the database does not answer")
    return {"status": "ready"}


LOOPBACK = {"127.0.0.1", "::1"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Not for the public: with METRICS_TOKEN set, only `Authorization: Bearer <token>`
    gets in; without it, only loopback clients (behind a proxy on the same host that
    sets X-Forwarded-For, uvicorn reports the real client, which is then refused)."""
    token = request.app.state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(401, "unauthorized", "GET /metrics needs its bearer token",
                                  headers={"WWW-Authenticate": "Bearer"})
    elif request.client is None or request.client.host not in LOOPBACK:
        return error_response(403, "forbidden", "GET /metrics answers only on the loopback interface")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
