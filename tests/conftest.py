"""Session fixtures: a real (embedded) PostgreSQL with the schema applied, the webhook
receiver over real HTTP, and shops to test with."""
from __future__ import annotations

import base64
import datetime
from contextlib import contextmanager
import itertools
import os
import uuid

import psycopg
import pytest
from cryptography.fernet import Fernet

from lead_orchestrator.store.db import Database
from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres
from lead_orchestrator.store.migrations import apply_migrations
from lead_orchestrator.settings import Settings
from lead_orchestrator.store.shops import ShopChanges, create_shop
from tests.support import session_box, ThreadedServer

# One encryption key for the whole session, this process and the Dagster processes it
# starts: shop secrets are stored encrypted with it (never a key file in the work tree).
os.environ.setdefault("LEAD_ENCRYPTION_KEY", Fernet.generate_key().decode())
# Touch-point windows start a week before the session (not on its first day, as they would
# by default): tests run the windows of the last hours, also just after midnight UTC.
os.environ.setdefault("TOUCHPOINTS_START_DATE",
                      (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=7)).isoformat())

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
    apply_migrations(url, session_box())
    return url


@pytest.fixture(scope="session")
def db(database_url):
    database = Database(database_url, max_size=8, name="tests", box=session_box()).open()
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
        crm = {} if overrides.get("crm", "shopmonkey") != "shopmonkey" else {
            "webhook_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
            "shopmonkey_api_key": "sm-key-" + uuid.uuid4().hex}
        changes = ShopChanges(**{
            "time_zone": "America/Chicago",
            **crm,
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
            return create_shop(conn, slug, name, changes, session_box())

    return make


@contextmanager
def scratch_database(pg, prefix: str):
    """A migrated database of its own in the session's embedded cluster, dropped after:
    for tests that rewrite every tenant row or count every row change."""
    from lead_orchestrator.store.migrations import apply_migrations

    if pg[0] is None:
        pytest.skip("needs the embedded cluster to create a database (TEST_DATABASE_URL is set)")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
        su.execute(f'CREATE DATABASE "{name}"')
    url = pg[0].url(name)
    apply_migrations(url, session_box())
    try:
        yield url
    finally:
        with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
            su.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def table_counts(conn, tenant_id: int | None = None) -> dict[str, int]:
    """Rows per tenant table; of one shop when `tenant_id` is given. A test of what a
    request changes counts its own shop's rows: the session's daemon and dispatchers may
    still be working for other shops meanwhile (an ingest run of an earlier test's event
    records that shop's CRM health in poll_state)."""
    if tenant_id is None:
        return {t: conn.execute(f"SELECT count(*) AS n FROM {t}").fetchone()["n"] for t in TENANT_TABLES}
    return {t: conn.execute(f"SELECT count(*) AS n FROM {t} WHERE {'id' if t == 'tenants' else 'tenant_id'} = %s",
                            (tenant_id,)).fetchone()["n"] for t in TENANT_TABLES}


@pytest.fixture(scope="session")
def settings(database_url, tmp_path_factory) -> Settings:
    # The receiver's port is chosen here: Twilio signs the public URL it calls, so the
    # receiver must know its own public URL (PUBLIC_BASE_URL) before it starts.
    from tests.support import free_port

    return Settings(DATABASE_URL=database_url, LEAD_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    APP_SECRET_KEY="test-secret-key", LEAD_ENCRYPTION_KEY=os.environ["LEAD_ENCRYPTION_KEY"],
                    PUBLIC_BASE_URL=f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def receiver(settings, db):
    from urllib.parse import urlsplit

    from webhook_receiver.main import create_app

    with ThreadedServer(create_app(settings, db), port=urlsplit(settings.public_base_url).port) as server:
        yield server


# --- stand-ins, vendors and the Dagster daemon --------------------------------------

@pytest.fixture(scope="session")
def standins():
    from standins.servers import StandinServers

    with StandinServers() as servers:
        yield servers


@pytest.fixture(scope="session")
def vendors(standins, receiver, settings):
    from lead_orchestrator.services.shop_clients import Vendors

    return Vendors(shopmonkey_base_url=standins.shopmonkey_url, twilio_base_url=standins.twilio_url,
                   sendgrid_base_url=standins.sendgrid_url, public_base_url=receiver.url,
                   secret_key=settings.secret_key(), tekmetric_base_url=standins.tekmetric_url)


@pytest.fixture
def tekmetric_app(standins, database_url) -> tuple[str, str]:
    """The deployment's Tekmetric partner app (client id, secret): in the stand-in and stored."""
    from tests.tekmetric_support import configure_app

    return configure_app(standins, database_url)


@pytest.fixture
def connected_shop(make_shop, standins, receiver, database_url, request):
    """A shop whose CRM (ShopMonkey, or Tekmetric with crm="tekmetric"), Twilio and SendGrid
    accounts live in the stand-ins, with webhooks pointed at the receiver. Keyword
    arguments go to make_shop."""

    def make(**overrides):
        overrides.setdefault("send_window_start", "00:00")
        overrides.setdefault("send_window_end", "23:59:59")
        overrides.setdefault("settings", {"holiday_country": None})
        overrides.setdefault("sendgrid_event_public_key", standins.sendgrid.public_key())
        if overrides.get("crm") == "tekmetric":
            from tests.tekmetric_support import connect_tekmetric_shop

            request.getfixturevalue("tekmetric_app")
            shop, _ = connect_tekmetric_shop(make_shop, standins, receiver.url, database_url,
                                             **{k: v for k, v in overrides.items() if k != "crm"})
        else:
            shop = make_shop(**overrides)
            standins.shopmonkey.add_shop(shop.shopmonkey_api_key.get_secret_value(),
                                         f"{receiver.url}/webhooks/shopmonkey/{shop.slug}",
                                         shop.webhook_secret.get_secret_value())
        standins.twilio.add_account(shop.twilio_account_sid, shop.twilio_auth_token.get_secret_value())
        standins.sendgrid.add_api_key(shop.sendgrid_api_key.get_secret_value())
        return shop

    return make


def sms_to(standins, number: str) -> list[dict]:
    return [m for m in standins.twilio.messages.items() if m.get("to") == number]


def emails_to(standins, address: str) -> list[dict]:
    return [m for m in standins.sendgrid.sent.items() if address in m.get("to", [])]


@pytest.fixture(scope="session")
def dagster_env(pg, database_url, standins, receiver, settings, tmp_path_factory) -> dict[str, str]:
    """The environment the Dagster processes see, as `lead-orchestrator up` sets it."""
    from pathlib import Path

    from lead_orchestrator.store.db import sqlalchemy_psycopg2_url

    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text((Path(__file__).parent.parent / "dagster.yaml").read_text())
    server = pg[0]
    storage = server.url("dagster") if server else database_url
    return {
        "DATABASE_URL": database_url, "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_psycopg2_url(storage),
        "SHOPMONKEY_BASE_URL": standins.shopmonkey_url, "TWILIO_API_BASE_URL": standins.twilio_url,
        "SENDGRID_API_BASE_URL": standins.sendgrid_url, "PUBLIC_BASE_URL": receiver.url,
        "TEKMETRIC_BASE_URL": standins.tekmetric_url,
        "APP_SECRET_KEY": settings.secret_key(), "LEAD_ENCRYPTION_KEY": os.environ["LEAD_ENCRYPTION_KEY"],
        # The poll touches every shop of the session; only the tests that need it start it.
        "POLL_SENSOR_DEFAULT_STATUS": "stopped",
    }


@pytest.fixture
def dagster_instance(dagster_env, monkeypatch):
    """A real DagsterInstance on the PostgreSQL storage, for execute_in_process tests."""
    from dagster import DagsterInstance

    for key, value in dagster_env.items():
        monkeypatch.setenv(key, value)
    instance = DagsterInstance.get()
    yield instance
    instance.dispose()


@pytest.fixture(scope="session")
def dagster_daemon(dagster_env, tmp_path_factory):
    """The real `dagster-daemon run` process (sensors, schedules, run queue)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    log_path = tmp_path_factory.mktemp("daemon") / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                                cwd=root, env={**os.environ, **dagster_env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # Ready once the sensor daemon has evaluated the inbox sensor (code location loaded).
    from tests.support import wait_for

    wait_for(lambda: proc.poll() is not None or "inbox_sensor" in log_path.read_text(errors="replace"),
             timeout=120, interval=0.5, message="the Dagster daemon's first inbox_sensor tick")
    assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
    yield proc, log_path
    from lead_orchestrator.runtime.stack import stop_process_groups

    stop_process_groups([proc], timeout=20)
