"""The fast path: a long-lived worker that processes inbox events the moment they are
committed (PostgreSQL LISTEN/NOTIFY), instead of waiting for the sensor daemon's
5-second loop and a new run process (~1 s of CPU each).

It runs the same ingest code as the Dagster ingest job and claims events the same way
(SKIP LOCKED), so the two never process one event twice. If the dispatcher is down or
falls behind, events wait in the inbox and the inbox sensor launches an ingest run for
them after a short grace period: nothing is lost when the fast path fails.

Each flush records a `leads` materialization per shop in Dagster (a runless asset
event), so the per-shop history in the UI includes what the fast path did.

It never exits on a database connection error. When the database goes away (a restart,
a network cut) it logs one line, drops its LISTEN connection (and with it the alive lock,
so the inbox sensor stops waiting for it), and reconnects with capped backoff
(RECONNECT_MIN_S doubling to RECONNECT_MAX_S); once it has listened and claimed again it
logs one line more and carries on. Events committed meanwhile are claimed on the first
pass (it claims before it waits for a notification). Claims live under the process's
claim lease (claim_lease.py): an event being processed when the database went away is
claimable again as soon as it is back.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import psycopg

from lead_orchestrator.settings import connection_name
from lead_orchestrator.store.db import is_connection_error, short_reason
from lead_orchestrator.services.ingest import EventResult, claim_events, process_event, release_event
from lead_orchestrator.services.send_reconcile import start_send_reconciler

log = logging.getLogger(__name__)

# Each flush writes one Dagster event per shop, and Dagster's PostgreSQL storage opens a
# new connection (a new server process) for every event: at 2 s that was 1 in 7 of the
# dispatcher's CPU during a burst. The UI's history can be 10 s behind.
FLUSH_SECONDS = 10.0
ALIVE_LOCK_KEY = 4242001  # matches fast_path_alive() in sql/0005_fast_path.sql
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 2.0
# Held for the next flush when Dagster's storage cannot take them (e.g. during an outage).
MAX_UNREPORTED = 10_000


def preload_vendor_sdks() -> None:
    """The SDKs import parts of themselves on first use; done once here, before the
    workers start, rather than by 32 workers queued on the import lock at the start of
    the first burst."""
    import sendgrid.helpers.mail  # noqa: F401
    import twilio.rest.api.v2010.account.message  # noqa: F401

    import lead_orchestrator.messaging.sdk_clients  # noqa: F401


class ResultsReporter(Protocol):
    """Where the fast path's results go besides the tables: in a deployment, Dagster's
    `leads` history (orchestrator_dagster.history.BackgroundRecorder, built by the CLI).
    The dispatcher knows nothing of Dagster."""

    def submit(self, results: list[EventResult]) -> None: ...


class Dispatcher:
    def __init__(self, db, vendors, *, workers: int = 8, reporter: ResultsReporter | None = None,
                 claimer: str | None = None):
        self.db, self.vendors, self.workers, self.reporter = db, vendors, workers, reporter
        self.claimer = claimer or f"dispatcher-{os.getpid()}"
        self._slots = threading.BoundedSemaphore(workers)
        self._results: list[EventResult] = []
        self._lock = threading.Lock()
        self.processed = 0
        # As far as the dispatcher knows; `outages` counts the times it was lost.
        self.database_up = True
        self.outages = 0
        self._lost_at = 0.0

    def run(self, stop: threading.Event) -> None:
        preload_vendor_sdks()
        start_send_reconciler(self.db, self.vendors, stop)  # crashed senders' reservations, unknown outcomes
        listen: psycopg.Connection | None = None
        delay = RECONNECT_MIN_S
        last_flush = time.monotonic()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="dispatch") as pool:
            try:
                while not stop.is_set():
                    try:
                        if listen is None:
                            listen = self._listen()
                        self._dispatch(listen, pool)
                    except psycopg.Error as exc:
                        if not is_connection_error(exc):
                            # A statement failed on a working connection (a bug, a lock
                            # timeout): not a reason to reconnect, nor to spin.
                            log.exception("could not claim events; trying again in a second")
                            stop.wait(1.0)
                            continue
                        self._lost(exc)
                        listen = _closed(listen)
                        stop.wait(delay)
                        delay = min(delay * 2, RECONNECT_MAX_S)
                        continue
                    if not self.database_up:
                        self._back()
                    delay = RECONNECT_MIN_S
                    if self.database_up and time.monotonic() - last_flush > FLUSH_SECONDS:
                        self.flush()
                        last_flush = time.monotonic()
            finally:
                _closed(listen)
        self.flush()

    def _listen(self) -> psycopg.Connection:
        """The connection that wakes the dispatcher and tells the inbox sensor it is alive."""
        listen = psycopg.connect(self.db.url, autocommit=True, application_name=connection_name("dispatcher-listen"),
                                 connect_timeout=5)
        try:
            listen.execute("LISTEN inbox_events")
            # Tells the inbox sensor that a fast path is alive (see fast_path_alive()).
            listen.execute("SELECT pg_advisory_lock_shared(%s)", (ALIVE_LOCK_KEY,))
        except BaseException:
            listen.close()
            raise
        return listen

    def _dispatch(self, listen: psycopg.Connection, pool: ThreadPoolExecutor) -> None:
        """One pass: claim for the idle workers, or wait (briefly) for a notification."""
        free = self._free_slots()
        if free:
            claimed = self._claim(free)
            for tenant_id, event_id in claimed:
                pool.submit(self._process, tenant_id, event_id)
            if not claimed:
                # Sleep until an event is committed (or a second passes, to pick up
                # events released for retry, or claimed by a process that died, and to
                # flush the report).
                for _ in listen.notifies(timeout=1.0, stop_after=1):
                    pass

    def _lost(self, exc: BaseException) -> None:
        self.db.connection_failed(exc)  # the pool's idle connections are dead too
        if self.database_up:
            self.database_up = False
            self.outages += 1
            self._lost_at = time.monotonic()
            log.warning("database connection lost (%s): reconnecting (every %.0f s at most); "
                        "events wait in the inbox", short_reason(exc), RECONNECT_MAX_S)

    def _back(self) -> None:
        self.database_up = True
        log.warning("database connection back after %.1f s: listening and claiming again",
                    time.monotonic() - self._lost_at)

    def _free_slots(self) -> int:
        """Waits (briefly) for at least one idle worker, then takes every idle one, so a
        burst is spread over the pool rather than hoarded by one claim."""
        if not self._slots.acquire(timeout=0.5):
            return 0
        free = 1
        while free < self.workers and self._slots.acquire(blocking=False):
            free += 1
        return free

    def _claim(self, free: int) -> list[tuple[int, int]]:
        claimed: list[tuple[int, int]] = []
        try:
            claimed = claim_events(self.db, self.claimer, limit=free)
        finally:
            for _ in range(free - len(claimed)):
                self._slots.release()
        return claimed

    def _process(self, tenant_id: int, event_id: int) -> None:
        try:
            result = process_event(self.db, self.vendors, tenant_id, event_id)
        except Exception as exc:  # noqa: BLE001 - released for the next claim (or the safety net)
            if is_connection_error(exc):
                log.warning("event %s of tenant %s interrupted: %s", event_id, tenant_id, short_reason(exc))
                reason, unexpected = "interrupted: the database connection was lost", False
            else:
                log.exception("event %s of tenant %s failed", event_id, tenant_id)
                reason, unexpected = "unexpected error in the dispatcher (see its log)", True
            self._give_back(tenant_id, event_id, reason, unexpected)
            return
        finally:
            self._slots.release()
        with self._lock:
            self._results.append(result)
            self.processed += 1

    def _give_back(self, tenant_id: int, event_id: int, reason: str, unexpected: bool) -> None:
        try:
            release_event(self.db, tenant_id, event_id, reason, unexpected=unexpected)
        except psycopg.Error as exc:
            # The database is away: the event stays claimed under this process's lease,
            # which the outage ended, so it is claimable again once the database is back.
            log.warning("event %s of tenant %s not given back (%s): claimable again when the database is back",
                        event_id, tenant_id, short_reason(exc))

    def flush(self) -> None:
        with self._lock:
            results, self._results = self._results, []
        if results and self.reporter is not None:
            try:
                self.reporter.submit(results)
            except Exception as exc:  # noqa: BLE001 - reporting must never stop sending
                log.warning("could not record leads materializations in Dagster (%s); trying again at the "
                            "next flush", short_reason(exc))
                with self._lock:
                    self._results[:0] = results[-MAX_UNREPORTED:]


def _closed(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass
    return None
