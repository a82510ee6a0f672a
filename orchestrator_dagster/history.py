"""The `leads` history: a materialization of a shop's partition each time something
happened to its leads, carrying the shop's cumulative figures (read from the tables,
so "Plots by partition" shows how the shop is doing over time), what changed since the
shop's previous point, and the figures of the batch that caused it.

Who records a point: the dispatcher (every flush, for the shops it worked on), ingest
runs (same), and touch-point runs (every shop whose figures moved: follow-ups sent,
replies, opt-outs, conversions and delivery news that reached the receiver meanwhile).

Points are runless asset events even when a run records them: deleting a run (the
retention job deletes runs after RUN_RETENTION_DAYS) deletes the events it logged, and
the lead history must outlive the runs.
"""
from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
from collections import defaultdict
from typing import Any, Mapping

from dagster import (AssetKey, AssetMaterialization, AssetRecordsFilter, DagsterEventType, DagsterInstance,
                     MetadataValue)

from lead_orchestrator.services.ingest import EventResult, summarize
from lead_orchestrator.store.lead_stats import LeadFigures, ShopStats, lead_figures, shop_stats
from lead_orchestrator.services.touch_sweep import active_tenant_ids
from orchestrator_dagster.assets import LEADS_KEY
from orchestrator_dagster.partitions import shop_partitions

log = logging.getLogger(__name__)

# Cumulative figures, in the order the UI lists them; all numbers, so each gets a plot.
CUMULATIVE_KEYS = (
    "leads_total", "leads_active", "leads_touched", "leads_delivered", "leads_replied", "leads_converted",
    "leads_opted_out", "leads_bounced", "leads_deferred_quiet_hours", "leads_poll_found",
    "first_touch_p50_s", "first_touch_p95_s", "first_touch_share_under_30s",
    "first_sight_to_touch_p50_s", "first_sight_to_touch_p95_s",
    "estimates_disqualified", "sends_unknown", "events_parked", "events_dead",
)
COUNT_KEYS = tuple(k for k in CUMULATIVE_KEYS if not k.startswith("first_"))


def cumulative_figures(stats: ShopStats) -> dict[str, float | int]:
    f = stats.figures
    values = {
        "leads_total": f.leads_total, "leads_active": f.active, "leads_touched": f.touched,
        "leads_delivered": f.delivered, "leads_replied": f.replied, "leads_converted": f.converted,
        "leads_opted_out": f.opted_out, "leads_bounced": f.bounced,
        "leads_deferred_quiet_hours": f.deferred_quiet_hours, "leads_poll_found": f.poll_found,
        "first_touch_p50_s": f.first_touch_p50_s, "first_touch_p95_s": f.first_touch_p95_s,
        "first_touch_share_under_30s": None if f.share_under_sla is None else round(f.share_under_sla, 4),
        "first_sight_to_touch_p50_s": f.first_sight_to_touch_p50_s,
        "first_sight_to_touch_p95_s": f.first_sight_to_touch_p95_s,
        "estimates_disqualified": stats.disqualified, "sends_unknown": stats.unknown_sends,
        "events_parked": stats.events_parked, "events_dead": stats.events_dead,
    }
    return {k: v for k, v in values.items() if v is not None}  # a figure with no data has no point


def changes_since(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, int]:
    """How each count moved since the shop's previous point (all of it, for the first)."""
    before = previous or {}
    return {f"changed_{k}": current.get(k, 0) - before.get(k, 0) for k in COUNT_KEYS
            if current.get(k, 0) != before.get(k, 0)}


def ingest_batches(results: list[EventResult]) -> dict[str, dict[str, Any]]:
    """The batch figures of a set of processed events, per shop slug (outcomes, sources,
    lead ids); `new_lead_ids` are measured from the tables when the point is recorded."""
    new_leads: dict[str, list[int]] = defaultdict(list)
    for r in results:
        if r.outcome == "new_lead" and r.lead_id is not None:
            new_leads[r.shop_slug].append(r.lead_id)
    batches = {}
    for slug, s in summarize(results).items():
        if slug == "?":
            continue  # an event that failed before its shop was known; its own run logs it
        batches[slug] = {
            "batch_events": sum(s.outcomes.values()),
            "batch_new": s.outcomes.get("new_lead", 0),
            "batch_updated": s.outcomes.get("updated", 0),
            "batch_closed": s.outcomes.get("closed", 0),
            "batch_suppressed": s.outcomes.get("disqualified", 0),
            "batch_parked": s.outcomes.get("parked", 0),
            "batch_dead": s.outcomes.get("dead", 0),
            "batch_retry": s.outcomes.get("retry", 0),
            "batch_sources": MetadataValue.json(dict(s.sources)),
            "batch_lead_ids": MetadataValue.json(s.lead_ids[:500]),
            "new_lead_ids": new_leads.get(slug, []),
        }
    return batches


def batch_latency_figures(figures: LeadFigures) -> dict[str, float | int]:
    """First-touch figures of the batch's new leads (measured like the cumulative ones)."""
    values = {
        "batch_touched": figures.touched,
        "batch_poll_found": figures.poll_found,
        "batch_deferred_quiet_hours": figures.deferred_quiet_hours,
        "batch_first_touch_p50_s": figures.first_touch_p50_s,
        "batch_first_touch_p95_s": figures.first_touch_p95_s,
        "batch_first_sight_to_touch_p50_s": figures.first_sight_to_touch_p50_s,
    }
    return {k: v for k, v in values.items() if v is not None}


def leads_materialization(slug: str, cumulative: Mapping[str, Any], changed: Mapping[str, int],
                          batch: Mapping[str, Any], recorded_by: str) -> AssetMaterialization:
    what = ", ".join(f"{k.removeprefix('changed_')} {v:+d}" for k, v in changed.items()) or "no change in counts"
    return AssetMaterialization(
        asset_key=LEADS_KEY, partition=slug,
        description=f"{recorded_by}: {what}",
        metadata={**cumulative, **changed, **batch, "recorded_by": recorded_by},
    )


class LeadsHistory:
    """Records `leads` points for shops."""

    def __init__(self, db, instance: DagsterInstance | None = None):
        self.db = db
        self._instance = instance
        self._known: set[str] = set()
        self._tenant_ids: dict[str, int] = {}

    @property
    def instance(self) -> DagsterInstance:
        # Opened on first use: Dagster's storage may be down when the dispatcher starts,
        # and the dispatcher must start all the same (docs/reliability.md).
        if self._instance is None:
            self._instance = DagsterInstance.get()
        return self._instance

    def record_results(self, results: list[EventResult], recorded_by: str) -> int:
        """Points for the shops whose events these are (dispatcher flushes, ingest runs)."""
        self._tenant_ids.update({r.shop_slug: r.tenant_id for r in results if r.shop_slug != "?"})
        return self.record(ingest_batches(results), recorded_by, only_if_changed=False)

    def record_changed_shops(self, recorded_by: str) -> int:
        """Points for every active shop whose figures moved since its previous point."""
        tenant_ids = active_tenant_ids(self.db)
        for tenant_id in tenant_ids:
            with self.db.tenant_tx(tenant_id) as conn:
                self._tenant_ids[conn.execute("SELECT slug FROM tenants").fetchone()["slug"]] = tenant_id
        slugs = {slug: {} for slug, tid in self._tenant_ids.items() if tid in tenant_ids}
        return self.record(slugs, recorded_by, only_if_changed=True)

    def record(self, batches: Mapping[str, Mapping[str, Any]], recorded_by: str, *, only_if_changed: bool) -> int:
        if not batches:
            return 0
        self._ensure_partitions(sorted(batches))
        now = dt.datetime.now(dt.timezone.utc)
        previous = self._previous_points(set(batches))  # read each time: several processes record points
        recorded = 0
        for slug, batch in sorted(batches.items()):
            point = self._point(slug, dict(batch), now, recorded_by, only_if_changed, previous.get(slug))
            if point is not None:
                self.instance.report_runless_asset_event(point)
                recorded += 1
        return recorded

    def _point(self, slug: str, batch: dict, now: dt.datetime, recorded_by: str, only_if_changed: bool,
               previous: dict[str, Any] | None) -> AssetMaterialization | None:
        new_lead_ids = batch.pop("new_lead_ids", [])
        tenant_id = self._tenant_ids.get(slug)
        if tenant_id is None:
            with self.db.system_tx() as conn:
                tenant_id = conn.execute("SELECT tenant_id_for_slug(%s) AS id", (slug,)).fetchone()["id"]
        if tenant_id is None:
            return None  # the shop was deactivated meanwhile
        with self.db.tenant_tx(tenant_id) as conn:
            cumulative = cumulative_figures(shop_stats(conn, now))
            if new_lead_ids:
                batch.update(batch_latency_figures(lead_figures(conn, now, lead_ids=new_lead_ids)))
        if only_if_changed and previous is not None and all(
                previous.get(k) == cumulative.get(k) for k in CUMULATIVE_KEYS):
            return None
        return leads_materialization(slug, cumulative, changes_since(previous, cumulative), batch, recorded_by)

    def _previous_points(self, slugs: set[str]) -> dict[str, dict[str, Any]]:
        """Each shop's figures at its latest point, in two queries however many shops
        (Dagster's storage opens a connection per query)."""
        latest = self.instance.get_latest_storage_id_by_partition(
            AssetKey(LEADS_KEY), DagsterEventType.ASSET_MATERIALIZATION, partitions=slugs)
        if not latest:
            return {}
        records = self.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(LEADS_KEY), storage_ids=list(latest.values())),
            limit=len(latest)).records
        return {r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()
                                  if k in CUMULATIVE_KEYS} for r in records}

    def _ensure_partitions(self, slugs: list[str]) -> None:
        missing = [s for s in slugs if s not in self._known]
        if missing:
            existing = set(self.instance.get_dynamic_partitions(shop_partitions.name))
            new = [s for s in missing if s not in existing]
            if new:
                self.instance.add_dynamic_partitions(shop_partitions.name, new)
            self._known.update(missing)


class BackgroundRecorder:
    """Records points on a thread of its own, so the dispatcher's claim loop never waits
    for the figures (a shop's cumulative figures read all its leads: tens of milliseconds
    for a year of a busy shop). Results handed over while a pass is running are recorded
    together on the next pass; at exit, what is pending is drained for up to DRAIN_S."""

    DRAIN_S = 20.0

    def __init__(self, history: LeadsHistory, recorded_by: str):
        self.history, self.recorded_by = history, recorded_by
        self._pending: list[EventResult] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._loop, name="leads-history", daemon=True).start()
        atexit.register(self.wait, self.DRAIN_S)

    def submit(self, results: list[EventResult]) -> None:
        with self._lock:
            self._pending.extend(results)
            self._idle.clear()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until everything submitted is recorded; False if `timeout` ran out."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                try:
                    self.history.record_results(batch, self.recorded_by)
                except Exception:  # noqa: BLE001 - the next pass records the shops' figures again
                    log.exception("could not record leads history points")
            with self._lock:
                if not self._pending:
                    self._idle.set()
