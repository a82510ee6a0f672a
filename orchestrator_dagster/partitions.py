"""Partitions: leads by shop (history per shop in the UI), touch-points by hour.

Touch-point windows: why hourly partitions with a tick every 4 minutes.

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
"""
from __future__ import annotations

from dagster import DynamicPartitionsDefinition, HourlyPartitionsDefinition

shop_partitions = DynamicPartitionsDefinition(name="shops")

# end_offset=1: the hour in progress is a partition too. Without it a window exists only
# once it has ended, and the ticks inside an hour would name a partition Dagster refuses.
touchpoint_windows = HourlyPartitionsDefinition(start_date="2026-11-01-00:00", timezone="UTC", end_offset=1)
