"""Retention: old runs go with their event logs, old runless check evaluations go, old
done inbox events go; the lead history (runless `leads` points, leads, touches) stays.
Runs on a Dagster instance of its own (its own PostgreSQL database): deleting runs of the
session's shared instance would pull them from under other tests."""
from __future__ import annotations

import datetime as dt
import os

import pytest
from dagster import (AssetCheckEvaluation, AssetCheckKey, AssetKey, AssetMaterialization, DagsterInstance, job, op)

from lead_orchestrator.store.db import sqlalchemy_psycopg2_url
from lead_orchestrator.store.inbox_retention import purge_done_events
from orchestrator_dagster.definitions import defs
from orchestrator_dagster.resources import DatabaseResource
from orchestrator_dagster.retention import purge_runless_check_evaluations, purge_runs, retention_schedule
from tests.conftest import scratch_database
from tests.health_support import UTC, add_event, add_lead


@pytest.fixture
def own_instance(pg, tmp_path):
    with scratch_database(pg, "dagster_retention") as url:
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: \"{sqlalchemy_psycopg2_url(url)}\"\n"
                                           "telemetry:\n  enabled: false\n")
        instance = DagsterInstance.from_config(str(home))
        yield instance
        instance.dispose()


@op
def logs_a_point(context):
    context.log_event(AssetMaterialization("scratch", description="logged by the run"))


@job
def a_job():
    logs_a_point()


def check_evaluations(instance) -> int:
    key = AssetCheckKey(AssetKey("leads"), "stuck_events")
    return len(instance.event_log_storage.get_asset_check_execution_history(key, limit=100))


def test_old_runs_and_check_evaluations_go_and_the_lead_history_stays(own_instance):
    assert a_job.execute_in_process(instance=own_instance).success
    own_instance.report_runless_asset_event(AssetMaterialization("leads", partition="joes"))
    own_instance.add_dynamic_partitions("shops", ["joes"])
    for passed in (False, True):
        own_instance.report_runless_asset_event(AssetCheckEvaluation(
            asset_key=AssetKey("leads"), check_name="stuck_events", passed=passed))
    now = dt.datetime.now(UTC)

    # Nothing is old enough yet.
    assert purge_runs(own_instance, now - dt.timedelta(days=30)) == 0
    assert purge_runless_check_evaluations(own_instance, now - dt.timedelta(days=30)) == 0
    assert len(own_instance.get_runs()) == 1 and check_evaluations(own_instance) == 2

    # Everything before a moment from now is "old": the run, its events, the evaluations.
    later = now + dt.timedelta(seconds=5)
    assert purge_runs(own_instance, later) == 1
    assert purge_runless_check_evaluations(own_instance, later) == 2
    assert own_instance.get_runs() == [] and check_evaluations(own_instance) == 0
    assert own_instance.fetch_materializations(AssetKey("scratch"), limit=5).records == []  # went with its run
    leads = own_instance.fetch_materializations(AssetKey("leads"), limit=5).records
    assert len(leads) == 1 and leads[0].partition_key == "joes"  # the lead history stays


def test_old_done_inbox_events_go_and_everything_else_stays(db, make_shop, admin):
    shop, closed = make_shop(), make_shop()
    now = dt.datetime.now(UTC)
    year_ago = now - dt.timedelta(days=400)
    old_done = add_event(db, shop, status="done", received_at=year_ago, processed_at=year_ago)
    recent_done = add_event(db, shop, status="done", received_at=now - dt.timedelta(days=30),
                            processed_at=now - dt.timedelta(days=30))
    waiting = [add_event(db, shop, status=s, received_at=year_ago) for s in ("pending", "parked", "dead")]
    lead = add_lead(db, shop, created=year_ago, first_seen=year_ago, sent_after_s=3)
    closed_old = add_event(db, closed, status="done", received_at=year_ago, processed_at=year_ago)
    admin.execute("UPDATE tenants SET active = false WHERE id = %s", (closed.id,))

    deleted = purge_done_events(db, now - dt.timedelta(days=365), batch=1)  # batches of one: the loop too
    assert deleted >= 2
    remaining = {r["id"] for r in admin.execute("SELECT id FROM inbox_events WHERE tenant_id IN (%s, %s)",
                                                (shop.id, closed.id)).fetchall()}
    assert old_done not in remaining and closed_old not in remaining
    assert {recent_done, *waiting} <= remaining
    assert admin.execute("SELECT count(*) AS n FROM touches WHERE lead_id = %s", (lead,)).fetchone()["n"] == 2


def test_the_retention_job_runs(own_instance, database_url):
    job_def = defs.get_job_def("retention_job")
    result = job_def.execute_in_process(instance=own_instance,
                                        resources={"database": DatabaseResource(database_url=database_url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])})
    assert result.success
    assert retention_schedule.cron_schedule == "30 9 * * *" and retention_schedule.job_name == "retention_job"
