"""Jobs: ingest (inbox → leads → first touch) and touch-points (follow-ups due)."""

import datetime as dt

from dagster import Config, HourlyPartitionsDefinition, JobDefinition, OpExecutionContext, in_process_executor, job, op

from lead_orchestrator.services.ingest import claim_events, process_claimed_events
from lead_orchestrator.redaction import redacted_errors
from lead_orchestrator.services.touch_sweep import send_due_touches
from orchestrator_dagster.history import LeadsHistory
from orchestrator_dagster.resources import DatabaseResource, VendorsResource
from orchestrator_dagster.shop_selection import named_tenant_ids

CLAIM_BATCH = 200
MAX_EVENTS_PER_RUN = 5000


@op
@redacted_errors()  # Dagster stores a failed step's exception in its event log: never with a secret
def ingest_inbox_events(context: OpExecutionContext, database: DatabaseResource, vendors: VendorsResource) -> None:
    """Claims every pending inbox event (of all shops: one run, however many shops),
    processes it, and records a `leads` materialization per shop touched."""
    db = database.database()
    clients = vendors.vendors(db)
    results = []
    try:
        while len(results) < MAX_EVENTS_PER_RUN:
            claimed = claim_events(db, claimer=context.run_id, limit=CLAIM_BATCH)
            if not claimed:
                break
            results += process_claimed_events(db, clients, claimed)
    finally:
        clients.close()
    context.log.info(f"processed {len(results)} events")
    try:
        LeadsHistory(db, context.instance).record_results(results, f"ingest run {context.run_id[:8]}")
    except Exception:  # noqa: BLE001 - the events are processed; a missing point is not their failure
        context.log.exception("could not record the leads history")


# One op per job: the in-process executor saves the step subprocess (~1 s of CPU and
# seconds of latency on every run).
@job(description="Turns stored webhook/poll events into leads and sends their first touch.",
     executor_def=in_process_executor)
def ingest_job():
    ingest_inbox_events()


class FollowUpConfig(Config):
    # Empty: every active shop. An operator can backfill one shop's window alone.
    shops: list[str] = []


@op
@redacted_errors()
def send_due_follow_ups(context: OpExecutionContext, config: FollowUpConfig, database: DatabaseResource,
                        vendors: VendorsResource) -> None:
    """Sends every touch owed up to the end of this window (and not later than now).
    Owed means not sent yet: a window run twice, or backfilled, sends nothing twice."""
    window = context.partition_time_window
    now = dt.datetime.now(dt.timezone.utc)
    db = database.database()
    clients = vendors.vendors(db)
    tenant_ids = named_tenant_ids(db, config.shops)
    try:
        report = send_due_touches(db, clients, now=now, due_before=min(window.end, now), tenant_ids=tenant_ids)
    finally:
        clients.close()
    context.log.info(f"window {window.start:%Y-%m-%d %H:%M}: {dict(report)}")
    try:  # follow-ups, replies, stops and conversions since the last point, in the leads history
        LeadsHistory(db, context.instance).record_changed_shops(f"touch-point run {context.run_id[:8]}")
    except Exception:  # noqa: BLE001 - the follow-ups went out; a missing point is not their failure
        context.log.exception("could not record the leads history")


def build_touchpoints_job(windows: HourlyPartitionsDefinition) -> JobDefinition:
    """The follow-up job over the deployment's windows (their first day is a setting)."""

    @job(partitions_def=windows, executor_def=in_process_executor,
         description="Sends the follow-ups that are due, respecting send windows.")
    def touchpoints_job():
        send_due_follow_ups()

    return touchpoints_job
