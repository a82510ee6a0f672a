"""The backup poll through Dagster: the poll sensor's own code (build_sensor_context)
and the real daemon, then the inbox sensor and the ingest job, up to the first touch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from tests.conftest import emails_to, sms_to
from tests.support import wait_for
from tests.test_poll import leads_of, new_order, poll_events

ROOT = Path(__file__).parent.parent


def _definitions():
    from orchestrator_dagster.definitions import defs

    return defs


def _tick(defs, name: str, instance: DagsterInstance):
    context = build_sensor_context(instance=instance, resources=defs.resources)
    return defs.resolve_sensor_def(name)(context)


def test_poll_sensor_ticks_every_5_seconds_for_30_second_slots_and_launches_no_run_of_its_own():
    from lead_orchestrator.services.poll import PollConfig

    defs = _definitions()
    sensor = defs.resolve_sensor_def("poll_sensor")
    # Each tick polls the shops whose slot has come; each shop's slot comes every 30 s.
    assert sensor.minimum_interval_seconds == 5 and PollConfig().cadence_s == 30
    assert not sensor.targets  # it feeds the inbox; inbox_sensor requests the (single) ingest run


def test_dropped_webhooks_of_many_shops_one_poll_tick_then_one_ingest_run(dagster_instance, standins,
                                                                          connected_shop, admin):
    defs = _definitions()
    shops = [connected_shop() for _ in range(3)]
    orders = [new_order(standins, shop, emit_webhook=False) for shop in shops]

    tick = _tick(defs, "poll_sensor", dagster_instance)
    assert isinstance(tick, SkipReason)  # the poll itself launches no run
    assert " new events" in tick.skip_message, tick.skip_message
    for shop, order in zip(shops, orders):
        assert [e["object_id"] for e in poll_events(admin, shop)] == [order["id"]]

    # One inbox tick, one run, for all shops (the session's daemon may have been quicker:
    # then the events are already claimed and there is nothing left to ask for).
    requests = _tick(defs, "inbox_sensor", dagster_instance)
    requests = requests if isinstance(requests, list) else [requests]
    assert len([r for r in requests if isinstance(r, RunRequest)]) <= 1
    result = defs.resolve_job_def("ingest_job").execute_in_process(instance=dagster_instance)
    assert result.success

    for shop, order in zip(shops, orders):
        wait_for(lambda: sms_to(standins, order["phone"]) and emails_to(standins, order["email"]),
                 message=f"first touches of {shop.slug}")
        (lead,) = leads_of(admin, shop)
        assert (lead["source"], lead["status"]) == ("poll", "active")
        assert len(sms_to(standins, order["phone"])) == 1


def _dagster_cli(dagster_env, *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([str(Path(sys.executable).parent / "dagster"), "sensor", *args, "-w", "workspace.yaml"],
                          cwd=ROOT, env={**os.environ, **dagster_env}, capture_output=True, text=True, timeout=120)


def _poll_sensor_state(instance: DagsterInstance):
    return next((s for s in instance.all_instigator_state() if s.instigator_name == "poll_sensor"), None)


@pytest.mark.daemon
def test_operator_starts_the_poll_and_the_daemon_catches_a_dropped_webhook(dagster_daemon, dagster_env,
                                                                           dagster_instance, standins,
                                                                           connected_shop, admin):
    shop = connected_shop()
    order = new_order(standins, shop, emit_webhook=False)
    # The session's daemon has the poll stopped (POLL_SENSOR_DEFAULT_STATUS=stopped): an
    # operator starts it (the CLI writes the same instance state as the UI's toggle)...
    started = _dagster_cli(dagster_env, "start", "poll_sensor")
    assert started.returncode == 0, started.stderr[-2000:]
    state = _poll_sensor_state(dagster_instance)
    assert state is not None and state.is_running
    try:
        wait_for(lambda: sms_to(standins, order["phone"]) and emails_to(standins, order["email"]), timeout=60,
                 message="first touches of the order the webhook never announced")
    finally:
        # ...and pauses it again (what the UI's toggle calls), for the rest of the session.
        dagster_instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    assert not _poll_sensor_state(dagster_instance).is_running
    (lead,) = leads_of(admin, shop)
    assert (lead["source"], lead["status"]) == ("poll", "active")
    ticks = dagster_instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
    assert any("new events" in (t.skip_reason or "") for t in ticks)  # what the UI's tick history shows
