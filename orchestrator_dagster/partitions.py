"""Partitions of `leads` (and the daily report): one per shop, so the UI shows each
shop's history. The touch-point job's hourly windows live in touchpoint_windows.py: they
depend on the deployment's first day, which only the Dagster code location computes
(the dispatcher imports this module and must not write into DAGSTER_HOME)."""
from __future__ import annotations

from dagster import DynamicPartitionsDefinition

shop_partitions = DynamicPartitionsDefinition(name="shops")
