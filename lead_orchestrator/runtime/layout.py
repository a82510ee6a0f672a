"""The production layout on one machine: `lead-orchestrator up --production`.

The processes are those of deploy/Procfile, each started from its Procfile line exactly
as written (by /bin/sh from the project folder, .venv/bin first on PATH, as honcho runs
it), so what this layout runs and tests is what a deployment runs:

- the Dagster code server as its own process; the daemon and the webserver load it
  through deploy/workspace.yaml (a `grpc_server` entry) and are started once it serves;
- the receiver: one uvicorn master with RECEIVER_WORKERS worker processes on one port
  (the master restarts a worker that dies);
- `dispatchers` copies of the dispatcher line (dispatcher-1, dispatcher-2, ...), as
  `honcho start -c dispatcher=2` or the systemd template lead-dispatcher@.service runs them.

Each process gets PGAPPNAME, so its database connections can be counted per process in
pg_stat_activity (settings.py `connection_name`); the systemd units set the same names.
"""
from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import Callable

from lead_orchestrator.runtime.supervisor import ProcessChild
from lead_orchestrator.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROCFILE = PROJECT_ROOT / "deploy" / "Procfile"
# PGAPPNAME of each Procfile process (a dispatcher's gets its number appended).
APP_NAMES = {"receiver": "lead-receiver", "dispatcher": "lead-dispatcher", "dagster-code": "dagster-code",
             "dagster-daemon": "dagster-daemon", "dagster-webserver": "dagster-webserver"}
# Started once the code server serves: loaded before it, they would hold the code location
# as an error until their next workspace refresh (the daemon's is every 60 s).
NEED_CODE_SERVER = ("dagster-daemon", "dagster-webserver")

Ready = Callable[[], bool] | None


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    """process name -> its command line, in the file's order (comments skipped)."""
    lines = (re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line) for line in path.read_text().splitlines())
    return {m.group(1): m.group(2).strip() for m in lines if m}


def listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def layout_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The variables the Procfile lines name, and .venv/bin first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}".rstrip(":"),
            "RECEIVER_HOST": settings.receiver_host, "RECEIVER_PORT": str(settings.receiver_port),
            "RECEIVER_WORKERS": str(settings.receiver_workers), "DAGSTER_PORT": str(settings.dagster_port),
            "DAGSTER_CODE_SERVER_HOST": settings.dagster_code_server_host,
            "DAGSTER_CODE_SERVER_PORT": str(settings.dagster_code_server_port)}


def production_stages(settings: Settings, env: dict[str, str], log_dir: Path, ready_url: Callable[[str], bool],
                      dispatchers: int = 2) -> list[list[tuple[ProcessChild, Ready]]]:
    """The children in two stages (the second starts once the first serves), each with
    its readiness probe. `ready_url(url)`: whether that URL answers."""
    commands = procfile_commands()
    env = layout_env(settings, env)
    code = (settings.dagster_code_server_host, settings.dagster_code_server_port)
    probes: dict[str, Ready] = {
        "receiver": lambda: ready_url(f"http://{settings.receiver_host}:{settings.receiver_port}/readyz"),
        "dagster-code": lambda: listens(*code),  # it listens once the code is loaded
        "dagster-webserver": lambda: ready_url(f"http://127.0.0.1:{settings.dagster_port}/server_info"),
    }

    def child(name: str, process: str) -> tuple[ProcessChild, Ready]:
        app_name = APP_NAMES[process] + name.removeprefix(process)
        argv = ["/bin/sh", "-c", commands[process]]
        return ProcessChild(name, argv, {**env, "PGAPPNAME": app_name}, PROJECT_ROOT, log_dir), probes.get(process)

    first, second = [], []
    for process in commands:
        names = [f"{process}-{i}" for i in range(1, dispatchers + 1)] if process == "dispatcher" else [process]
        for name in names:
            (second if process in NEED_CODE_SERVER else first).append(child(name, process))
    return [first, second]
