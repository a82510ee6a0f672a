"""The fast path: a long-lived worker that processes inbox events the moment they are
committed (PostgreSQL LISTEN/NOTIFY), instead of waiting for the sensor daemon's
5-second loop and a new run process (~1 s of CPU each).

It runs the same ingest code as the Dagster ingest job and claims events the same way
(SKIP LOCKED), so the two never process one event twice. If the dispatcher is down or
falls behind, events wait in the inbox and the inbox sensor launches an ingest run for
them after a short grace period: nothing is lost when the fast path fails.

Each flush records a `leads` materialization per shop in Dagster (a runless asset
event), so the per-shop history in the UI includes what the fast path did.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from lead_orchestrator.ingest import EventResult, claim_events, process_event, release_event

log = logging.getLogger(__name__)

# Each flush writes one Dagster event per shop, and Dagster's PostgreSQL storage opens a
# new connection (a new server process) for every event: at 2 s that was 1 in 7 of the
# dispatcher's CPU during a burst. The UI's history can be 10 s behind.
FLUSH_SECONDS = 10.0
ALIVE_LOCK_KEY = 4242001  # matches fast_path_alive() in sql/0005_fast_path.sql


def preload_vendor_sdks() -> None:
    """The SDKs import parts of themselves on first use; done once here, before the
    workers start, rather than by 32 workers queued on the import lock at the start of
    the first burst."""
    import sendgrid.helpers.mail  # noqa: F401
    import twilio.rest.api.v2010.account.message  # noqa: F401

    import lead_orchestrator.vendor_clients  # noqa: F401


class DagsterReporter:
    """Records the fast path's results as `leads` history points in Dagster, on a thread
    of its own (orchestrator_dagster/history.py: cumulative figures from the tables, and
    the batch's)."""

    def __init__(self, db):
        from orchestrator_dagster.history import BackgroundRecorder, LeadsHistory

        self._recorder = BackgroundRecorder(LeadsHistory(db), "dispatcher")

    def report(self, results: list[EventResult]) -> None:
        self._recorder.submit(results)

    def wait(self, timeout: float | None = None) -> bool:
        return self._recorder.wait(timeout)


class Dispatcher:
    def __init__(self, db, vendors, *, workers: int = 8, reporter: DagsterReporter | None = None,
                 claimer: str | None = None):
        self.db, self.vendors, self.workers, self.reporter = db, vendors, workers, reporter
        self.claimer = claimer or f"dispatcher-{os.getpid()}"
        self._slots = threading.BoundedSemaphore(workers)
        self._results: list[EventResult] = []
        self._lock = threading.Lock()
        self.processed = 0

    def run(self, stop: threading.Event) -> None:
        preload_vendor_sdks()
        listen = psycopg.connect(self.db.url, autocommit=True)
        listen.execute("LISTEN inbox_events")
        # Tells the inbox sensor that a fast path is alive (see fast_path_alive()).
        listen.execute("SELECT pg_advisory_lock_shared(%s)", (ALIVE_LOCK_KEY,))
        last_flush = time.monotonic()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="dispatch") as pool:
            try:
                while not stop.is_set():
                    free = self._free_slots()
                    if free:
                        claimed = self._claim(free)
                        for tenant_id, event_id in claimed:
                            pool.submit(self._process, tenant_id, event_id)
                        if not claimed:
                            # Sleep until an event is committed (or a second passes, to pick
                            # up events released for retry and to flush the report).
                            for _ in listen.notifies(timeout=1.0, stop_after=1):
                                pass
                    if time.monotonic() - last_flush > FLUSH_SECONDS:
                        self.flush()
                        last_flush = time.monotonic()
            finally:
                listen.close()
        self.flush()

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
        try:
            claimed = claim_events(self.db, self.claimer, limit=free)
        except psycopg.Error:
            log.exception("could not claim events; retrying")
            claimed = []
        for _ in range(free - len(claimed)):
            self._slots.release()
        return claimed

    def _process(self, tenant_id: int, event_id: int) -> None:
        try:
            result = process_event(self.db, self.vendors, tenant_id, event_id)
        except Exception:  # noqa: BLE001 - released for the next claim (or the safety net)
            log.exception("event %s of tenant %s failed", event_id, tenant_id)
            release_event(self.db, tenant_id, event_id, "unexpected error in the dispatcher (see its log)")
            return
        finally:
            self._slots.release()
        with self._lock:
            self._results.append(result)
            self.processed += 1

    def flush(self) -> None:
        with self._lock:
            results, self._results = self._results, []
        if results and self.reporter is not None:
            try:
                self.reporter.report(results)
            except Exception:  # noqa: BLE001 - reporting must never stop sending
                log.exception("could not record leads materializations in Dagster")
