"""Nothing dies of a database restart. On a private embedded cluster that the tests stop
and start again: the dispatcher reconnects and processes what arrives afterwards; the
receiver answers 503 at once while the database is down (not after a pool timeout) and
2xx again when it is back, and every event it acknowledged is in the table."""
from __future__ import annotations

import base64
import logging
import os
import threading
import time
import uuid

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from lead_orchestrator.store.db import Database
from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres
from lead_orchestrator.store.migrations import apply_migrations
from lead_orchestrator.store.shops import ShopChanges, create_shop
from tests.conftest import sms_to
from tests.support import session_box, ThreadedServer, wait_for
from tests.test_receiver_shopmonkey import order_body, signed_headers


class Cluster:
    """An embedded PostgreSQL of this module's own, which it may stop and start."""

    def __init__(self, path):
        self._embedded = EmbeddedPostgres(path).start()
        self.url = self._embedded.url()
        apply_migrations(self.url, session_box())

    def stop(self) -> None:
        self._embedded._server.stop()  # pg_ctl stop -m fast: every session is ended

    def start(self) -> None:
        self._embedded._server.start()  # same data directory, same socket

    def close(self) -> None:
        self._embedded.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("restart") / "pg")
    yield cluster
    cluster.close()


@pytest.fixture
def running(cluster):
    """Makes sure the cluster runs again after a test, whatever happened in it."""
    yield cluster
    if not _accepts(cluster.url):
        cluster.start()


def _accepts(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def _shop(url: str, standins=None):
    """A shop in the private cluster; with `standins`, its vendor accounts live there."""
    slug = f"restart-{uuid.uuid4().hex[:8]}"
    changes = ShopChanges(
        time_zone="America/Chicago", webhook_secret="whsec_" + base64.b64encode(os.urandom(24)).decode(),
        shopmonkey_api_key="sm-" + uuid.uuid4().hex, twilio_account_sid="AC" + uuid.uuid4().hex,
        twilio_auth_token=uuid.uuid4().hex, twilio_sender="+15125550100", sendgrid_api_key="SG." + uuid.uuid4().hex,
        sendgrid_sender="service@restart.example", postal_address="1 Main St, Austin, TX 78701",
        shop_phone="+15125550199", send_window_start="00:00", send_window_end="23:59:59",
        settings={"holiday_country": None})
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        shop = create_shop(conn, slug, slug, changes, session_box())
    if standins is not None:
        standins.shopmonkey.add_shop(shop.shopmonkey_api_key.get_secret_value())
        standins.twilio.add_account(shop.twilio_account_sid, shop.twilio_auth_token.get_secret_value())
        standins.sendgrid.add_api_key(shop.sendgrid_api_key.get_secret_value())
    return shop


def _new_estimate(url: str, standins, shop) -> str:
    """An estimate in the ShopMonkey stand-in whose change is committed to the inbox (as
    the receiver would); returns the customer's phone number."""
    from lead_orchestrator.store.inbox import store_event

    created = standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), emit_webhook=False)
    order = created["order"]
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(shop.id),))
        store_event(conn, source="webhook", operation="INSERT", table="order", data=order,
                    payload={"operation": "INSERT", "table": "order", "data": order})
    return created["customer"]["phoneNumbers"][0]["number"]


def _lines(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_the_dispatcher_survives_a_database_restart(running, standins, vendors, caplog):
    from lead_orchestrator.runtime.dispatcher import Dispatcher

    cluster = running
    shop = _shop(cluster.url, standins)
    db = Database(cluster.url, max_size=6, name="restart-dispatcher", box=session_box()).open()
    dispatcher = Dispatcher(db, vendors, workers=4)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="lead_orchestrator"):
            thread.start()
            before = _new_estimate(cluster.url, standins, shop)
            wait_for(lambda: sms_to(standins, before), timeout=20, message="first SMS before the restart")

            cluster.stop()
            wait_for(lambda: not dispatcher.database_up, timeout=20, message="the dispatcher noticing the outage")
            outage = time.monotonic() + 3  # the database stays down a few reconnect attempts long
            wait_for(lambda: time.monotonic() > outage or not thread.is_alive(), timeout=10)
            assert thread.is_alive(), "the dispatcher exited while the database was down"

            cluster.start()
            after = _new_estimate(cluster.url, standins, shop)
            wait_for(lambda: sms_to(standins, after), timeout=30, message="SMS for an event stored after the restart")
            assert dispatcher.database_up and dispatcher.outages == 1
    finally:
        stop.set()
        thread.join(timeout=20)
        db.close()
    assert not thread.is_alive()
    # One line when the database went away, one when it was back; no traceback.
    lost, back = _lines(caplog, "database connection lost"), _lines(caplog, "database connection back")
    assert len(lost) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.name.startswith("lead_orchestrator.runtime.dispatcher") and r.exc_info]


def test_the_receiver_answers_503_at_once_while_the_database_is_down(running, settings, caplog):
    from webhook_receiver.main import create_app

    cluster = running
    cached, uncached = _shop(cluster.url), _shop(cluster.url)
    app = create_app(settings.model_copy(update={"database_url": cluster.url, "webhook_rate_limit": "100000/minute"}))
    answers: list[tuple[str, int]] = []  # (webhook-id, status) of a steady trickle of deliveries
    sending = threading.Event()
    sending.set()

    def deliver(client: httpx.Client, shop) -> tuple[httpx.Response, float, str]:
        body = order_body()
        headers = signed_headers(shop.webhook_secret.get_secret_value(), body)
        started = time.monotonic()
        response = client.post(f"/webhooks/shopmonkey/{shop.slug}", content=body, headers=headers)
        return response, time.monotonic() - started, headers["webhook-id"]

    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client, \
            caplog.at_level(logging.INFO):

        def trickle() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                while sending.is_set():
                    response, _, webhook_id = deliver(own, cached)
                    answers.append((webhook_id, response.status_code))
                    time.sleep(0.02)  # a steady trickle, not a flood

        assert deliver(client, cached)[0].status_code == 202  # `cached` is now in the shop cache
        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            wait_for(lambda: len(answers) >= 5, timeout=10, message="deliveries before the outage")
            cluster.stop()
            wait_for(lambda: any(status == 503 for _, status in answers), timeout=10, message="a 503 in the trickle")
            for shop in (cached, uncached, cached, uncached):  # uncached: a shop look-up through the pool
                response, took, _ = deliver(client, shop)
                assert response.status_code == 503 and response.headers["retry-after"], response.text
                assert took < 1.0, f"503 after {took:.2f} s"
            started = time.monotonic()
            ready = client.get("/readyz")
            assert ready.status_code == 503 and time.monotonic() - started < 1.0

            cluster.start()
            back = wait_for(lambda: deliver(client, uncached)[0].status_code == 202 or None, timeout=20,
                            interval=0.2, message="a 202 once the database is back")
            assert back
            assert client.get("/readyz").status_code == 200
            seen = len(answers)
            wait_for(lambda: len(answers) > seen + 3, timeout=10, message="the trickle after the outage")
        finally:
            sending.clear()
            sender.join(timeout=30)
    statuses = [status for _, status in answers]
    assert set(statuses) <= {202, 503}, statuses
    assert statuses.count(503) >= 1 and statuses[-1] == 202
    acknowledged = [webhook_id for webhook_id, status in answers if status == 202]
    with psycopg.connect(cluster.url, row_factory=dict_row) as conn:
        stored = {r["webhook_id"] for r in conn.execute(
            "SELECT webhook_id FROM inbox_events WHERE webhook_id = ANY(%s)", (acknowledged,)).fetchall()}
    assert stored == set(acknowledged)
    assert len(_lines(caplog, "database unreachable")) == 1
    assert len(_lines(caplog, "database reachable again")) == 1
    assert not [r for r in caplog.records if r.name.startswith("webhook_receiver") and r.levelno >= logging.ERROR]


def test_a_database_that_hangs_gets_503_after_the_commit_deadline(running, settings, monkeypatch):
    """A batch the database does not answer (here: the table locked) is answered 503
    after COMMIT_DEADLINE_S instead of holding the request; the receiver then recovers."""
    from webhook_receiver import inbox_writer
    from webhook_receiver.main import create_app

    monkeypatch.setattr(inbox_writer, "COMMIT_DEADLINE_S", 0.5)
    cluster = running
    shop = _shop(cluster.url)
    secret = shop.webhook_secret.get_secret_value()
    app = create_app(settings.model_copy(update={"database_url": cluster.url}))
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        def deliver() -> httpx.Response:
            body = order_body()
            return client.post(f"/webhooks/shopmonkey/{shop.slug}", content=body, headers=signed_headers(secret, body))

        assert deliver().status_code == 202  # connected, shop cached
        with psycopg.connect(cluster.url) as locker:
            locker.execute("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            hung = deliver()
            took = time.monotonic() - started
            locker.rollback()
        assert hung.status_code == 503 and took < 3, (hung.status_code, took)
        wait_for(lambda: deliver().status_code == 202, timeout=10, interval=0.2, message="a 202 after the hang")
