"""Liveness, readiness (the database answers) and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response
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


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
