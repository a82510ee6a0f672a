"""The product's processes, started the way `lead-orchestrator up` starts them, on a
private embedded PostgreSQL and in-process stand-ins, for benchmarks."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import psutil

from benchmarks.common import ROOT, make_shops, say, spawn, start_database, stop, venv_bin
from lead_orchestrator.store.db import sqlalchemy_psycopg2_url
from standins.servers import StandinServers
from tests.support import free_port, wait_for


@dataclass
class Stack:
    shops: int = 1
    processes: tuple[str, ...] = ("receiver", "dispatcher", "daemon")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lead-bench-stack-")))
    # For harnesses that need more control (the fault suite): where ports come from, fixed
    # stand-in ports (0: any free port), environment overrides (e.g. a vendor's URL
    # pointing at a proxy in front of its stand-in) and the shops' name prefix.
    port: Callable[[], int] = free_port
    standin_ports: dict[str, int] = field(default_factory=dict)
    env_overrides: dict[str, str] = field(default_factory=dict)
    shop_prefix: str = "bench"

    def __enter__(self) -> "Stack":
        self.prepare()
        for name in self.processes:
            self.spawn_process(name)
        for name in self.processes:
            self.wait_ready(name)
        say(f"stack up: {', '.join(self.procs)} (logs in {self.workdir / 'logs'})")
        return self

    def prepare(self) -> "Stack":
        """Database, stand-ins, shops and the processes' environment; no process yet."""
        self.pg, self.url = start_database(self.workdir / "pg")
        self.standins = StandinServers(**{f"{name}_port": port for name, port in self.standin_ports.items()}).start()
        self.receiver_port = self.port()
        self.receiver_url = f"http://127.0.0.1:{self.receiver_port}"
        say(f"creating {self.shops} shops")
        self.shop_list = make_shops(self.url, self.shops, self.shop_prefix)
        for shop in self.shop_list:
            self.standins.shopmonkey.add_shop(shop.shopmonkey_api_key.get_secret_value(),
                                              f"{self.receiver_url}/webhooks/shopmonkey/{shop.slug}",
                                              shop.webhook_secret.get_secret_value())
            self.standins.twilio.add_account(shop.twilio_account_sid, shop.twilio_auth_token.get_secret_value())
            self.standins.sendgrid.add_api_key(shop.sendgrid_api_key.get_secret_value())
        home = self.workdir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
        self.env = {
            "DATABASE_URL": self.url, "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": sqlalchemy_psycopg2_url(self.pg.url("dagster")),
            "SHOPMONKEY_BASE_URL": self.standins.shopmonkey_url, "TWILIO_API_BASE_URL": self.standins.twilio_url,
            "SENDGRID_API_BASE_URL": self.standins.sendgrid_url, "PUBLIC_BASE_URL": self.receiver_url,
            "APP_SECRET_KEY": "bench-secret", "LEAD_DATA_DIR": str(self.workdir / "data"),
            **self.env_overrides,
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands = {
            "receiver": [venv_bin("uvicorn"), "webhook_receiver.main:create_app", "--factory", "--host", "127.0.0.1",
                         "--port", str(self.receiver_port), "--no-access-log", "--log-level", "warning"],
            "dispatcher": [venv_bin("lead-orchestrator"), "dispatcher"],
            "daemon": [venv_bin("dagster-daemon"), "run", "-w", "workspace.yaml"],
            "webserver": [venv_bin("dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                          "-p", str(self.port())],
        }
        return self

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def spawn_process(self, name: str) -> subprocess.Popen:
        self.procs[name] = spawn(self.commands[name], self.env, self.log_path(name))
        return self.procs[name]

    def wait_ready(self, name: str, timeout: float | None = None) -> None:
        if name == "receiver":
            wait_for(self._receiver_ready, timeout=timeout or 60, interval=0.2, message="receiver /readyz")
        elif name == "daemon":
            log = self.log_path("daemon")
            wait_for(lambda: "inbox_sensor" in log.read_text(errors="replace"), timeout=timeout or 120,
                     interval=0.5, message="the daemon's first sensor tick")

    def _receiver_ready(self) -> bool:
        try:
            return httpx.get(f"{self.receiver_url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def process_tree(self) -> dict[str, list[psutil.Process]]:
        """Each product process with its children (the daemon's runs and code servers)."""
        tree = {}
        for name, proc in self.procs.items():
            try:
                parent = psutil.Process(proc.pid)
                tree[name] = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree[name] = []
        return tree

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            stop(proc)
        self.standins.stop()
        self.pg.stop()


class PeakMemory:
    """Samples the resident memory of each process group every `interval` seconds."""

    def __init__(self, stack: Stack, interval: float = 0.25):
        import threading

        self.stack, self.interval = stack, interval
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, procs in self.stack.process_tree().items():
                total = 0.0
                for p in procs:
                    try:
                        total += p.memory_info().rss / 2**20
                    except psutil.Error:
                        pass
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), total)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
