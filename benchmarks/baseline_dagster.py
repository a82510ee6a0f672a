"""The baseline for the latency benchmark: a stock Dagster sensor → job on the same
PostgreSQL. A row inserted in `baseline_events` is picked up by the sensor and the job's
op records when it started: insert → op start is what a plain Dagster design costs."""
import os

import psycopg
from dagster import DefaultSensorStatus, Definitions, OpExecutionContext, RunRequest, job, op, sensor


def _connect():
    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


@op
def record_start(context: OpExecutionContext) -> None:
    with _connect() as conn:
        conn.execute("UPDATE baseline_events SET op_started_at = clock_timestamp() WHERE id = %s",
                     (int(context.run.tags["event_id"]),))


@job
def baseline_job():
    record_start()


@sensor(job=baseline_job, minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING)
def baseline_sensor(context):
    cursor = int(context.cursor or 0)
    with _connect() as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM baseline_events WHERE id > %s ORDER BY id", (cursor,))]
    for event_id in ids:
        yield RunRequest(run_key=str(event_id), tags={"event_id": str(event_id)})
    if ids:
        context.update_cursor(str(ids[-1]))


defs = Definitions(jobs=[baseline_job], sensors=[baseline_sensor])
