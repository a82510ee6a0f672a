"""The health checks on `leads` in real Dagster (PostgreSQL storage): the sensor's runless
evaluations, what the UI reads back (status, severity, the failing shop and its reason),
and the same checks executed as a run. The session's database holds other tests' shops
too, so these assertions are about the shops made here."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from dagster import AssetCheckKey, AssetCheckSeverity, AssetKey, AssetSelection, build_sensor_context, materialize

from lead_orchestrator.services.health import CHECK_NAMES
from orchestrator_dagster.assets import leads
from orchestrator_dagster.checks import health_checks_sensor, leads_health_checks, report_health
from orchestrator_dagster.resources import DatabaseResource
from tests.health_support import UTC, add_event, set_poll_state


def latest(instance, name):
    key = AssetCheckKey(AssetKey("leads"), name)
    return instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]


def problems_of(record) -> dict[str, dict]:
    return {p["shop"]: p for p in record.evaluation.metadata["problems"].value}


@pytest.fixture
def locked_out_shop(db, make_shop):
    """A shop whose CRM refuses its key: events parked, poll unauthorized."""
    shop = make_shop()
    now = dt.datetime.now(UTC)
    add_event(db, shop, status="parked", received_at=now - dt.timedelta(minutes=20),
              error="ShopMonkey refused the API key (401)")
    set_poll_state(db, shop, health="unauthorized", error="401 Unauthorized", last_success=now - dt.timedelta(hours=1))
    return shop


def test_the_sensor_reports_each_check_with_the_failing_shop_and_its_reason(dagster_instance, database_url, db,
                                                                             locked_out_shop, make_shop):
    healthy = make_shop()
    context = build_sensor_context(instance=dagster_instance, resources={"database": DatabaseResource(
        database_url=database_url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])})
    result = health_checks_sensor.evaluate_tick(context)
    assert result.skip_message.startswith("reported")

    stuck = latest(dagster_instance, "stuck_events")
    assert not stuck.evaluation.passed and stuck.evaluation.severity == AssetCheckSeverity.ERROR
    assert stuck.run_id == ""  # runless: no run process per evaluation
    mine = problems_of(stuck)[locked_out_shop.slug]
    assert "1 events parked" in mine["reason"] and "401" in mine["reason"]
    assert healthy.slug not in problems_of(stuck)
    assert locked_out_shop.slug in stuck.evaluation.description
    assert f"| {locked_out_shop.slug} | ERROR |" in stuck.evaluation.metadata["failing_shops"].value
    poll = latest(dagster_instance, "crm_poll")
    assert problems_of(poll)[locked_out_shop.slug]["severity"] == "ERROR"
    assert {latest(dagster_instance, name).evaluation is not None for name in CHECK_NAMES} == {True}

    # Nothing changed: the next tick does not write the same results again.
    again = health_checks_sensor.evaluate_tick(build_sensor_context(
        instance=dagster_instance, cursor=result.cursor,
        resources={"database": DatabaseResource(database_url=database_url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])}))
    assert again.skip_message.startswith("unchanged")
    assert latest(dagster_instance, "stuck_events").id == stuck.id

    # The shop's key works again and its events are released: its failure clears.
    with db.tenant_tx(locked_out_shop.id) as conn:
        conn.execute("UPDATE inbox_events SET status = 'done'")
        conn.execute("UPDATE poll_state SET health = 'ok'")
    third = health_checks_sensor.evaluate_tick(build_sensor_context(
        instance=dagster_instance, cursor=result.cursor,
        resources={"database": DatabaseResource(database_url=database_url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])}))
    assert third.skip_message.startswith("reported")
    assert locked_out_shop.slug not in problems_of(latest(dagster_instance, "stuck_events"))
    assert json.loads(third.cursor)["fingerprint"] != json.loads(result.cursor)["fingerprint"]


def test_runless_results_belong_to_the_latest_leads_materialization(dagster_instance, db, locked_out_shop):
    from dagster import AssetMaterialization

    dagster_instance.report_runless_asset_event(AssetMaterialization("leads", partition=locked_out_shop.slug))
    report_health(dagster_instance, db)
    record = latest(dagster_instance, "stuck_events")
    newest = dagster_instance.fetch_materializations(AssetKey("leads"), limit=1).records[0]
    assert record.evaluation.target_materialization_data.storage_id == newest.storage_id


def test_the_checks_run_as_a_job_too(dagster_instance, database_url, locked_out_shop):
    """What the UI's "Execute" button runs: the same evaluation, in a run."""
    result = materialize([leads, leads_health_checks], selection=AssetSelection.all_asset_checks(),
                         instance=dagster_instance, resources={"database": DatabaseResource(database_url=database_url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])})
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(CHECK_NAMES)
    stuck = evaluations["stuck_events"]
    assert not stuck.passed
    assert locked_out_shop.slug in {p["shop"] for p in stuck.metadata["problems"].value}
