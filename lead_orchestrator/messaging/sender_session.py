"""Ties a send reservation to the life of the process that made it.

Each process that sends keeps one database session of its own (per database) holding the
advisory lock (SENDER_LOCK_CLASS, its backend pid). A reservation records that pid
(`touches.reserved_by`). PostgreSQL releases the lock the moment the session ends, and a
session ends with its process (a crash, a kill, a lost machine: the server notices the
closed connection), so "the reservation's pid holds no sender lock" means "its sender is
gone" and the reservation can be turned `unknown` and resolved at once
(`live_sender_pids()` in sql/0010_send_outcomes.sql).

If the session cannot be opened (database down), reservations are made without an owner
and only the 2-minute staleness rule recovers them.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import psycopg

from lead_orchestrator.settings import connection_name

log = logging.getLogger(__name__)

SENDER_LOCK_CLASS = 4242010  # matches live_sender_pids() in sql/0010_send_outcomes.sql
# A session that is used rarely is checked at most this often before its pid is handed out.
CHECK_EVERY_SECONDS = 2.0


class SenderSession:
    def __init__(self, url: str):
        self._url = url
        self._conn: psycopg.Connection | None = None
        self._pid: int | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def pid(self) -> int | None:
        """The backend pid that names this process's reservations (None: no session)."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._open()
                elif time.monotonic() - self._checked > CHECK_EVERY_SECONDS:
                    self._conn.execute("SELECT 1")
                    self._checked = time.monotonic()
            except psycopg.Error:
                self._close()
                try:
                    self._open()
                except psycopg.Error as exc:
                    log.warning("no sender session (%s): reservations fall back to the staleness rule", exc)
                    return None
            return self._pid

    def _open(self) -> None:
        conn = psycopg.connect(self._url, autocommit=True, application_name=connection_name("lead-sender"), connect_timeout=5)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (SENDER_LOCK_CLASS, pid))
        self._conn, self._pid, self._checked = conn, pid, time.monotonic()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn, self._pid = None, None

    def close(self) -> None:
        with self._lock:
            self._close()


_sessions: dict[tuple[int, str], SenderSession] = {}
_sessions_lock = threading.Lock()


def sender_pid(db) -> int | None:
    """This process's sender pid for `db` (a session opened on first use, kept open)."""
    key = (os.getpid(), db.url)  # a forked child needs its own session
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = SenderSession(db.url)
    return session.pid()
