"""Database access: a connection pool whose connections act as role `lead_app`, so
row-level security applies, and transactions that name their tenant.

`tenant_tx(tenant_id)` is the only way application code reaches tenant data;
`system_tx()` has no tenant and can only call the SECURITY DEFINER functions that
return identifiers across tenants. Admin work (migrations, the shops CLI) uses
`admin_connect()`, which keeps the owner's role.

Database restarts: a connection error flushes every dead idle connection from the pool at
once (so the next transaction gets a fresh one, not the next dead one), and the pool
gives up a failed reconnection after RECONNECT_TIMEOUT_S and starts again on demand (its
own backoff would otherwise leave it asleep for half a minute after a 30-second outage).
A `Database(fail_fast=True)` (the receiver) also refuses at once while the database is
known to be unreachable, instead of waiting for a connection that cannot come
(`Availability`); a background thread probes until it answers again.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from lead_orchestrator import redaction
from lead_orchestrator.settings import connection_name
from lead_orchestrator.store.secret_box import SecretBox, SecretKeyError

log = logging.getLogger(__name__)
T = TypeVar("T")
# psycopg_pool warns at every failed connection attempt and every dead connection it
# drops: a line a second through an outage. The dispatcher and Availability below log
# the outage once when it starts and once when it ends; the pool's own errors still show.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

APP_ROLE = "lead_app"
# How long the pool keeps retrying a connection it could not open before it gives up and
# waits for the next request to try again. psycopg_pool's default (5 minutes, delays
# doubling from 1 s) can leave it sleeping for ~30 s after the database is back.
RECONNECT_TIMEOUT_S = 2.0
# SQLSTATEs that mean "this server is going away or not accepting connections yet".
_SERVER_GOING_AWAY = ("57P01", "57P02", "57P03")  # admin_shutdown, crash_shutdown, cannot_connect_now


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` says the database could not be reached or the connection died
    (worth a reconnect), as opposed to a statement that failed on a working connection
    (a deadlock, a lock timeout and a cancelled query are OperationalErrors too)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, (PoolClosed, TooManyRequests)):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SERVER_GOING_AWAY


def short_reason(exc: BaseException) -> str:
    """The first line of an error, for one-line log messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def libpq_url(url: str) -> str:
    """psycopg wants a plain postgresql:// URL; accept SQLAlchemy-style driver suffixes."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    return f"{'postgresql' if base == 'postgres' else base}{sep}{rest}"


def sqlalchemy_psycopg2_url(url: str) -> str:
    """Dagster's storage goes through SQLAlchemy; name psycopg2 explicitly (SQLAlchemy 2.1
    would otherwise pick psycopg 3, which dagster-postgres does not support)."""
    return "postgresql+psycopg2://" + libpq_url(url).partition("://")[2]


def typed_rows(conn: psycopg.Connection, row_type: type[T], query: str, params: Any = None) -> psycopg.Cursor[T]:
    """The query's rows as `row_type` (a dataclass named like the columns it selects)."""
    return conn.cursor(row_factory=class_row(row_type)).execute(query, params)


def _act_as_app_role(conn: psycopg.Connection) -> None:
    conn.execute(f"SET ROLE {APP_ROLE}")
    conn.commit()


class NotAppRole(RuntimeError):
    pass


def _require_app_role(row) -> None:
    # RLS binds only roles that do not own the tables: a pooled connection whose role
    # was reset (RESET ROLE in some bug) would see every tenant, so refuse it.
    role = row["role"] if isinstance(row, dict) else row[-1]
    if role != APP_ROLE:
        raise NotAppRole(f"this connection acts as {role!r}, not {APP_ROLE!r}: row-level security would not apply")


@contextmanager
def _dropped_if_not_app_role(conn: psycopg.Connection) -> Iterator[None]:
    try:
        yield
    except NotAppRole:
        conn.close()  # the pool discards a closed connection instead of handing it out again
        raise


class DatabaseUnavailable(psycopg.OperationalError):
    """Raised at once, without trying, while the database is known to be unreachable."""


class Availability:
    """Whether the database is known to be reachable, for a process that must answer at
    once rather than wait (the receiver answers 503 in milliseconds, not after a pool
    timeout). The first connection error marks it down and starts a probe thread that
    connects every PROBE_MIN_S..PROBE_MAX_S (capped backoff); when a probe succeeds,
    `on_back` runs (the pool drops its dead connections) and it is up again. A pool
    timeout alone only starts a probe: it may mean a busy pool, not a dead database.
    One log line per change of state."""

    PROBE_MIN_S = 0.25
    PROBE_MAX_S = 2.0
    PROBE_CONNECT_TIMEOUT_S = 2  # libpq's minimum

    def __init__(self, url: str, *, on_back: Callable[[], None] | None = None):
        self._url = url
        self._on_back = on_back
        self._lock = threading.Lock()
        self._probing = False
        self._closed = False
        self._down_since: float | None = None
        self.up = True

    def check(self) -> None:
        """Raises DatabaseUnavailable while the database is known to be down."""
        if not self.up:
            raise DatabaseUnavailable("the database is unreachable; not trying until it answers again")

    def failed(self, exc: BaseException) -> None:
        """Reports a connection error seen by a caller."""
        if not is_connection_error(exc) or isinstance(exc, DatabaseUnavailable):
            return
        with self._lock:
            if not isinstance(exc, PoolTimeout):
                self._mark_down(exc)
            if self._probing or self._closed:
                return
            self._probing = True
        threading.Thread(target=self._probe_until_up, name="db-availability-probe", daemon=True).start()

    def close(self) -> None:
        self._closed = True

    def _mark_down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            log.warning("database unreachable (%s): answering 'unavailable' at once until it is back",
                        short_reason(exc))

    def _probe_until_up(self) -> None:
        delay = self.PROBE_MIN_S
        while not self._closed:
            try:
                with psycopg.connect(self._url, connect_timeout=self.PROBE_CONNECT_TIMEOUT_S,
                                     application_name=connection_name("availability-probe")) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                with self._lock:
                    self._mark_down(exc)
                time.sleep(delay)
                delay = min(delay * 2, self.PROBE_MAX_S)
                continue
            if not self.up and self._on_back is not None:
                self._on_back()  # before answering again: no request gets a dead connection
            with self._lock:
                self._probing = False
                if not self.up:
                    self.up = True
                    log.warning("database reachable again after %.1f s", time.monotonic() - self._down_since)
            return


class Database:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, name: str = "lead",
                 timeout: float = 10.0, fail_fast: bool = False, box: SecretBox | None = None):
        """`timeout`: how long a transaction waits for a pooled connection. `fail_fast`:
        refuse at once while the database is known to be unreachable (see Availability).
        `box`: the keys to the shop secrets stored in this database, given by whoever
        opens it (the process's settings decide them; nothing here reads them)."""
        self.url = libpq_url(url)
        self._box = box
        redaction.register(urlsplit(self.url).password)  # a password in the URL never reaches a log
        self.pool = ConnectionPool(
            self.url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "application_name": connection_name(name)},
            configure=_act_as_app_role,
            open=False,
            name=name,  # the pool's own log lines say whose pool it is
            timeout=timeout,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
        )
        self.availability = Availability(self.url, on_back=self.drop_dead_connections) if fail_fast else None
        self._flush_lock = threading.Lock()
        self._last_flush = 0.0

    @property
    def box(self) -> SecretBox:
        """The keys to this database's stored secrets (a shop's credentials)."""
        if self._box is None:
            raise SecretKeyError("this process opened the database without the encryption keys "
                                 "(Database(box=...)), so it cannot read shop credentials")
        return self._box

    def open(self, wait: bool = True) -> "Database":
        self.pool.open(wait=wait, timeout=10)
        return self

    def close(self) -> None:
        if self.availability is not None:
            self.availability.close()
        self.pool.close()

    def connection_failed(self, exc: BaseException) -> None:
        """Called with any connection error, including ones seen outside the pool (a
        LISTEN connection): the pool's idle connections are likely dead too."""
        if not is_connection_error(exc):
            return
        if self.availability is not None:
            self.availability.failed(exc)
        if not isinstance(exc, (PoolTimeout, DatabaseUnavailable)):
            self.drop_dead_connections(at_most_every_s=1.0)

    def drop_dead_connections(self, at_most_every_s: float = 0.0) -> None:
        """Tests every idle pooled connection and replaces the dead ones, all at once."""
        with self._flush_lock:
            now = time.monotonic()
            if now - self._last_flush < at_most_every_s:
                return
            self._last_flush = now
        try:
            self.pool.check()
        except Exception as exc:  # noqa: BLE001 - a closed pool, or the database still down
            log.debug("pool check: %s", short_reason(exc))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self.availability is not None:
            self.availability.check()
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            self.connection_failed(exc)
            raise

    @contextmanager
    def tenant_tx(self, tenant_id: int) -> Iterator[psycopg.Connection]:
        """A transaction in which only `tenant_id`'s rows exist."""
        with self._connection() as conn, _dropped_if_not_app_role(conn), conn.transaction():
            row = conn.execute("SELECT set_config('app.tenant_id', %s, true), current_user AS role",
                               (str(int(tenant_id)),)).fetchone()
            _require_app_role(row)
            yield conn

    @contextmanager
    def system_tx(self) -> Iterator[psycopg.Connection]:
        """A transaction with no tenant: tenant tables read as empty here."""
        with self._connection() as conn, _dropped_if_not_app_role(conn), conn.transaction():
            _require_app_role(conn.execute("SELECT current_user AS role").fetchone())
            yield conn

    def admin_connect(self, **kwargs) -> psycopg.Connection:
        """A connection with the owner's role (migrations, shop administration)."""
        return psycopg.connect(self.url, row_factory=dict_row, **kwargs)
