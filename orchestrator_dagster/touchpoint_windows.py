"""Touch-point windows: hourly partitions, with a tick every 4 minutes. Why:

- A follow-up must go out at most 5 minutes after it is due. What bounds that delay
  is how often a run starts, not the partition size: every tick runs the current
  window and sends everything owed up to "now". A tick every 4 minutes leaves a minute
  for the run to be queued and started (a run launched by the daemon takes seconds: for
  sensor runs on 2 cores the team measured median 4.4 s, max 6.8 s), so the worst case
  stays under 5 minutes; a 5-minute tick would exceed it by that start-up time.
- The partition is the unit an operator sees, reruns and backfills. Making it as small
  as the tick (5 minutes) would mean 105,120 partitions a year: past Dagster's advice
  (~100,000 per asset at most, thousands for comfort) within the first year. Hourly
  windows make 8,760 a year, so ~11 years before the hard ceiling, and a window still
  names a span short enough to reason about ("the 14:00 window failed").
- Daily windows (365 a year) would be lighter still, but a failed run would then hide
  inside a day of 360 runs, and a backfill would re-scan a whole day.

A window's runs (and any backfill of it) send what was due up to the end of that window
and is still owed; what was already sent is never owed again, so re-running is safe.

The first window is the deployment's first day: TOUCHPOINTS_START_DATE when set, else the
day this Dagster instance first loaded the code location (kept in
DAGSTER_HOME/touchpoints_start_date, so every process of the instance agrees). Windows
before it never had runs, and the UI would list each of them as missing and invite a
backfill of hundreds of runs.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from dagster import HourlyPartitionsDefinition

from lead_orchestrator.settings import Settings, _generated

START_FILE = "touchpoints_start_date"
# A window's partition key, e.g. 2026-12-01-14:00 (HourlyPartitionsDefinition's own format).
WINDOW_FORMAT = "%Y-%m-%d-%H:%M"


def touchpoints_start_date(configured: str | None, dagster_home: Path | None, today: dt.date) -> dt.date:
    """The first day of touch-point windows (see the module's docstring)."""
    if configured:
        try:
            return dt.date.fromisoformat(configured.strip())
        except ValueError:
            raise ValueError(f"TOUCHPOINTS_START_DATE must be a date like 2026-11-01, not {configured!r}") from None
    if dagster_home is None:
        return today
    return dt.date.fromisoformat(_generated(Path(dagster_home) / START_FILE, today.isoformat))


def hourly_windows(start: dt.date) -> HourlyPartitionsDefinition:
    # end_offset=1: the hour in progress is a partition too. Without it a window exists only
    # once it has ended, and the ticks inside an hour would name a partition Dagster refuses.
    return HourlyPartitionsDefinition(start_date=f"{start:%Y-%m-%d}-00:00", timezone="UTC", end_offset=1,
                                      fmt=WINDOW_FORMAT)


def touchpoint_windows(settings: Settings) -> HourlyPartitionsDefinition:
    """The deployment's windows, from its settings (definitions.py)."""
    return hourly_windows(touchpoints_start_date(settings.touchpoints_start_date, settings.dagster_home,
                                                 dt.datetime.now(dt.timezone.utc).date()))
