"""Finds the database for a command: DATABASE_URL when set, else the embedded one
under DATA_DIR (started for the command, and stopped after it unless it was already
running for another command such as `up`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres
from lead_orchestrator.settings import Settings


@contextmanager
def database_url_for(settings: Settings, *, keep_running: bool = False) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    if settings.database_url:
        yield settings.database_url, None
        return
    server = EmbeddedPostgres(settings.data_dir / "postgres").start()
    try:
        yield server.url(), server
    finally:
        if not keep_running:
            server.stop(only_if_started_here=True)
