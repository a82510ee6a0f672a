"""The fast path: the dispatcher picks up committed events at once (LISTEN/NOTIFY),
shares the claim with the Dagster ingest job, and records `leads` history in Dagster."""
from __future__ import annotations

import threading
import time

import pytest

from lead_orchestrator.runtime.dispatcher import Dispatcher
from orchestrator_dagster.history import BackgroundRecorder, LeadsHistory
from tests.conftest import emails_to, sms_to
from tests.support import wait_for


@pytest.fixture
def running_dispatcher(db, vendors):
    stop = threading.Event()
    dispatcher = Dispatcher(db, vendors, workers=4)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    yield dispatcher
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_webhook_to_first_touch_through_the_fast_path(running_dispatcher, connected_shop, standins, admin):
    shop = connected_shop()
    started = time.monotonic()
    created = standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), wait_webhook=True)
    phone = created["customer"]["phoneNumbers"][0]["number"]
    email = created["customer"]["emails"][0]["email"]
    wait_for(lambda: sms_to(standins, phone) and emails_to(standins, email), timeout=10, message="first touches")
    print(f"\nwebhook -> first SMS and email via the dispatcher: {time.monotonic() - started:.2f}s")
    # The event is marked done in the transaction that records the sends, just after the
    # vendors took them (under load, a moment after the outboxes show them).
    row = wait_for(lambda: admin.execute("SELECT status, claimed_by FROM inbox_events WHERE tenant_id = %s AND "
                                         "status = 'done'", (shop.id,)).fetchone(), timeout=10, message="event done")
    assert row["claimed_by"].startswith("dispatcher-")


def test_events_given_back_after_a_shopmonkey_outage_are_retried_later(running_dispatcher, connected_shop,
                                                                       standins, admin):
    shop = connected_shop()
    key = shop.shopmonkey_api_key.get_secret_value()
    standins.shopmonkey.inject_failures(count=8, status=503, api_key=key)  # outlasts one event's retries
    created = standins.shopmonkey.create_order(key, wait_webhook=True)
    phone = created["customer"]["phoneNumbers"][0]["number"]
    wait_for(lambda: sms_to(standins, phone), timeout=20, message="SMS after the outage")

    def event():
        return admin.execute("SELECT status, attempts FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()

    # The event is marked done in the transaction that records the send, just after the
    # stand-in has the SMS: wait for it rather than read it at once.
    wait_for(lambda: event()["status"] == "done", timeout=10, message="event done after its SMS")
    assert event()["attempts"] >= 2


def test_reporter_records_leads_history_per_shop(db, vendors, connected_shop, standins, dagster_instance):
    from dagster import AssetKey

    shop = connected_shop()
    standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), wait_webhook=True)
    dispatcher = Dispatcher(db, vendors, workers=2, reporter=BackgroundRecorder(LeadsHistory(db), "dispatcher"))
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: dispatcher.processed >= 1, timeout=15, message="event processed")
    stop.set()
    thread.join(timeout=10)
    assert dispatcher.reporter.wait(timeout=20)  # points are recorded off the claim loop
    event = dagster_instance.get_latest_materialization_event(AssetKey("leads"))
    records = dagster_instance.fetch_materializations(AssetKey("leads"), limit=50).records
    mine = [r for r in records if r.partition_key == shop.slug]
    assert mine, f"no leads materialization for {shop.slug}; latest: {event}"
    metadata = mine[0].asset_materialization.metadata
    assert metadata["batch_new"].value == 1 and metadata["leads_total"].value == 1
