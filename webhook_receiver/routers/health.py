"""Liveness, readiness (the database answers; degraded when shops cannot reach their CRM)
and Prometheus metrics."""
from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.store.db import Database
from webhook_receiver.deps import DATABASE_ERRORS, get_db
from webhook_receiver.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, db: Database = Depends(get_db)):
    """Ready when the database answers. `degraded` (still 200: webhooks are stored and
    answered as usual, so a load balancer must keep sending them) when shops cannot reach
    their CRM: their estimates wait (parked or retried) until they can. Which shops is
    said only to those who may read /metrics; others get the counts."""
    def check() -> list[dict]:
        with db.system_tx() as conn:
            return conn.execute("SELECT shop, health, last_success_at, consecutive_errors "
                                "FROM crm_health_problems()").fetchall()

    try:
        problems = await run_in_threadpool(check)
    except DATABASE_ERRORS:
        return error_response(503, "database_unavailable", "the database does not answer")
    if not problems:
        return {"status": "ready"}
    counts: dict[str, int] = {}
    for p in problems:
        counts[p["health"]] = counts.get(p["health"], 0) + 1
    body = {"status": "degraded", "crm_unreachable": counts}
    if _private_access_refused(request) is None:
        body["shops"] = [{"shop": p["shop"], "health": p["health"],
                          "last_success_at": p["last_success_at"] and p["last_success_at"].isoformat(),
                          "consecutive_errors": p["consecutive_errors"]} for p in problems]
    return body


LOOPBACK = {"127.0.0.1", "::1"}


def _private_access_refused(request: Request) -> Response | None:
    """None when the client may read operator details, else the refusal. With
    METRICS_TOKEN set, only `Authorization: Bearer <token>` gets in; without it, only
    loopback clients (behind a proxy on the same host that sets X-Forwarded-For, uvicorn
    reports the real client, which is then refused)."""
    token = request.app.state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(401, "unauthorized", "GET /metrics needs its bearer token",
                                  headers={"WWW-Authenticate": "Bearer"})
    elif request.client is None or request.client.host not in LOOPBACK:
        return error_response(403, "forbidden", "GET /metrics answers only on the loopback interface")
    return None


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Not for the public (see _private_access_refused)."""
    refused = _private_access_refused(request)
    if refused is not None:
        return refused
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
