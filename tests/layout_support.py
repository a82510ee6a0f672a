"""`lead-orchestrator up --production` started as an operator starts it, on private ports
and a private data directory (its own embedded PostgreSQL, the stand-ins), with what a
test or a benchmark needs around it: shops wired to the stand-ins, estimates created in
the ShopMonkey stand-in (each sends a signed webhook to the receiver), the answers at
the Twilio and SendGrid stand-ins, the processes the supervisor runs, and the database
connections per process and purpose (pg_stat_activity.application_name)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg

from benchmarks.common import make_shops
from lead_orchestrator.runtime.stack import register_with_standins
from tests.support import UpReport, free_port, wait_for

# The developer's own settings must not steer the layout.
DROPPED_ENV = ("DATABASE_URL", "TEST_DATABASE_URL", "DAGSTER_HOME", "PUBLIC_BASE_URL", "LEAD_VENDORS", "PGAPPNAME",
               "SHOPMONKEY_BASE_URL", "TWILIO_API_BASE_URL", "SENDGRID_API_BASE_URL", "RECEIVER_WORKERS")
PORT_VARIABLES = ("RECEIVER_PORT", "DAGSTER_PORT", "DAGSTER_CODE_SERVER_PORT", "SHOPMONKEY_STANDIN_PORT",
                  "TWILIO_STANDIN_PORT", "SENDGRID_STANDIN_PORT")


@dataclass(frozen=True)
class Estimate:
    shop: str
    order_id: str
    phone: str
    email: str


class ProductionLayout(UpReport):
    def __init__(self, home: Path, *, dispatchers: int = 2, env: dict[str, str] | None = None):
        self.home, self.dispatchers = home, dispatchers
        self.data_dir = home / "data"
        self.ports = {name: free_port() for name in PORT_VARIABLES}
        self.env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        self.env.update({k: str(v) for k, v in self.ports.items()})
        self.env.update(LEAD_DATA_DIR=str(self.data_dir), **(env or {}))
        self.out_path = home / "up.out"
        self.proc: subprocess.Popen | None = None
        self.shops: list = []

    # ----- the layout's lifecycle -----
    def start(self, timeout: float = 240) -> "ProductionLayout":
        with open(self.out_path, "wb") as out:
            # cwd: a folder without a .env, as the user's own .env must not steer it.
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "lead-orchestrator"), "up", "--production", "--no-demo",
                 "--dispatchers", str(self.dispatchers)],
                cwd=self.home, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or "==> running;" in self.output(), timeout=timeout,
                 interval=0.5, message="`up --production` to report that everything runs")
        assert self.proc.poll() is None, self.output()
        return self

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_everything(self) -> None:
        """Only after a failure: nothing it started may outlive the test."""
        if self.proc is not None and self.proc.poll() is None:
            pids = self.pids()
            os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in pids.values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.proc.wait()

    # ----- what runs -----
    def restarted(self, name: str, old_pid: int) -> bool:
        child = self.state().get(name, {})
        return child.get("pid") not in (None, old_pid) and child.get("ready", False)

    def receiver_workers(self) -> list[int]:
        """The uvicorn workers (the master's children that serve; not its resource tracker)."""
        master = psutil.Process(self.pid("receiver"))
        return [p.pid for p in master.children() if "multiprocessing.spawn" in " ".join(_cmdline(p))]

    def url(self, port_variable: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_variable]}"

    @property
    def receiver_url(self) -> str:
        return self.url("RECEIVER_PORT")

    @property
    def standin_urls(self) -> dict[str, str]:
        return {name: self.url(f"{name.upper()}_STANDIN_PORT") for name in ("shopmonkey", "twilio", "sendgrid")}

    def connect(self, database: str | None = None) -> psycopg.Connection:
        url = self.database_url()
        if database:
            url = url.replace("/lead?", f"/{database}?", 1)
        return psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row)

    # ----- shops and estimates -----
    def add_shops(self, count: int, prefix: str) -> list:
        shops = make_shops(self.database_url(), count, prefix)
        for shop in shops:
            register_with_standins({"shop": shop, "sm_key": shop.shopmonkey_api_key.get_secret_value(),
                                    "secret": shop.webhook_secret.get_secret_value()},
                                   self.standin_urls, self.receiver_url)
        self.shops.extend(shops)
        return shops

    def create_estimates(self, shops: list, count: int) -> list[Estimate]:
        """`count` estimates, round-robin over `shops`; each sends its webhook at once."""
        created = []
        with httpx.Client(base_url=self.standin_urls["shopmonkey"], timeout=10) as client:
            for i in range(count):
                shop = shops[i % len(shops)]
                response = client.post("/_standin/orders", json={"api_key": shop.shopmonkey_api_key.get_secret_value()})
                response.raise_for_status()
                body = response.json()
                created.append(Estimate(shop.slug, body["order"]["id"], body["customer"]["phoneNumbers"][0]["number"],
                                        body["customer"]["emails"][0]["email"]))
        return created

    def sms_per_phone(self) -> Counter:
        return Counter(m["to"] for m in httpx.get(f"{self.standin_urls['twilio']}/_outbox.json", timeout=10).json())

    def emails_per_address(self) -> Counter:
        sent = httpx.get(f"{self.standin_urls['sendgrid']}/_outbox.json", timeout=10).json()
        return Counter(to for m in sent for to in m["to"])

    def answered(self, estimates: list[Estimate]) -> bool:
        sms, mail = self.sms_per_phone(), self.emails_per_address()
        return all(sms[e.phone] and mail[e.email] for e in estimates)

    def connections(self) -> Counter:
        """Client connections to the whole cluster (both databases) per application_name."""
        with self.connect() as conn:
            rows = conn.execute("SELECT application_name AS name, count(*) AS n FROM pg_stat_activity "
                                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                                "GROUP BY 1").fetchall()
        return Counter({r["name"]: r["n"] for r in rows})


class ConnectionPeaks:
    """Samples connections per application_name every `interval` seconds, keeping each
    name's highest count and the highest total."""

    def __init__(self, layout: ProductionLayout, interval: float = 0.2):
        self.layout, self.interval = layout, interval
        self.peak: Counter = Counter()
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-peaks", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = self.layout.connections()
            except psycopg.Error:  # the database restarting: the next sample counts
                now = Counter()
            for name, n in now.items():
                self.peak[name] = max(self.peak[name], n)
            self.peak_total = max(self.peak_total, sum(now.values()))
            self._stop.wait(self.interval)

    def start(self) -> "ConnectionPeaks":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def per_process(self) -> Counter:
        """Peaks summed per process (the part of the name before '/'), a rough upper bound."""
        totals: Counter = Counter()
        for name, n in self.peak.items():
            totals[name.split("/", 1)[0] or "(unnamed)"] += n
        return totals


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
