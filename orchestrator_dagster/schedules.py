"""The touch-point schedule: every four minutes, a run for the current hourly window
(see partitions.py for why four minutes and why hourly).

The tick at minute 0 targets the window that just ended, so every window's last run
sees all of it; the ticks inside an hour send what became due since the last tick.
"""

import datetime as dt

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from orchestrator_dagster.touchpoint_windows import WINDOW_FORMAT

TICK_MINUTES = 4  # divides 60, so ticks fall on the same minutes every hour


def window_for_tick(tick: dt.datetime) -> str:
    """The hourly partition a tick works on: the one containing the second before it."""
    moment = tick.astimezone(dt.timezone.utc) - dt.timedelta(seconds=1)
    return moment.replace(minute=0, second=0, microsecond=0).strftime(WINDOW_FORMAT)


def build_touchpoints_schedule(touchpoints_job):
    """Every TICK_MINUTES, a run of `touchpoints_job` for the current window."""

    @schedule(job=touchpoints_job, cron_schedule=f"*/{TICK_MINUTES} * * * *", execution_timezone="UTC",
              default_status=DefaultScheduleStatus.RUNNING)
    def touchpoints_schedule(context: ScheduleEvaluationContext):
        tick = context.scheduled_execution_time
        partition = window_for_tick(tick)
        return RunRequest(run_key=f"touchpoints-{tick:%Y%m%dT%H%M}", partition_key=partition)

    return touchpoints_schedule


def daily_schedule(job_def, *, hour: int, minute: int = 0, name: str):
    """A run of `job_def` every day at hh:mm UTC, one run key per day (a tick retried by
    the daemon does not launch a second run)."""

    @schedule(name=name, job=job_def, cron_schedule=f"{minute} {hour} * * *", execution_timezone="UTC",
              default_status=DefaultScheduleStatus.RUNNING)
    def _daily(context: ScheduleEvaluationContext):
        return RunRequest(run_key=f"{job_def.name}-{context.scheduled_execution_time:%Y%m%d}")

    return _daily
