"""What every benchmark needs: a private embedded PostgreSQL, shops, signed webhooks,
process sampling and a machine description for the report."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres
from lead_orchestrator.store.migrations import apply_migrations
from lead_orchestrator.store.secret_box import SecretBox, parse_keys
from lead_orchestrator.store.shops import ShopChanges, create_shop
from lead_orchestrator.runtime.stack import stop_process_groups

ROOT = Path(__file__).resolve().parent.parent

# One encryption key for the benchmark and every process it starts (they inherit the
# environment), so shops written here decrypt there; never the developer's own key.
os.environ.setdefault("LEAD_ENCRYPTION_KEY", Fernet.generate_key().decode())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def start_database(directory: Path | None = None) -> tuple[EmbeddedPostgres, str]:
    """A migrated embedded PostgreSQL in `directory` (a new temporary one by default)."""
    server = EmbeddedPostgres(directory or Path(tempfile.mkdtemp(prefix="lead-bench-")) / "pg").start()
    url = server.url()
    apply_migrations(url, bench_box())
    return server, url


def make_shops(url: str, count: int, prefix: str = "bench", **overrides) -> list:
    shops = []
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        for i in range(count):
            changes = ShopChanges(**{
                "time_zone": "America/Chicago", "shop_phone": "+15125550199",
                "postal_address": "1 Bench St, Austin, TX 78701",
                "webhook_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
                "shopmonkey_api_key": f"sm-{prefix}-{i}-{uuid.uuid4().hex[:8]}",
                "twilio_account_sid": "AC" + uuid.uuid4().hex, "twilio_auth_token": uuid.uuid4().hex,
                "twilio_sender": "+15125550100", "sendgrid_api_key": "SG." + uuid.uuid4().hex,
                "sendgrid_sender": "service@bench.example", "send_window_start": "00:00",
                "send_window_end": "23:59:59", "settings": {"holiday_country": None}, **overrides,
            })
            shops.append(create_shop(conn, f"{prefix}-{i:04d}", f"Bench Shop {i}", changes, bench_box()))
    return shops


def signed_order_webhook(secret: str, order_id: str | None = None) -> tuple[dict[str, str], bytes]:
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps({"apiVersion": "3", "operation": "INSERT", "table": "order",
                       "data": {"id": order_id or uuid.uuid4().hex[:24], "status": "Estimate",
                                "createdDate": stamp, "updatedDate": stamp}}, separators=(",", ":"))
    msg_id = "msg_" + uuid.uuid4().hex
    headers = {"content-type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign(msg_id, now, body)}
    return headers, body.encode()


def process_cpu(process, *, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) of a psutil.Process, 0 once it is gone; with
    `reaped_children`, also of its children that exited (added to it once reaped)."""
    import psutil

    try:
        t = process.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + ((t.children_user + t.children_system) if reaped_children else 0.0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> str:
    return (f"n={len(values)} p50={percentile(values, 50):.3f}s p95={percentile(values, 95):.3f}s "
            f"max={max(values):.3f}s mean={statistics.fmean(values):.3f}s")


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    stop_process_groups([proc], timeout)


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def bench_box() -> SecretBox:
    """The keys the benchmark's shops are written with (LEAD_ENCRYPTION_KEY above)."""
    return SecretBox(parse_keys(os.environ["LEAD_ENCRYPTION_KEY"]))
