"""Webhook → first SMS at the provider, one lead every few seconds, through the real
receiver and dispatcher (with the Dagster daemon running as the safety net), against a
stock Dagster sensor → job baseline on the same PostgreSQL, in the same invocation.

    ./dev bench trickle [--leads 30] [--interval 2] [--fallback]

--fallback adds a third phase without the dispatcher: what latency is when only the
safety net (inbox sensor → ingest run) is left.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.arrivals import Arrivals
from benchmarks.common import ROOT, machine, say, spawn, start_database, stop, summary, venv_bin
from benchmarks.stack_harness import Stack
from lead_orchestrator.store.db import sqlalchemy_psycopg2_url
from tests.support import wait_for


SPACED_BASELINE_ROWS = 8
SPACED_BASELINE_INTERVAL = 12.0


def baseline(leads: int, interval: float) -> list[float]:
    server, url = start_database()
    home = Path(tempfile.mkdtemp(prefix="lead-bench-baseline-"))
    shutil.copyfile(ROOT / "benchmarks" / "baseline_dagster.yaml", home / "dagster.yaml")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE baseline_events (id serial PRIMARY KEY, "
                     "inserted_at timestamptz NOT NULL DEFAULT clock_timestamp(), op_started_at timestamptz)")
    env = {"DATABASE_URL": url, "DAGSTER_HOME": str(home),
           "DAGSTER_PG_URL": sqlalchemy_psycopg2_url(server.url("dagster"))}
    log = home / "daemon.log"
    daemon = spawn([venv_bin("dagster-daemon"), "run", "-w", "benchmarks/baseline_workspace.yaml"], env, log)
    try:
        wait_for(lambda: "baseline_sensor" in log.read_text(errors="replace"), timeout=120, interval=0.5,
                 message="baseline daemon")
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(leads):
                conn.execute("INSERT INTO baseline_events DEFAULT VALUES")
                time.sleep(interval)
            wait_for(lambda: conn.execute("SELECT count(*) FROM baseline_events WHERE op_started_at IS NULL")
                     .fetchone()[0] == 0, timeout=180, interval=0.5, message="every baseline op to start")
            rows = conn.execute("SELECT extract(epoch FROM op_started_at - inserted_at) FROM baseline_events").fetchall()
        return [float(r[0]) for r in rows]
    finally:
        stop(daemon)
        server.stop()


def ours(leads: int, interval: float, processes: tuple[str, ...]) -> list[float]:
    with Stack(shops=1, processes=processes) as stack:
        shop = stack.shop_list[0]
        key = shop.shopmonkey_api_key.get_secret_value()
        latencies = []
        with Arrivals(stack.standins.twilio.messages, key=lambda m: m["to"]) as sms:
            for _ in range(leads):
                started = time.monotonic()
                created = stack.standins.shopmonkey.create_order(key)
                phone = created["customer"]["phoneNumbers"][0]["number"]
                arrived = wait_for(lambda: sms.first(phone), timeout=120, interval=0.005, message="first SMS")
                latencies.append(arrived - started)
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench trickle", description=__doc__)
    parser.add_argument("--leads", type=int, default=30)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between leads")
    parser.add_argument("--fallback", action="store_true", help="also measure without the dispatcher")
    parser.add_argument("--no-spaced-baseline", action="store_true",
                        help=f"skip the baseline's second pass ({SPACED_BASELINE_ROWS} rows, one every "
                             f"{SPACED_BASELINE_INTERVAL:.0f}s, about {SPACED_BASELINE_ROWS * SPACED_BASELINE_INTERVAL:.0f}s)")
    args = parser.parse_args(argv)
    say(f"machine: {machine()}")
    say(f"baseline: stock sensor -> job, {args.leads} rows, one every {args.interval}s (insert -> op start)")
    base = baseline(args.leads, args.interval)
    say(f"baseline: {summary(base)}")
    if not args.no_spaced_baseline:
        # A stock run costs seconds of CPU here, so at one event every 2 s the baseline
        # falls behind and its latency grows through the run. Spaced out, it shows what
        # one sensor -> job hop costs when nothing queues.
        spaced = baseline(SPACED_BASELINE_ROWS, SPACED_BASELINE_INTERVAL)
        say(f"baseline, spaced ({SPACED_BASELINE_ROWS} rows, one every {SPACED_BASELINE_INTERVAL:.0f}s): "
            f"{summary(spaced)}")
    say(f"lead orchestrator: {args.leads} leads, one every {args.interval}s (webhook sent -> SMS at Twilio stand-in)")
    fast = ours(args.leads, args.interval, ("receiver", "dispatcher", "daemon"))
    say(f"lead orchestrator: {summary(fast)}  (targets: p50 <= 1.5s, p95 <= 2.5s)")
    if args.fallback:
        slow = ours(min(args.leads, 10), max(args.interval, 5.0), ("receiver", "daemon"))
        say(f"safety net only (no dispatcher): {summary(slow)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
