"""The touch-point job on its hourly partitions, run with execute_in_process on the real
Dagster instance (PostgreSQL storage): a window sends what it owes, and running it
again (a backfill) sends nothing twice. And the schedule's choice of window."""
from __future__ import annotations

import datetime as dt

from dagster import DagsterRunStatus, RunsFilter, build_schedule_context

from orchestrator_dagster.definitions import defs
from orchestrator_dagster.touchpoint_windows import WINDOW_FORMAT, hourly_windows
from orchestrator_dagster.schedules import window_for_tick

touchpoints_schedule = defs.resolve_schedule_def("touchpoints_schedule")
from tests.conftest import emails_to, sms_to
from tests.touchpoint_support import UTC, insert_lead, touches_of, unique_email, unique_phone

STEPS = [{"step": 0, "offset_minutes": 0, "channel": "sms", "template": "first_sms"},
         {"step": 1, "offset_minutes": 10, "channel": "email", "template": "first_email"},
         {"step": 2, "offset_minutes": 180, "channel": "sms", "template": "last_sms"}]


def run_window(instance, partition: str, slug: str):
    job = defs.get_job_def("touchpoints_job")
    return job.execute_in_process(instance=instance, partition_key=partition,
                                  run_config={"ops": {"send_due_follow_ups": {"config": {"shops": [slug]}}}})


def test_a_window_sends_what_it_owes_and_a_backfill_of_it_sends_nothing(dagster_instance, db, connected_shop,
                                                                        standins, admin):
    now = dt.datetime.now(UTC)
    window = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)  # the last full hour
    partition = window.strftime(WINDOW_FORMAT)
    shop = connected_shop(settings={"holiday_country": None, "sequence": STEPS})
    customers = [(unique_phone(), unique_email()) for _ in range(2)]
    leads = [insert_lead(db, shop, first_seen=window + dt.timedelta(minutes=m), phone=p, email=e)
             for m, (p, e) in zip((5, 25), customers)]

    # The window was missed (an outage). Running it now sends what each lead owes: the
    # first text. The email, due 10 min after it, keeps that spacing from the text
    # actually sent instead of following it at once; the last step is not due yet.
    first = run_window(dagster_instance, partition, shop.slug)
    assert first.success
    for lead, (phone, email) in zip(leads, customers):
        assert len(sms_to(standins, phone)) == 1 and emails_to(standins, email) == []
        touches = touches_of(admin, lead["id"])
        assert touches[(0, "sms")]["status"] == "sent"
        assert (touches[(1, "email")]["status"], touches[(1, "email")]["reason"]) == ("deferred", "spacing")
        assert touches[(1, "email")]["send_after"] > now + dt.timedelta(minutes=9)
        assert touches[(2, "sms")]["status"] == "scheduled"

    # Backfilling the same window again, and the one before it: nothing more goes out.
    earlier = (window - dt.timedelta(hours=1)).strftime(WINDOW_FORMAT)
    ours = [first.run_id]
    for key in (partition, earlier, partition):
        result = run_window(dagster_instance, key, shop.slug)
        assert result.success
        ours.append(result.run_id)
    for phone, email in customers:
        assert len(sms_to(standins, phone)) == 1 and emails_to(standins, email) == []

    # The runs are recorded under the window they ran for. Only ours are looked at: the
    # session's daemon and other tests (a deliberately failing run, for the alerts) run
    # touch-point windows too.
    runs = dagster_instance.get_runs(filters=RunsFilter(job_name="touchpoints_job",
                                                        tags={"dagster/partition": partition}))
    mine = [r for r in runs if r.run_id in ours]
    assert len(mine) == 3 and all(r.status == DagsterRunStatus.SUCCESS for r in mine)


def test_a_window_run_for_an_unknown_shop_fails_loudly(dagster_instance):
    result = defs.get_job_def("touchpoints_job").execute_in_process(
        instance=dagster_instance, partition_key=window_for_tick(dt.datetime.now(UTC)), raise_on_error=False,
        run_config={"ops": {"send_due_follow_ups": {"config": {"shops": ["no-such-shop"]}}}})
    assert not result.success


def test_each_tick_runs_the_window_it_falls_in_and_minute_zero_closes_the_last_one():
    # A day well inside the deployment's windows (they start a week before the session).
    day = dt.datetime.combine(dt.datetime.now(UTC).date() - dt.timedelta(days=1), dt.time(0), UTC)

    def partition_at(hh, mm):
        tick = day.replace(hour=hh, minute=mm)
        context = build_schedule_context(scheduled_execution_time=tick, repository_def=defs.get_repository_def())
        request = touchpoints_schedule.evaluate_tick(context)
        return request.run_requests[0].partition_key

    assert partition_at(10, 0) == f"{day:%Y-%m-%d}-09:00"
    assert partition_at(10, 4) == f"{day:%Y-%m-%d}-10:00"
    assert partition_at(10, 56) == f"{day:%Y-%m-%d}-10:00"
    assert partition_at(0, 0) == f"{day - dt.timedelta(days=1):%Y-%m-%d}-23:00"
    # Every tick names a window that exists at that moment (the one in progress included).
    windows = hourly_windows(dt.date(2026, 11, 1))
    day = dt.datetime(2026, 11, 20, tzinfo=UTC)
    for minute in range(0, 24 * 60, 4):
        tick = day + dt.timedelta(minutes=minute)
        assert window_for_tick(tick) in windows.get_partition_keys(current_time=tick)
    assert touchpoints_schedule.cron_schedule == "*/4 * * * *"


def test_hourly_windows_stay_within_dagsters_partition_guidance_for_years():
    windows = hourly_windows(dt.date(2026, 11, 1))
    year_later = dt.datetime(2027, 11, 1, tzinfo=UTC)
    assert len(windows.get_partition_keys(current_time=year_later)) == 8760 + 1  # + the hour in progress
    ten_years = dt.datetime(2036, 11, 1, tzinfo=UTC)
    assert len(windows.get_partition_keys(current_time=ten_years)) < 100_000
