"""The daily report: per shop, the leads it first saw on the previous day (its own time
zone), with two charts attached to the `lead_report` materialization as PNG images in
markdown metadata: the time to first touch (from the estimate's creation in the CRM)
and the funnel leads → touched → delivered → replied → converted / opted out.

One run makes every shop's report (a run per shop would start dozens of processes at
once under the default run coordinator); `shops` and `day` in the run config make one
shop's or one day's report again. Reports live with their runs, so the retention job
removes them after RUN_RETENTION_DAYS; the figures they draw stay in the tables.

matplotlib is imported only here, inside the functions that draw (the code location is
imported by every run and sensor process and must stay light).
"""

import base64
import datetime as dt
import io
from zoneinfo import ZoneInfo

from dagster import (AssetMaterialization, AssetSpec, Config, FreshnessPolicy, MetadataValue, OpExecutionContext,
                     in_process_executor, job, op)

from lead_orchestrator.store.lead_stats import SLA_SECONDS, LeadFigures, first_touch_latencies, lead_figures
from lead_orchestrator.redaction import redacted_errors
from orchestrator_dagster.partitions import shop_partitions
from orchestrator_dagster.resources import DatabaseResource
from orchestrator_dagster.schedules import daily_schedule
from orchestrator_dagster.shop_selection import tenant_ids_to_run

REPORT_KEY = "lead_report"
# Seconds from the estimate's creation: the buckets of the histogram (the last is open).
LATENCY_BUCKETS = (0, 5, 10, 20, 30, 60, 120, 300, 900, 3600)

lead_report = AssetSpec(
    REPORT_KEY,
    partitions_def=shop_partitions,
    group_name="leads",
    kinds={"postgres"},
    deps=["leads"],
    description="Daily per-shop report: the previous day's leads, time to first touch and funnel (charts).",
    # The schedule runs daily: a report older than a day and two hours means it did not.
    freshness_policy=FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26)),
)


# --- figures -------------------------------------------------------------------------------

def previous_day(now: dt.datetime, time_zone: str) -> dt.date:
    return (now.astimezone(ZoneInfo(time_zone)) - dt.timedelta(days=1)).date()


def day_bounds(day: dt.date, time_zone: str) -> tuple[dt.datetime, dt.datetime]:
    tz = ZoneInfo(time_zone)
    start = dt.datetime.combine(day, dt.time(0), tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tz)
    return start, end


def bucket_counts(latencies: list[float]) -> list[tuple[str, int]]:
    """Latencies per bucket, labelled like "10–20s" or "30s–1m" (the last one "≥1h")."""
    labels = []
    for a, b in zip(LATENCY_BUCKETS, LATENCY_BUCKETS[1:]):
        left, right = _short(a), _short(b)
        same_unit = left[-1] == right[-1] and not (a == 0 and right[-1] != "s")
        labels.append(f"{left[:-1] if same_unit else left}–{right}")
    labels.append(f"≥{_short(LATENCY_BUCKETS[-1])}")
    counts = [0] * len(labels)
    for value in latencies:
        index = sum(1 for edge in LATENCY_BUCKETS[1:] if value >= edge)
        counts[index] += 1
    return list(zip(labels, counts))


def _short(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds >= 3600 else f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def funnel(figures: LeadFigures) -> list[tuple[str, int]]:
    return [("leads", figures.leads_total), ("touched", figures.touched), ("delivered", figures.delivered),
            ("replied", figures.replied), ("converted", figures.converted), ("opted out", figures.opted_out)]


# --- charts --------------------------------------------------------------------------------

def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def latency_chart(latencies: list[float], title: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    buckets = bucket_counts(latencies)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    sla_index = LATENCY_BUCKETS.index(SLA_SECONDS)
    colors = ["#2e7d32" if i < sla_index else "#c62828" for i in range(len(buckets))]
    ax.bar([label for label, _ in buckets], [n for _, n in buckets], color=colors)
    ax.axvline(sla_index - 0.5, color="#555555", linestyle="--", linewidth=1)
    ax.text(sla_index - 0.45, ax.get_ylim()[1] * 0.92, f"{SLA_SECONDS} s SLA", fontsize=8, color="#555555")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("time from the estimate's creation to the first touch")
    ax.set_ylabel("leads")
    ax.tick_params(axis="x", labelsize=8, labelrotation=30)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def funnel_chart(figures: LeadFigures, title: str) -> bytes:
    from matplotlib.figure import Figure

    stages = funnel(figures)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    names, values = [s for s, _ in stages][::-1], [n for _, n in stages][::-1]
    bars = ax.barh(names, values, color=["#c62828", "#2e7d32", "#1565c0", "#1565c0", "#1565c0", "#455a64"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value}", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("leads")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def image_markdown(png: bytes, alt: str) -> MetadataValue:
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


# --- the job -------------------------------------------------------------------------------

def shop_report(db, tenant_id: int, now: dt.datetime, day: dt.date | None = None) -> AssetMaterialization:
    with db.tenant_tx(tenant_id) as conn:
        shop = conn.execute("SELECT slug, time_zone FROM tenants").fetchone()
        day = day or previous_day(now, shop["time_zone"])
        start, end = day_bounds(day, shop["time_zone"])
        figures = lead_figures(conn, now, first_seen_from=start, first_seen_to=end)
        latencies = first_touch_latencies(conn, first_seen_from=start, first_seen_to=end)
    slug = shop["slug"]
    p50 = f"{figures.first_touch_p50_s:.1f} s" if figures.first_touch_p50_s is not None else "-"
    p95 = f"{figures.first_touch_p95_s:.1f} s" if figures.first_touch_p95_s is not None else "-"
    share = figures.share_under_sla
    metadata = {
        "day": day.isoformat(),
        "time_zone": shop["time_zone"],
        **{k: v for k, v in figures.as_dict().items() if v is not None},
        "first_touch_chart": image_markdown(
            latency_chart(latencies, f"{slug}, {day}: {len(latencies)} leads touched; p50 {p50}, p95 {p95}\n"
                                     f"({figures.deferred_quiet_hours} deferred for quiet hours, not shown)"),
            "time to first touch"),
        "funnel_chart": image_markdown(funnel_chart(figures, f"{slug}, {day}: funnel"), "funnel"),
    }
    description = (f"{day}: {figures.leads_total} leads, {figures.touched} touched"
                   + (f", {share:.0%} within {SLA_SECONDS} s of the estimate's creation" if share is not None else ""))
    return AssetMaterialization(asset_key=REPORT_KEY, partition=slug, description=description, metadata=metadata)


class ReportConfig(Config):
    shops: list[str] = []  # empty: every active shop
    day: str = ""  # YYYY-MM-DD; empty: each shop's previous day in its own time zone


@op
@redacted_errors()
def make_daily_reports(context: OpExecutionContext, config: ReportConfig, database: DatabaseResource) -> None:
    db = database.database()
    day = dt.date.fromisoformat(config.day) if config.day else None
    tenant_ids = tenant_ids_to_run(db, config.shops)
    now = dt.datetime.now(dt.timezone.utc)
    reports = [shop_report(db, tenant_id, now, day) for tenant_id in tenant_ids]
    slugs = [r.partition for r in reports]
    known = set(context.instance.get_dynamic_partitions(shop_partitions.name))
    if missing := sorted(set(slugs) - known):
        context.instance.add_dynamic_partitions(shop_partitions.name, missing)
    for report in reports:
        context.log_event(report)
    context.log.info(f"daily reports for {len(reports)} shops")


@job(executor_def=in_process_executor, description="Makes each shop's daily lead report (charts in metadata).")
def daily_reports_job():
    make_daily_reports()


# 10:00 UTC: the previous day has ended in every US time zone (Hawaii at 00:00).
daily_reports_schedule = daily_schedule(daily_reports_job, hour=10, name="daily_reports_schedule")
