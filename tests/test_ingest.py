"""The ingest path with real PostgreSQL, the stand-ins and the real Dagster ingest job."""
from __future__ import annotations

import datetime as dt

from dagster import AssetKey, AssetRecordsFilter

from lead_orchestrator.services.ingest import claim_events, process_claimed_events
from orchestrator_dagster.definitions import defs
from tests.conftest import emails_to, sms_to


def _process_all(db, vendors):
    return process_claimed_events(db, vendors, claim_events(db, "test", 100))


def test_quiet_hours_defer_the_first_touch_and_record_why(db, vendors, make_shop, standins, receiver, admin):
    # A send window that is closed right now, whatever the time of day the test runs.
    now = dt.datetime.now(dt.timezone.utc)
    opens = (now + dt.timedelta(hours=3)).time().replace(second=0, microsecond=0)
    closes = (now + dt.timedelta(hours=4)).time().replace(second=0, microsecond=0)
    if closes < opens:  # the window would wrap past midnight: take one that cannot contain now
        opens, closes = dt.time(1, 0), dt.time(2, 0)
    shop = make_shop(time_zone="UTC", send_window_start=opens, send_window_end=closes,
                     settings={"holiday_country": None})
    standins.shopmonkey.add_shop(shop.shopmonkey_api_key.get_secret_value(),
                                 f"{receiver.url}/webhooks/shopmonkey/{shop.slug}",
                                 shop.webhook_secret.get_secret_value())
    standins.twilio.add_account(shop.twilio_account_sid, shop.twilio_auth_token.get_secret_value())
    standins.sendgrid.add_api_key(shop.sendgrid_api_key.get_secret_value())
    created = standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), wait_webhook=True)
    _process_all(db, vendors)

    phone = created["customer"]["phoneNumbers"][0]["number"]
    assert sms_to(standins, phone) == []
    touches = admin.execute("SELECT status, reason, send_after FROM touches WHERE tenant_id = %s AND step = 0",
                            (shop.id,)).fetchall()
    assert len(touches) == 2
    for t in touches:
        assert (t["status"], t["reason"]) == ("deferred", "quiet_hours")
        assert t["send_after"].astimezone(dt.timezone.utc).time() == opens
        assert t["send_after"] > now
    kinds = {r["kind"] for r in admin.execute("SELECT kind FROM lead_events WHERE tenant_id = %s", (shop.id,))}
    assert {"qualified", "touch_deferred"} <= kinds


def test_disqualified_order_is_recorded_with_its_reason(db, vendors, connected_shop, standins, admin):
    shop = connected_shop()
    standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), wait_webhook=True,
                                     order={"createdDate": "2025-01-01T10:00:00.000Z"})
    results = _process_all(db, vendors)
    assert [r.outcome for r in results if r.tenant_id == shop.id] == ["disqualified"]
    lead = admin.execute("SELECT status, status_reason FROM leads WHERE tenant_id = %s", (shop.id,)).fetchone()
    assert lead == {"status": "disqualified", "status_reason": "too_old"}


def test_ingest_job_materializes_leads_per_shop(connected_shop, standins, dagster_instance, admin):
    shops = [connected_shop(), connected_shop()]
    for shop in shops:
        standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), wait_webhook=True)
    result = defs.get_job_def("ingest_job").execute_in_process(instance=dagster_instance)
    assert result.success
    for shop in shops:
        # Recorded as runless events (the lead history outlives the run; see history.py).
        [record] = dagster_instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("leads"), asset_partitions=[shop.slug]), limit=5).records
        assert record.run_id == ""
        metadata = record.asset_materialization.metadata
        assert metadata["batch_new"].value == 1 and metadata["leads_total"].value == 1
        assert metadata["batch_first_sight_to_touch_p50_s"].value < 30
        assert metadata["recorded_by"].value == f"ingest run {result.run_id[:8]}"
    partitions = dagster_instance.get_dynamic_partitions("shops")
    assert {s.slug for s in shops} <= set(partitions)
    assert dagster_instance.get_latest_materialization_event(AssetKey("leads")) is not None
    for shop in shops:
        n = admin.execute("SELECT count(*) AS n FROM touches WHERE tenant_id = %s AND status = 'sent'",
                          (shop.id,)).fetchone()["n"]
        assert n == 2
