"""Alert sensors: a failed run, a failing health check. Both post a Slack-compatible
webhook and/or email through SendGrid (lead_orchestrator/services/alerts.py), configured by
environment variable and off while unset:

  ALERT_WEBHOOK_URL       incoming-webhook URL (Slack, or anything taking its JSON)
  ALERT_EMAIL_TO          comma-separated addresses
  ALERT_EMAIL_FROM        the verified sender of the deployment's SendGrid account
  ALERT_SENDGRID_API_KEY  that account's API key (SENDGRID_API_BASE_URL is honoured)
  DAGSTER_UI_URL          base of the links in alerts (default http://127.0.0.1:3000)

One alert per condition until it clears:
- a check condition is (check, shop); the check sensor keeps the open ones in its cursor,
  announces each when it appears and once more when it clears;
- a run condition is (job, shops it was run for); a failure is announced when the
  previous finished run of the same condition did not fail, so a job failing every four
  minutes is announced once, and again only after it has succeeded in between.
"""

import datetime as dt
import json
import os
from urllib.parse import quote

from dagster import (AssetCheckKey, AssetKey, ConfigurableResource, DagsterRunStatus, DefaultSensorStatus, EnvVar,
                     RunFailureSensorContext, RunsFilter, SensorEvaluationContext, SkipReason, run_failure_sensor,
                     sensor)

from lead_orchestrator.services.alerts import Alert, AlertChannels, changes, send
from lead_orchestrator.services.health import CHECK_NAMES
from lead_orchestrator.settings import SENDGRID_REAL_URL
from orchestrator_dagster.assets import LEADS_KEY

DEFAULT_UI_URL = "http://127.0.0.1:3000"
# No evaluation of the checks for this long means the health sensor itself is down.
STALE_AFTER = dt.timedelta(minutes=15)
_FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


class AlertsResource(ConfigurableResource):
    """Where alerts go. Built by `alerts_from_environment()`: a value that is set comes in as
    an EnvVar, so the UI's resource page shows the variable's name, never a URL or key."""

    webhook_url: str | None = None
    email_to: str | None = None
    email_from: str | None = None
    sendgrid_api_key: str | None = None
    sendgrid_api_base_url: str | None = None
    ui_url: str = DEFAULT_UI_URL

    def channels(self) -> AlertChannels:
        to = tuple(a.strip() for a in (self.email_to or "").split(",") if a.strip())
        return AlertChannels(webhook_url=self.webhook_url or None, email_to=to, email_from=self.email_from or None,
                             sendgrid_api_key=self.sendgrid_api_key or None,
                             sendgrid_base_url=self.sendgrid_api_base_url or SENDGRID_REAL_URL)

    def link(self, path: str) -> str:
        return self.ui_url.rstrip("/") + path


def alerts_from_environment() -> AlertsResource:
    def env(name: str):
        return EnvVar(name) if os.environ.get(name) else None

    return AlertsResource(webhook_url=env("ALERT_WEBHOOK_URL"), email_to=env("ALERT_EMAIL_TO"),
                          email_from=env("ALERT_EMAIL_FROM"), sendgrid_api_key=env("ALERT_SENDGRID_API_KEY"),
                          sendgrid_api_base_url=env("SENDGRID_API_BASE_URL"),
                          ui_url=os.environ.get("DAGSTER_UI_URL") or DEFAULT_UI_URL)


# --- failing checks -----------------------------------------------------------------------

def check_link(alerts: AlertsResource, check_name: str) -> str:
    return alerts.link(f"/assets/{quote(LEADS_KEY)}?view=checks&checkDetail={quote(check_name)}")


def failing_conditions(instance, alerts: AlertsResource, now: dt.datetime) -> dict[str, Alert]:
    """Every (check, shop) failing in the latest evaluation of each check, as alerts."""
    keys = [AssetCheckKey(AssetKey(LEADS_KEY), name) for name in CHECK_NAMES]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    current: dict[str, Alert] = {}
    latest = max((r.create_timestamp for r in records.values()), default=None)
    # Never evaluated yet: a new deployment whose health sensor has not ticked. Not an alert.
    if latest is not None and now.timestamp() - latest > STALE_AFTER.total_seconds():
        since = dt.datetime.fromtimestamp(latest, dt.timezone.utc)
        current["checks:not_evaluated"] = Alert(
            "checks:not_evaluated", "Health checks on leads not evaluated recently (is health_checks_sensor running?)",
            "all shops", f"no evaluation for {STALE_AFTER.total_seconds() / 60:.0f} min or more", since,
            alerts.link("/automation"), "WARN")
    for key, record in records.items():
        evaluation = record.evaluation
        if evaluation is None or evaluation.passed:
            continue
        link = check_link(alerts, key.name)
        problems = evaluation.metadata.get("problems")
        for problem in (problems.value if problems is not None else []):
            since = dt.datetime.fromisoformat(problem["since"]) if problem.get("since") else None
            condition = f"check:{key.name}:{problem['shop']}"
            current[condition] = Alert(condition, f"Check {key.name} failed", problem["shop"], problem["reason"],
                                       since, link, problem.get("severity", "ERROR"))
        if not problems:
            condition = f"check:{key.name}:all shops"
            current[condition] = Alert(condition, f"Check {key.name} failed", "all shops",
                                       evaluation.description or "no detail",
                                       dt.datetime.fromtimestamp(record.create_timestamp, dt.timezone.utc), link)
    return current


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING,
        description="Alerts (webhook/email) once per failing check and shop, and once when it clears.")
def check_alert_sensor(context: SensorEvaluationContext, alerts: AlertsResource):
    channels = alerts.channels()
    if not channels.enabled:
        return SkipReason("alerts are off: set ALERT_WEBHOOK_URL and/or ALERT_EMAIL_TO (see docs/operations.md)")
    now = dt.datetime.now(dt.timezone.utc)
    open_conditions: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    current = failing_conditions(context.instance, alerts, now)
    appeared, cleared = changes(open_conditions, current)
    announced, undelivered = [], []
    for alert in appeared:
        if send(channels, alert):
            open_conditions[alert.key] = {"what": alert.what, "shop": alert.shop, "link": alert.link,
                                          "since": alert.since.isoformat() if alert.since else None}
            announced.append(alert.key)
        else:
            undelivered.append(alert.key)  # not recorded: the next tick tries again
    for key in cleared:
        info = open_conditions.pop(key)
        send(channels, Alert(key, info["what"], info["shop"], "no longer failing",
                             dt.datetime.fromisoformat(info["since"]) if info.get("since") else None,
                             info["link"], cleared=True))
    context.update_cursor(json.dumps(open_conditions, sort_keys=True))
    return SkipReason(f"{len(current)} failing conditions; announced {announced or 'none'}; "
                      f"cleared {cleared or 'none'}" + (f"; could not deliver {undelivered}" if undelivered else ""))


# --- failed runs --------------------------------------------------------------------------

def run_scope(run) -> str:
    """Which shops a run was for: the `shops` of its op config, else all of them."""
    for op in (run.run_config or {}).get("ops", {}).values():
        shops = ((op or {}).get("config") or {}).get("shops")
        if shops:
            return ", ".join(sorted(shops))
    return "all shops"


def already_failing(instance, run) -> bool:
    """Did the previous finished run of the same job and scope fail too?"""
    records = instance.get_run_records(filters=RunsFilter(job_name=run.job_name, statuses=_FINISHED), limit=50)
    mine = next((r for r in records if r.dagster_run.run_id == run.run_id), None)
    for record in records:
        if record.dagster_run.run_id == run.run_id or run_scope(record.dagster_run) != run_scope(run):
            continue
        if mine is not None and record.create_timestamp >= mine.create_timestamp:
            continue  # a later run
        return record.dagster_run.status == DagsterRunStatus.FAILURE
    return False


def run_failure_alert(context: RunFailureSensorContext, alerts: AlertsResource) -> Alert:
    run = context.dagster_run
    steps = context.get_step_failure_events()
    error = steps[0].event_specific_data.error if steps and steps[0].event_specific_data else None
    while error is not None and error.cause is not None:  # Dagster wraps the op's own exception
        error = error.cause
    detail = (error.message.strip() if error else context.failure_event.message or "failed")[:500]
    if steps:
        detail = f"step {steps[0].step_key}: {detail}"
    partition = run.tags.get("dagster/partition")
    what = f"Run of {run.job_name} failed" + (f" (partition {partition})" if partition else "")
    record = context.instance.get_run_record_by_id(run.run_id)
    failed_at = record.end_time if record and record.end_time else dt.datetime.now(dt.timezone.utc).timestamp()
    return Alert(f"run:{run.job_name}:{run_scope(run)}", what, run_scope(run), detail,
                 dt.datetime.fromtimestamp(failed_at, dt.timezone.utc), alerts.link(f"/runs/{run.run_id}"))


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING,
                    description="Alerts (webhook/email) when a job of this code location fails "
                                "(once per failing streak).")
def run_failure_alert_sensor(context: RunFailureSensorContext, alerts: AlertsResource):
    channels = alerts.channels()
    if not channels.enabled:
        return
    if already_failing(context.instance, context.dagster_run):
        context.log.info(f"{context.dagster_run.job_name} was already failing: no new alert")
        return
    send(channels, run_failure_alert(context, alerts))
