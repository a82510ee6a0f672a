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
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import psycopg

from lead_orchestrator.db import APP_ROLE, libpq_url
from lead_orchestrator.inbox import NewEvent
from webhook_receiver import metrics

log = logging.getLogger(__name__)

MAX_BATCH = 256
CONNECT_TIMEOUT_S = 5


@dataclass
class _Pending:
    tenant_id: int
    event: NewEvent
    future: asyncio.Future


class InboxWriter:
    def __init__(self, database_url: str, *, max_batch: int = MAX_BATCH):
        self._url = libpq_url(database_url)
        self._max_batch = max_batch
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
        it could not be stored."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(tenant_id, event, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url, application_name="receiver-inbox-writer", connect_timeout=CONNECT_TIMEOUT_S)
            await self._conn.execute(f"SET ROLE {APP_ROLE}")
            await self._conn.commit()
            await self._conn.set_autocommit(True)  # one statement per batch: its own transaction
        return self._conn

    async def _write(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            ids = await self._insert(batch)
        except psycopg.Error as exc:
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

    async def _insert(self, batch: list[_Pending]) -> list[int | None]:
        conn = await self._connection()
        array = "[" + ",".join(item.event.batch_item(i, item.tenant_id) for i, item in enumerate(batch)) + "]"
        try:
            rows = await (await conn.execute("SELECT pos, event_id FROM store_inbox_events(%s::jsonb)",
                                             (array,))).fetchall()
        except psycopg.OperationalError:
            await conn.close()
            raise
        ids: list[int | None] = [None] * len(batch)
        for position, event_id in rows:
            ids[position] = event_id
        return ids


def _settle(item: _Pending, *, result=None, error: BaseException | None = None) -> None:
    if item.future.done():  # the request went away (client disconnected)
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
