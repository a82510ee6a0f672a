"""Retention: what keeps Dagster's storage and the inbox from growing forever. Daily:

- runs finished more than RUN_RETENTION_DAYS ago (default 30) are deleted with their
  event logs (Dagster itself purges only sensor and schedule ticks);
- runless health-check evaluations older than that too (health_checks_sensor reports
  them every few minutes; no run owns them, so deleting runs never removes them);
- `done` inbox events older than INBOX_RETENTION_DAYS (default 365).

Never removed: the lead history. The `leads` materializations are runless events (see
history.py) and are not touched; leads, touches and their decision log stay in the
tables.
"""

import datetime as dt

from dagster import (AssetKey, DagsterInstance, DagsterRunStatus, OpExecutionContext, RunsFilter, in_process_executor,
                     job, op)

from lead_orchestrator.store.inbox_retention import purge_done_events
from lead_orchestrator.redaction import redacted_errors
from orchestrator_dagster.assets import LEADS_KEY
from orchestrator_dagster.resources import DatabaseResource, RetentionPolicy
from orchestrator_dagster.schedules import daily_schedule

_FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
BATCH = 200


def purge_runs(instance: DagsterInstance, before: dt.datetime, *, keep_run_id: str | None = None) -> int:
    """Deletes finished runs created before `before`, with their event logs."""
    deleted = 0
    while True:
        records = instance.get_run_records(filters=RunsFilter(statuses=_FINISHED, created_before=before),
                                           limit=BATCH)
        records = [r for r in records if r.dagster_run.run_id != keep_run_id]
        if not records:
            return deleted
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
            deleted += 1


def purge_runless_check_evaluations(instance: DagsterInstance, before: dt.datetime) -> int:
    """Deletes the runless evaluations of the checks on `leads` recorded before `before`
    (the event and the row Dagster indexes it by). Dagster has no call for this; it
    goes through the event-log storage's own tables."""
    import sqlalchemy as sa
    from dagster._core.instance.utils import RUNLESS_RUN_ID
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable

    events, checks = SqlEventLogStorageTable.c, AssetCheckExecutionsTable.c
    cutoff = before.astimezone(dt.timezone.utc).replace(tzinfo=None)  # the tables hold naive UTC
    deleted = 0
    storage = instance.event_log_storage
    while True:
        with storage.index_connection() as conn:
            ids = [row[0] for row in conn.execute(
                sa.select(checks.evaluation_event_storage_id)
                .where(checks.asset_key == AssetKey(LEADS_KEY).to_string(), checks.run_id == RUNLESS_RUN_ID,
                       checks.evaluation_event_timestamp < cutoff)
                .limit(5000)).fetchall()]
            if not ids:
                return deleted
            conn.execute(AssetCheckExecutionsTable.delete().where(checks.evaluation_event_storage_id.in_(ids)))
            conn.execute(SqlEventLogStorageTable.delete().where(events.id.in_(ids), events.run_id == RUNLESS_RUN_ID,
                                                                events.dagster_event_type == "ASSET_CHECK_EVALUATION"))
        deleted += len(ids)


@op
@redacted_errors()
def purge_old_records(context: OpExecutionContext, database: DatabaseResource, retention: RetentionPolicy) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    runs_before = now - dt.timedelta(days=retention.run_retention_days)
    inbox_before = now - dt.timedelta(days=retention.inbox_retention_days)
    runs = purge_runs(context.instance, runs_before, keep_run_id=context.run_id)
    checks = purge_runless_check_evaluations(context.instance, runs_before)
    events = purge_done_events(database.database(), inbox_before)
    context.log.info(f"deleted {runs} runs and {checks} check evaluations older than {runs_before:%Y-%m-%d} "
                     f"({retention.run_retention_days} days), {events} done inbox events older than "
                     f"{inbox_before:%Y-%m-%d} ({retention.inbox_retention_days} days)")


@job(executor_def=in_process_executor,
     description="Deletes old Dagster runs and check evaluations, and old done inbox events; never lead history.")
def retention_job():
    purge_old_records()


retention_schedule = daily_schedule(retention_job, hour=9, minute=30, name="retention_schedule")
