"""Helpers for tests: real HTTP servers in threads, waiting on conditions, and reading
what a running `lead-orchestrator up` reports."""
from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import uvicorn

from lead_orchestrator.store.secret_box import SecretBox, parse_keys

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Polls until `condition()` is truthy; fails with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class ThreadedServer:
    """Runs an ASGI app with uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=15, message=f"server on {self.url}")
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class UpReport:
    """What a running `lead-orchestrator up` reports: its output (out_path) and its
    supervisor's state (data_dir/supervisor.json)."""

    data_dir: Path
    out_path: Path

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def state(self) -> dict:
        try:
            return json.loads((self.data_dir / "supervisor.json").read_text())["children"]
        except (OSError, ValueError):
            return {}

    def pid(self, name: str) -> int | None:
        return self.state().get(name, {}).get("pid")

    def pids(self) -> dict[str, int]:
        return {name: child["pid"] for name, child in self.state().items()}

    def database_url(self) -> str:
        return re.search(r'Database \(psql\)\s+\S+ "([^"]+)"', self.output()).group(1)


@functools.cache
def session_box() -> SecretBox:
    """The keys to the shop secrets the test session stores (LEAD_ENCRYPTION_KEY, set by
    conftest before anything starts; every process the tests start gets the same)."""
    return SecretBox(parse_keys(os.environ["LEAD_ENCRYPTION_KEY"]))
