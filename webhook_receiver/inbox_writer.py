"""Group commit for the inbox: each request hands its event to one writer task and
waits; the writer stores every waiting event with one statement (one round trip, one
commit: sql function store_inbox_events) and answers them all after COMMIT.

Under load this turns N commits into one; when idle a batch is one event, so nothing
waits for a timer. Every answer still comes after its event is committed. The writer
is an asyncio task on the server's own event loop with an async connection: a writer
*thread* would wait up to the interpreter's 5 ms GIL switch interval for every
database reply while the loop is busy, which we measured as the bottleneck.
If a batch fails, each event is retried alone, so one bad event cannot fail the
others; if the database is down, every waiting request gets the error (→ 503).

Database restarts: while the database is known to be unreachable (the Database's
`Availability`), `store` refuses at once, so the sender gets its 503 in milliseconds. A
connection that died while idle (the database restarted in between) is replaced and the
batch sent again: the statement either never ran or committed, and storing it again is
safe (what committed comes back as a duplicate, still a 2xx: it is stored). Connecting
has CONNECT_DEADLINE_S and a batch COMMIT_DEADLINE_S: past it the batch is answered 503
(its events may have been committed; the sender's retry is then a duplicate) and the
connection is dropped, so a database that hangs does not hold requests for minutes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import psycopg

from lead_orchestrator.settings import connection_name
from lead_orchestrator.store.db import APP_ROLE, Availability, DatabaseUnavailable, is_connection_error, libpq_url
from lead_orchestrator.store.inbox import NewEvent
from webhook_receiver import metrics

log = logging.getLogger(__name__)

MAX_BATCH = 256
CONNECT_TIMEOUT_S = 2  # libpq's minimum; CONNECT_DEADLINE_S below is what a request waits
CONNECT_DEADLINE_S = 1.0
COMMIT_DEADLINE_S = 5.0


class NotStoredInTime(psycopg.OperationalError):
    """The database did not answer a batch within COMMIT_DEADLINE_S."""


@dataclass
class _Pending:
    tenant_id: int
    event: NewEvent
    future: asyncio.Future


class InboxWriter:
    def __init__(self, database_url: str, *, max_batch: int = MAX_BATCH, availability: Availability | None = None):
        self._url = libpq_url(database_url)
        self._max_batch = max_batch
        self._availability = availability
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> "InboxWriter":
        self._task = asyncio.get_running_loop().create_task(self._run(), name="inbox-writer")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            await self._conn.close()

    async def store(self, tenant_id: int, event: NewEvent) -> int | None:
        """Returns the new event's id, or None for a duplicate; raises psycopg.Error when
        it could not be stored (DatabaseUnavailable at once while the database is down)."""
        if self._availability is not None:
            self._availability.check()
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(tenant_id, event, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    def _has_connection(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    async def _connection(self) -> psycopg.AsyncConnection:
        if not self._has_connection():
            try:
                self._conn = await asyncio.wait_for(self._connect(), CONNECT_DEADLINE_S)
            except TimeoutError:
                raise psycopg.OperationalError(f"no connection to the database within {CONNECT_DEADLINE_S} s") from None
        return self._conn

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(
            self._url, application_name=connection_name("receiver-inbox-writer"), connect_timeout=CONNECT_TIMEOUT_S)
        await conn.execute(f"SET ROLE {APP_ROLE}")
        await conn.commit()
        await conn.set_autocommit(True)  # one statement per batch: its own transaction
        return conn

    async def _write(self, batch: list[_Pending]) -> None:
        if self._availability is not None and not self._availability.up:
            for item in batch:  # queued before the database went away: no need to try
                _settle(item, error=DatabaseUnavailable("the database is unreachable"))
            return
        started = time.perf_counter()
        try:
            ids = await self._insert_once_more_if_idle_died(batch)
        except psycopg.Error as exc:
            if is_connection_error(exc) and self._availability is not None:
                self._availability.failed(exc)
            if len(batch) == 1 or isinstance(exc, psycopg.OperationalError):
                for item in batch:
                    _settle(item, error=exc)
                return
            log.warning("a batch of %d events failed (%s); storing them one by one", len(batch), exc)
            for item in batch:
                await self._write([item])
            return
        metrics.INBOX_COMMIT.observe(time.perf_counter() - started)
        metrics.INBOX_BATCH.observe(len(batch))
        for item, event_id in zip(batch, ids):
            _settle(item, result=event_id)

    async def _insert_once_more_if_idle_died(self, batch: list[_Pending]) -> list[int | None]:
        kept = self._has_connection()
        try:
            return await self._insert(batch)
        except psycopg.OperationalError as exc:
            if not kept or not is_connection_error(exc) or isinstance(exc, NotStoredInTime):
                raise
        # The connection kept from an earlier batch was dead (the database restarted
        # since): storing the batch again on a new one is safe, see the module's doc.
        return await self._insert(batch)

    async def _insert(self, batch: list[_Pending]) -> list[int | None]:
        conn = await self._connection()
        array = "[" + ",".join(item.event.batch_item(i, item.tenant_id) for i, item in enumerate(batch)) + "]"
        try:
            # asyncio.timeout, not wait_for: wait_for runs the statement in a task of its
            # own, two more turns of a busy event loop before the batch is answered.
            async with asyncio.timeout(COMMIT_DEADLINE_S):
                cursor = await conn.execute("SELECT pos, event_id FROM store_inbox_events(%s::jsonb)", (array,))
                rows = await cursor.fetchall()
        except TimeoutError:
            log.warning("a batch of %d events was not stored within %s s: answered 503 (the senders retry; "
                        "what did commit is then a duplicate)", len(batch), COMMIT_DEADLINE_S)
            await _close_quietly(conn)
            raise NotStoredInTime(f"the batch was not stored within {COMMIT_DEADLINE_S} s") from None
        except psycopg.OperationalError:
            await _close_quietly(conn)
            raise
        ids: list[int | None] = [None] * len(batch)
        for position, event_id in rows:
            ids[position] = event_id
        return ids


async def _close_quietly(conn: psycopg.AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass


def _settle(item: _Pending, *, result=None, error: BaseException | None = None) -> None:
    if item.future.done():  # the request went away (client disconnected)
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
