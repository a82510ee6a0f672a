"""Where touch-point windows start: a configured date, else the Dagster instance's first
day (kept in DAGSTER_HOME so every process agrees), never a hard-coded date."""
from __future__ import annotations

import datetime as dt

import pytest

from orchestrator_dagster.touchpoint_windows import START_FILE, hourly_windows, touchpoints_start_date

TODAY = dt.date(2026, 12, 1)


def test_a_configured_date_wins():
    assert touchpoints_start_date("2026-11-01", None, TODAY) == dt.date(2026, 11, 1)


def test_a_bad_date_is_refused_clearly():
    with pytest.raises(ValueError, match="TOUCHPOINTS_START_DATE must be a date like 2026-11-01, not '11/01/2026'"):
        touchpoints_start_date("11/01/2026", None, TODAY)


def test_the_instances_first_day_is_kept(tmp_path):
    assert touchpoints_start_date(None, tmp_path, TODAY) == TODAY
    assert (tmp_path / START_FILE).read_text() == "2026-12-01"
    # A process starting days later (or a run worker) sees the same first day.
    assert touchpoints_start_date(None, tmp_path, TODAY + dt.timedelta(days=40)) == TODAY


def test_without_an_instance_home_windows_start_today():
    assert touchpoints_start_date(None, None, TODAY) == TODAY


def test_a_month_after_the_first_day_a_month_of_windows_exists():
    windows = hourly_windows(TODAY)
    keys = windows.get_partition_keys(current_time=dt.datetime(2026, 12, 31, 0, 30, tzinfo=dt.timezone.utc))
    assert keys[0] == "2026-12-01-00:00" and len(keys) == 30 * 24 + 1
