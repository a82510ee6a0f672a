"""Sensors: the inbox sensor (the safety net under the fast path) and the poll sensor
(below: the 30-second backup poll that feeds the inbox).

The dispatcher (lead_orchestrator/runtime/dispatcher.py) takes events the moment they are
committed. With no dispatcher alive, every waiting event gets an ingest run from this
sensor; with one alive, only events waiting longer than INBOX_GRACE (it failed on them
or stalled), or than BUSY_GRACE while it is working through a burst. Run keys are deterministic (the highest waiting id),
so a tick that sees the same backlog twice requests nothing new.
"""

import datetime as dt
import functools

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from lead_orchestrator.services.poll import PollConfig, Shard, new_http_client, poll_cycle
from lead_orchestrator.services.shop_clients import Vendors
from lead_orchestrator.store.db import Database
from lead_orchestrator.store.secret_box import SecretBox, parse_keys
from lead_orchestrator.settings import Settings
from orchestrator_dagster.jobs import ingest_job
from orchestrator_dagster.resources import DatabaseResource, VendorsResource

# Fresh events belong to the fast path; the sensor steps in for older ones.
INBOX_GRACE = dt.timedelta(seconds=5)
# While the dispatcher is visibly working through a queue (it claimed something within
# INBOX_GRACE), a run would only compete with it for CPU: wait longer.
BUSY_GRACE = dt.timedelta(seconds=30)
# Events still pending this long after a run was requested for them are asked for again.
RETRY_AFTER = dt.timedelta(seconds=60)


@sensor(job=ingest_job, minimum_interval_seconds=5, default_status=DefaultSensorStatus.RUNNING)
def inbox_sensor(context: SensorEvaluationContext, database: DatabaseResource):
    with database.database().system_tx() as conn:
        alive = conn.execute("SELECT fast_path_alive() AS alive").fetchone()["alive"]
        progressing = alive and conn.execute("SELECT fast_path_progressing(%s) AS p",
                                             (INBOX_GRACE,)).fetchone()["p"]
        grace = BUSY_GRACE if progressing else INBOX_GRACE if alive else dt.timedelta(0)
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


# --- the backup poll ---------------------------------------------------------------
# A sensor, not a schedule: Dagster cron has minute resolution. Each shop has a slot in
# the 30-second cycle (services/poll.py); the sensor ticks every 5 seconds (the daemon's
# own pace) and polls the shops whose slot has come, so the cycle's requests are spread
# over it instead of bursting at its start. It polls inside the tick instead of
# launching a run: a run per tick would be a fresh process every few seconds to make a
# few HTTP requests. What it finds goes to the inbox, and inbox_sensor requests one
# ingest run for all of it: zero runs when nothing changed, one when something did,
# however many shops there are. With POLL_SHARDS=N there are N poll sensors
# (poll_sensor_shard_0 … N-1), each polling the shops whose tenant id modulo N is its
# index; the claims in PostgreSQL keep two of them (or two code servers) off the same
# shop. Operators see each tick's summary in the sensor's tick history, and stop or
# start it there. More in docs/poll.md.
POLL_TICK_SECONDS = 5


@functools.cache
def _poll_http(concurrency: int):
    # Kept for the life of the code server, so connections are reused across ticks.
    return new_http_client(PollConfig(concurrency=concurrency))


@functools.cache
def _poll_database(url: str, encryption_keys: str, connections: int) -> Database:
    # The poll's own pool: its workers must not queue behind the other sensors' connections.
    return Database(url, min_size=1, max_size=connections, name="poll",
                    box=SecretBox(parse_keys(encryption_keys))).open()


_poll_vendors_cache: dict[tuple, Vendors] = {}


def _poll_vendors(resource: VendorsResource, db: Database) -> Vendors:
    """One Vendors per configuration for the life of the code server, with the poll's
    database: its clients (a Tekmetric app's token, its budget shared through the
    database) outlive a tick."""
    fresh = resource.vendors(db)
    key = (fresh.shopmonkey_base_url, fresh.twilio_base_url, fresh.sendgrid_base_url, fresh.tekmetric_base_url,
           fresh.public_base_url, fresh.secret_key, fresh.inbound_parse_domain, id(db))
    return _poll_vendors_cache.setdefault(key, fresh)


def _poll_sensor(shard: Shard, settings: Settings):
    name = "poll_sensor" if shard.count == 1 else f"poll_sensor_shard_{shard.index}"
    where = "every shop" if shard.count == 1 else f"the shops whose tenant id modulo {shard.count} is {shard.index}"

    @sensor(name=name, minimum_interval_seconds=POLL_TICK_SECONDS,
            default_status=DefaultSensorStatus(settings.poll_sensor_default_status.upper()),
            description=f"Backup poll of {where}: each shop every 30 s at its own slot, changed CRM "
                        "orders into the inbox (inbox_sensor then requests the ingest run).")
    def _poll(context: SensorEvaluationContext, database: DatabaseResource, vendors: VendorsResource):
        config = PollConfig(concurrency=settings.poll_concurrency)
        db = _poll_database(database.database_url, database.encryption_keys, settings.poll_db_connections)
        cycle = poll_cycle(db, _poll_vendors(vendors, db), http=_poll_http(config.concurrency), config=config,
                           shard=shard)
        for shop in cycle.with_outcome("unauthorized") + cycle.with_outcome("failing") + cycle.with_outcome("error"):
            context.log.warning(f"shop {shop.slug or shop.tenant_id}: {shop.outcome}: {shop.error}")
        return SkipReason(cycle.summary())

    return _poll


def build_poll_sensors(settings: Settings) -> list:
    """One poll sensor per shard (POLL_SHARDS)."""
    return [_poll_sensor(Shard(i, settings.poll_shards), settings) for i in range(settings.poll_shards)]
