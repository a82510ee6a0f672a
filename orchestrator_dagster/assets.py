"""The `leads` asset: one partition per shop. Its materializations are the lead history
(orchestrator_dagster/history.py records them); the health checks on it are in checks.py."""
from __future__ import annotations

from dagster import AssetSpec

from orchestrator_dagster.partitions import shop_partitions

LEADS_KEY = "leads"

leads = AssetSpec(
    LEADS_KEY,
    partitions_def=shop_partitions,
    group_name="leads",
    kinds={"postgres"},
    description="Leads per shop (table `leads`). Each materialization is a point of the shop's history: "
                "cumulative figures (leads, touched, first-touch p50/p95 from the estimate's creation, replied, "
                "converted, opted out, ...), what changed since the previous point, and the batch that caused it.",
)
