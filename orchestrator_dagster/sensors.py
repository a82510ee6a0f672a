"""The inbox sensor: the safety net under the fast path.

The dispatcher (lead_orchestrator/dispatcher.py) takes events the moment they are
committed. While a dispatcher is alive, events still waiting after INBOX_GRACE (it is
behind, or failed on them) get an ingest run from this sensor; with no dispatcher
alive, every waiting event does. Run keys are deterministic (the highest waiting id),
so a tick that sees the same backlog twice requests nothing new.
"""

import datetime as dt

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from orchestrator_dagster.jobs import ingest_job
from orchestrator_dagster.resources import DatabaseResource

# Fresh events belong to the fast path; the sensor steps in for older ones.
INBOX_GRACE = dt.timedelta(seconds=5)
# Events still pending this long after a run was requested for them are asked for again.
RETRY_AFTER = dt.timedelta(seconds=60)


@sensor(job=ingest_job, minimum_interval_seconds=5, default_status=DefaultSensorStatus.RUNNING)
def inbox_sensor(context: SensorEvaluationContext, database: DatabaseResource):
    with database.database().system_tx() as conn:
        alive = conn.execute("SELECT fast_path_alive() AS alive").fetchone()["alive"]
        grace = INBOX_GRACE if alive else dt.timedelta(0)
        backlog = conn.execute("SELECT * FROM inbox_backlog_older_than(%s)", (grace,)).fetchone()
    if not backlog["pending"]:
        return SkipReason("inbox is empty")
    max_id = backlog["max_id"]
    last_requested = int(context.cursor or 0)
    if max_id > last_requested:
        context.update_cursor(str(max_id))
        return RunRequest(run_key=f"inbox-through-{max_id}")
    # Nothing new, yet events still wait (released for retry, or a run died): ask again,
    # at most once per RETRY_AFTER, with a key that names the retry window.
    waited = dt.datetime.now(dt.timezone.utc) - backlog["oldest"]
    if waited < RETRY_AFTER:
        return SkipReason(f"{backlog['pending']} events are being processed")
    bucket = int(dt.datetime.now(dt.timezone.utc).timestamp() // RETRY_AFTER.total_seconds())
    return RunRequest(run_key=f"inbox-retry-{max_id}-{bucket}")
