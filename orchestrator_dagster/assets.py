"""The `leads` asset: one partition per shop. Ingest runs record a materialization for
each shop they touched, with counts, lead ids, sources and webhook→touch latency."""
from __future__ import annotations

from dagster import AssetMaterialization, AssetSpec, MetadataValue

from lead_orchestrator.ingest import ShopSummary
from orchestrator_dagster.partitions import shop_partitions

LEADS_KEY = "leads"

leads = AssetSpec(
    LEADS_KEY,
    partitions_def=shop_partitions,
    group_name="leads",
    kinds={"postgres"},
    description="Leads per shop (table `leads`): estimates that qualified or were recorded with a reason.",
)


def leads_materialization(summary: ShopSummary) -> AssetMaterialization:
    latencies = sorted(summary.latencies_s)
    metadata = {
        "new": summary.outcomes.get("new_lead", 0),
        "updated": summary.outcomes.get("updated", 0),
        "closed": summary.outcomes.get("closed", 0),
        "suppressed": summary.outcomes.get("disqualified", 0),
        "failed": sum(summary.outcomes.get(o, 0) for o in ("parked", "dead", "retry")),
        "lead_ids": MetadataValue.json(summary.lead_ids[:500]),
        "sources": MetadataValue.json(dict(summary.sources)),
    }
    if latencies:
        metadata["webhook_to_touch_p50_s"] = latencies[len(latencies) // 2]
        metadata["webhook_to_touch_max_s"] = latencies[-1]
    return AssetMaterialization(asset_key=LEADS_KEY, partition=summary.slug, metadata=metadata)
