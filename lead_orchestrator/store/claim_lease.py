"""Claims tied to a live session, so that a crashed claimer's events go back to the queue
within seconds instead of after the 5-minute stale-claim rule.

Each process that claims inbox events (the dispatcher, an ingest run) holds one *claim
lease*: a session-level advisory lock on a connection of its own, kept open for the life
of the process, whose number it writes into `claimed_by` ("dispatcher-123 lease:42").
PostgreSQL drops the lock when that session ends, whatever the reason (SIGKILL, a host
gone, a database restart), and `claim_inbox_events` (sql/0011_claim_leases.sql) then
takes the events back at once. The function refuses a lease that is no longer held
(SQLSTATE LO001); the claimer takes a new lease and claims again. After losing its lease
a claimer never gets it back: the events it claimed under it are claimable by anyone
(itself included), since it may have died in the middle of them. Processing an event
twice is safe (leads are upserted under a per-order lock, sending is at most once).

The lease connection needs a session of its own: it cannot go through a pooler in
transaction mode (neither can LISTEN).
"""
from __future__ import annotations

import threading

import psycopg

from lead_orchestrator.settings import connection_name
from lead_orchestrator.store.db import APP_ROLE

LEASE_LOST = "LO001"  # raised by claim_inbox_events for a lease nobody holds
CLAIM = "SELECT tenant_id, event_id FROM claim_inbox_events(%s, %s, interval '5 minutes')"
# A host that vanishes without closing its sockets: the server notices within ~30 s
# (TCP keepalive) instead of the kernel's default two hours. No effect on Unix sockets.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class ClaimLease:
    """One process's lease on one database."""

    def __init__(self, url: str):
        self._url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self.number: int | None = None

    def name(self, claimer: str) -> str:
        """`claimer` with this process's lease, taking one first if needed."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._take()
            return f"{claimer} lease:{self.number}"

    def renew(self) -> None:
        """Drops the lease (its session is gone or going) and takes a new one."""
        with self._lock:
            self._drop()
            self._take()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _take(self) -> None:
        conn = psycopg.connect(self._url, autocommit=True, application_name=connection_name("claim-lease"), connect_timeout=5,
                               **_KEEPALIVE)
        try:
            conn.execute(f"SET ROLE {APP_ROLE}")
            # The server's side of keepalive: it is the server that must notice a dead client.
            conn.execute("SELECT set_config('tcp_keepalives_idle', '10', false), "
                         "set_config('tcp_keepalives_interval', '5', false), "
                         "set_config('tcp_keepalives_count', '3', false)")
            self.number = conn.execute("SELECT take_claim_lease()").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn, self.number = None, None


_leases: dict[str, ClaimLease] = {}
_leases_lock = threading.Lock()


def lease_for(url: str) -> ClaimLease:
    """This process's lease on the database at `url` (one per process and database)."""
    with _leases_lock:
        if url not in _leases:
            _leases[url] = ClaimLease(url)
        return _leases[url]


def claim_under_lease(db, claimer: str, limit: int) -> list[tuple[int, int]]:
    """Claims up to `limit` events for `claimer` under this process's lease; renews the
    lease once if it was lost (a database restart ends every session)."""
    lease = lease_for(db.url)
    for attempt in range(2):
        try:
            with db.system_tx() as conn:
                rows = conn.execute(CLAIM, (lease.name(claimer), limit)).fetchall()
            return [(r["tenant_id"], r["event_id"]) for r in rows]
        except psycopg.Error as exc:
            if exc.sqlstate != LEASE_LOST or attempt:
                raise
            lease.renew()
    raise AssertionError("unreachable")
