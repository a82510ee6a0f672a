"""Partitions: leads by shop (history per shop in the UI), touch-points by hour.

Hourly touch-point windows keep the count near 8,760 a year (Dagster advises staying
within the thousands), while the schedule still runs every five minutes inside the
current window, so a step goes out at most ~5 minutes after it is due.
"""
from __future__ import annotations

from dagster import DynamicPartitionsDefinition, HourlyPartitionsDefinition

shop_partitions = DynamicPartitionsDefinition(name="shops")

touchpoint_windows = HourlyPartitionsDefinition(start_date="2026-11-01-00:00", timezone="UTC")
