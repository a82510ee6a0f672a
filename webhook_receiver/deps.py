"""Dependencies: the settings, the database, the shop named in the path, and a body
read with a size cap."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg
from fastapi import Path, Request
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool

from lead_orchestrator.store.db import Database
from lead_orchestrator.settings import Settings
from lead_orchestrator.store.shops import Shop, load_shop, tenant_id_for_slug, tenant_id_for_tekmetric_token
from webhook_receiver.errors import ApiError

SHOP_CACHE_SECONDS = 30.0
# Unknown slugs are cached too (a burst of deliveries for a deleted shop costs one
# lookup), so the cache is bounded: random slugs cannot grow it without limit.
SHOP_CACHE_MAX_ENTRIES = 10_000
# The tenants.slug CHECK constraint: anything else names no shop and needs no lookup.
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
# What a Tekmetric webhook URL token can look like (ours are 43 URL-safe characters):
# anything else names no shop and needs no lookup.
TEKMETRIC_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout)


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a
# thread pool, a hop that costs more than the work they do.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


def database_unavailable() -> ApiError:
    # ShopMonkey retries 503 (never 500): the event is not lost, only delayed.
    return ApiError(503, "database_unavailable", "the event could not be stored; try again",
                    headers={"Retry-After": "5"})


@dataclass
class ShopCache:
    """Shops by slug for a few seconds, so a burst of webhooks costs one lookup."""

    entries: dict[str, tuple[float, Shop | None]]

    def cached(self, slug: str) -> tuple[bool, Shop | None]:
        hit = self.entries.get(slug)
        if hit and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def get(self, db: Database, slug: str) -> Shop | None:
        now = time.monotonic()
        shop = _load(db, tenant_id_for_slug, slug) if SLUG.fullmatch(slug) else None
        if len(self.entries) >= SHOP_CACHE_MAX_ENTRIES:
            self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            if len(self.entries) >= SHOP_CACHE_MAX_ENTRIES:
                self.entries.clear()
        self.entries[slug] = (now + SHOP_CACHE_SECONDS, shop)
        return shop


def _load(db: Database, find_tenant_id, key: str) -> Shop | None:
    with db.system_tx() as conn:
        tenant_id = find_tenant_id(conn, key)
    if tenant_id is None:
        return None
    with db.tenant_tx(tenant_id) as conn:
        return load_shop(conn, tenant_id, db.box)


def shop_by_tekmetric_token(db: Database, token: str) -> Shop | None:
    return _load(db, tenant_id_for_tekmetric_token, token) if TEKMETRIC_TOKEN.fullmatch(token) else None


async def current_shop(request: Request, tenant: str = Path(min_length=1, max_length=64)) -> Shop:
    """Dependency form of shop_for."""
    return await shop_for(request, tenant)


async def shop_for(request: Request, tenant: str) -> Shop:
    """The active shop named `tenant` (404 if none), from a short-lived cache."""
    hit, shop = request.app.state.shops.cached(tenant)
    if not hit:
        shop = await _fresh_shop(request, request.app.state.shops.get, tenant)
    if shop is None:
        raise ApiError(404, "unknown_shop", f"no active shop named {tenant!r}")
    return shop


async def shop_for_tekmetric_token(request: Request, token: str) -> Shop | None:
    """The active Tekmetric shop whose webhook URL token this is (None if none). Not
    cached: a rotated token, or a deactivated shop's, is refused from the next request on
    (Tekmetric sends one webhook per change, so the two small queries cost nothing)."""
    return await _fresh_shop(request, shop_by_tekmetric_token, token)


async def _fresh_shop(request: Request, load, argument: str) -> Shop | None:
    availability = request.app.state.db.availability
    if availability is not None and not availability.up:
        raise database_unavailable()  # at once, without the hop to a worker thread
    try:
        return await run_in_threadpool(load, request.app.state.db, argument)
    except DATABASE_ERRORS:
        raise database_unavailable() from None


async def read_body(request: Request) -> bytes:
    """Dependency form of read_limited_body."""
    return await read_limited_body(request)


async def read_limited_body(request: Request, limit: int | None = None) -> bytes:
    """The body, refused with 413 as soon as it is larger than `limit` (default: the
    configured webhook limit)."""
    limit = limit or request.app.state.settings.max_webhook_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_content_type(request: Request, expected: str) -> None:
    given = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if given != expected:
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be {expected}")
