"""Health checks on the `leads` asset: one check per condition, each over every shop,
naming each failing shop with its reason and since when (the rules and figures are in
lead_orchestrator/services/health.py).

Why one check per condition rather than checks partitioned by shop: partitioned checks
are a preview in Dagster 1.13; the asset's health (and the catalog's red/yellow) follows
the latest evaluation of each check, which for a partitioned check is whichever shop was
evaluated last, so a failing shop would turn green when the next shop passed; and a
partition's result is cleared each time that shop's `leads` partition materializes. An
unpartitioned check is red while any shop fails, and its description and metadata name
the shops: Assets › leads › Checks shows them.

How often: `health_checks_sensor` evaluates every minute inside the sensor tick and
reports the results as runless check evaluations: no run process per evaluation (a run
costs ~1 s of CPU and would put 1,440 runs a day in the run list; the poll sensor is
built the same way). It reports when a result changed, when `leads` was materialized
since its last report (a check result is shown against the asset's latest
materialization), and at least every HEARTBEAT; the retention job deletes runless
evaluations older than RUN_RETENTION_DAYS. `leads_health_checks` is the same evaluation
as an executable check, for the UI's "Execute" button (a run).
"""

import datetime as dt
import json

from dagster import (AssetCheckEvaluation, AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey,
                     DagsterInstance, DefaultSensorStatus, MetadataValue, SensorEvaluationContext, SkipReason,
                     multi_asset_check, sensor)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from lead_orchestrator.services.health import CHECK_NAMES, CheckOutcome, all_shops_health, evaluate
from lead_orchestrator.redaction import redacted_errors
from orchestrator_dagster.assets import LEADS_KEY
from orchestrator_dagster.resources import DatabaseResource

HEARTBEAT = dt.timedelta(minutes=5)

DESCRIPTIONS = {
    "first_touch_sla": "Share of each shop's qualified leads of the last hour touched within 30 s of the "
                       "estimate's creation in the CRM (target 95%; quiet-hour deferrals counted apart). ERROR.",
    "stuck_events": "Inbox events parked (waiting for CRM credentials) or dead (given up, last 7 days); "
                    "0 expected. ERROR.",
    "oldest_pending_event": "Age of each shop's oldest inbox event still waiting: WARN after 1 min, "
                            "ERROR after 5 min.",
    "crm_poll": "Backup poll health per shop: ERROR when the CRM refuses the key, WARN while its API fails.",
    "unknown_sends": "Sends with an unknown outcome (never re-sent automatically) in the last 7 days. WARN.",
}
CHECK_SPECS = [AssetCheckSpec(name, asset=LEADS_KEY, description=DESCRIPTIONS[name]) for name in CHECK_NAMES]


def check_metadata(outcome: CheckOutcome) -> dict:
    rows = "\n".join(f"| {p.slug} | {p.severity} | {_utc(p.since)} | {p.reason.replace('|', '/')} |"
                     for p in outcome.problems)
    table = f"| shop | severity | since | reason |\n|---|---|---|---|\n{rows}" if rows else "no failing shop"
    return {
        "shops_checked": outcome.shops_checked,
        "shops_failing": len(outcome.problems),
        "failing_shops": MetadataValue.md(table),
        # Read back by the alert sensor: one alert per (check, shop).
        "problems": MetadataValue.json([{"shop": p.slug, "severity": p.severity, "reason": p.reason,
                                         "since": p.since.isoformat() if p.since else None}
                                        for p in outcome.problems]),
    }


def _utc(moment: dt.datetime | None) -> str:
    return f"{moment.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC" if moment else "-"


def _severity(outcome: CheckOutcome) -> AssetCheckSeverity:
    return AssetCheckSeverity.WARN if outcome.severity == "WARN" else AssetCheckSeverity.ERROR


def evaluate_now(db, now: dt.datetime | None = None) -> list[CheckOutcome]:
    now = now or dt.datetime.now(dt.timezone.utc)
    return evaluate(all_shops_health(db, now), now)


def _latest_leads_materialization(instance: DagsterInstance):
    records = instance.fetch_materializations(AssetKey(LEADS_KEY), limit=1).records
    return records[0] if records else None


def report_health(instance: DagsterInstance, db, *, now: dt.datetime | None = None,
                  outcomes: list[CheckOutcome] | None = None) -> list[CheckOutcome]:
    """Evaluates every check and records the results as runless evaluations that target
    the latest `leads` materialization."""
    outcomes = outcomes if outcomes is not None else evaluate_now(db, now)
    latest = _latest_leads_materialization(instance)
    target = AssetCheckEvaluationTargetMaterializationData(
        storage_id=latest.storage_id, run_id=latest.run_id, timestamp=latest.timestamp) if latest else None
    for outcome in outcomes:
        instance.report_runless_asset_event(AssetCheckEvaluation(
            asset_key=AssetKey(LEADS_KEY), check_name=outcome.name, passed=outcome.passed,
            severity=_severity(outcome), description=outcome.description, metadata=check_metadata(outcome),
            target_materialization_data=target,
        ))
    return outcomes


@multi_asset_check(specs=CHECK_SPECS, description="Per-shop health of the lead pipeline (see each check).")
def leads_health_checks(database: DatabaseResource):
    with redacted_errors():  # Dagster stores a failed step's exception: never with a secret
        outcomes = evaluate_now(database.database())
    for outcome in outcomes:
        yield AssetCheckResult(asset_key=LEADS_KEY, check_name=outcome.name, passed=outcome.passed,
                               severity=_severity(outcome), description=outcome.description,
                               metadata=check_metadata(outcome))


def fingerprint(outcomes: list[CheckOutcome]) -> list:
    """What makes a result different enough to report at once: pass/fail and which shops
    fail how (not the figures, which move every minute while a shop waits)."""
    return [[o.name, o.passed, sorted([p.slug, p.severity] for p in o.problems)] for o in outcomes]


def should_report(state: dict, outcomes: list[CheckOutcome], latest_storage_id: int | None,
                  now: dt.datetime) -> bool:
    if state.get("fingerprint") != fingerprint(outcomes):
        return True
    if latest_storage_id is not None and latest_storage_id != state.get("target"):
        return True
    reported_at = state.get("reported_at")
    return reported_at is None or now.timestamp() - reported_at >= HEARTBEAT.total_seconds()


def summary(outcomes: list[CheckOutcome]) -> str:
    failing = [o for o in outcomes if not o.passed]
    if not failing:
        return f"all {len(outcomes)} checks pass for {outcomes[0].shops_checked if outcomes else 0} shops"
    return "; ".join(f"{o.name} {o.severity}: {', '.join(p.slug for p in o.problems)}" for o in failing)


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING,
        description="Evaluates the health checks on `leads` every minute (runless check evaluations).")
def health_checks_sensor(context: SensorEvaluationContext, database: DatabaseResource):
    now = dt.datetime.now(dt.timezone.utc)
    outcomes = evaluate_now(database.database(), now)
    state = json.loads(context.cursor) if context.cursor else {}
    latest = _latest_leads_materialization(context.instance)
    latest_id = latest.storage_id if latest else None
    if not should_report(state, outcomes, latest_id, now):
        return SkipReason(f"unchanged: {summary(outcomes)}")
    report_health(context.instance, database.database(), outcomes=outcomes)
    context.update_cursor(json.dumps({"fingerprint": fingerprint(outcomes), "target": latest_id,
                                      "reported_at": now.timestamp()}))
    return SkipReason(f"reported: {summary(outcomes)}")
