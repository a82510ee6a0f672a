"""Session fixtures: a real (embedded) PostgreSQL with the schema applied, the webhook
receiver over real HTTP, and shops to test with."""
from __future__ import annotations

import itertools
import os
import uuid

import psycopg
import pytest

from lead_orchestrator.db import Database
from lead_orchestrator.embedded_pg import EmbeddedPostgres
from lead_orchestrator.migrations import apply_migrations
from lead_orchestrator.settings import Settings
from lead_orchestrator.shops import ShopChanges, create_shop
from tests.support import ThreadedServer

TENANT_TABLES = ("inbox_events", "leads", "contacts", "touches", "lead_events", "poll_state", "tenants")


@pytest.fixture(scope="session")
def pg(tmp_path_factory):
    """The embedded cluster for the whole session (or DATABASE_URL's server, if set)."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield None, external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg")).start()
    yield server, server.url()
    server.stop()


@pytest.fixture(scope="session")
def database_url(pg) -> str:
    url = pg[1]
    apply_migrations(url)
    return url


@pytest.fixture(scope="session")
def db(database_url):
    database = Database(database_url, max_size=8, name="tests").open()
    yield database
    database.close()


@pytest.fixture
def admin(database_url):
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


_counter = itertools.count(1)


@pytest.fixture
def make_shop(database_url):
    """Creates a shop with a unique slug; keyword arguments override ShopChanges fields."""

    def make(**overrides):
        slug = overrides.pop("slug", None) or f"shop-{next(_counter)}-{uuid.uuid4().hex[:6]}"
        name = overrides.pop("name", f"Shop {slug}")
        changes = ShopChanges(**{
            "time_zone": "America/Chicago",
            "webhook_secret": "whsec_" + "c2VjcmV0LWZvci0" + uuid.uuid4().hex[:8],
            "shopmonkey_api_key": "sm-key-" + uuid.uuid4().hex,
            "twilio_account_sid": "AC" + uuid.uuid4().hex,
            "twilio_auth_token": uuid.uuid4().hex,
            "twilio_sender": "+15125550100",
            "sendgrid_api_key": "SG." + uuid.uuid4().hex,
            "sendgrid_sender": "service@example-shop.com",
            "postal_address": "100 Main St, Austin, TX 78701",
            "shop_phone": "+15125550199",
            **overrides,
        })
        with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            return create_shop(conn, slug, name, changes)

    return make


def table_counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) AS n FROM {t}").fetchone()["n"] for t in TENANT_TABLES}


@pytest.fixture(scope="session")
def settings(database_url, tmp_path_factory) -> Settings:
    return Settings(DATABASE_URL=database_url, LEAD_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    APP_SECRET_KEY="test-secret-key")


@pytest.fixture(scope="session")
def receiver(settings, db):
    from webhook_receiver.main import create_app

    with ThreadedServer(create_app(settings, db)) as server:
        yield server
