"""Benchmark: one backup-poll cycle over many shops with nothing new.

    python -m benchmarks.poll_cycle [--shops 200] [--cycles 3]

Starts everything it needs in a temporary directory: an embedded PostgreSQL with the
schema, and the ShopMonkey stand-in (in this process, on its own thread: the pessimistic
case, since it competes with the poll for the same interpreter). Each shop has a few
orders last changed yesterday. A first cycle sets every shop's watermark; the measured
cycles then make every shop due at once (the sensor otherwise takes each at its own
slot: `./dev bench poll-scale` measures that), run the real poll sensor
(build_sensor_context) followed by the inbox sensor, and count ShopMonkey requests (at the stand-in), wall time and the runs the two
sensors request. A last cycle after changes in a quarter of the shops shows that the
number of runs does not follow the number of shops.

Exits non-zero if a cycle with nothing new makes more than one request for a shop or
takes 30 s or more.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from benchmarks.common import bench_box  # also sets LEAD_ENCRYPTION_KEY for the run

LIMIT_SECONDS = 30.0


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _create_shops(url: str, standins, count: int, orders_per_shop: int) -> list[str]:
    from lead_orchestrator.store.shops import ShopChanges, create_shop

    yesterday = _iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    keys = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for i in range(count):
            key = f"bench-{i}-{uuid.uuid4().hex[:8]}"
            create_shop(conn, f"bench-{i:04d}", f"Bench shop {i}", ShopChanges(  # an active shop must be able to send
                shopmonkey_api_key=key, sendgrid_api_key="SG.bench-key-0123456789abcdef",
                sendgrid_sender="service@bench.example", postal_address="1 Bench St, Austin, TX 78701"), bench_box())
            standins.shopmonkey.add_shop(key)
            for _ in range(orders_per_shop):
                standins.shopmonkey.create_order(key, order={"createdDate": yesterday, "updatedDate": yesterday},
                                                 emit_webhook=False)
            keys.append(key)
    return keys


def _runs_requested(result) -> int:
    from dagster import RunRequest

    results = result if isinstance(result, list) else [result]
    return sum(isinstance(r, RunRequest) for r in results)


def _measure(standins, tick, label: str) -> dict:
    standins.shopmonkey.reset_request_counts()
    started = time.perf_counter()
    poll_result, inbox_result = tick()
    seconds = time.perf_counter() - started
    counts = standins.shopmonkey.request_counts()
    per_shop = counts["by_key"].values()
    row = {"label": label, "seconds": seconds, "requests": counts["total"],
           "max_per_shop": max(per_shop, default=0), "shops_asked": len(counts["by_key"]),
           "runs": _runs_requested(poll_result) + _runs_requested(inbox_result),
           "summary": poll_result.skip_message}
    print(f"{label:<28} {row['seconds']:6.2f}s  requests={row['requests']:<4} "
          f"max/shop={row['max_per_shop']}  runs launched={row['runs']}  | {row['summary']}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=3, help="measured cycles with nothing new")
    parser.add_argument("--orders-per-shop", type=int, default=3)
    args = parser.parse_args(argv)

    from dagster import DagsterInstance, build_sensor_context

    from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres
    from lead_orchestrator.store.migrations import apply_migrations
    from orchestrator_dagster.resources import DatabaseResource, VendorsResource
    from lead_orchestrator.settings import load_settings
    from orchestrator_dagster.sensors import build_poll_sensors, inbox_sensor
    from standins.servers import StandinServers

    with tempfile.TemporaryDirectory(prefix="poll-bench-") as tmp, StandinServers() as standins:
        server = EmbeddedPostgres(Path(tmp) / "pg").start()
        try:
            url = server.url()
            apply_migrations(url, bench_box())
            t0 = time.perf_counter()
            keys = _create_shops(url, standins, args.shops, args.orders_per_shop)
            print(f"{args.shops} shops, {args.orders_per_shop} orders each (last changed yesterday), "
                  f"set up in {time.perf_counter() - t0:.1f}s; machine: {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f}")
            resources = {
                "database": DatabaseResource(database_url=url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"]),
                "vendors": VendorsResource(shopmonkey_base_url=standins.shopmonkey_url,
                                           twilio_api_base_url=standins.twilio_url,
                                           sendgrid_api_base_url=standins.sendgrid_url,
                                           public_base_url="http://127.0.0.1:9", app_secret_key="bench"),
            }
            with DagsterInstance.ephemeral() as instance:
                def tick():
                    # Every shop due at once: the whole cycle in one tick, the poll's worst
                    # case (the sensor otherwise takes each shop at its own slot).
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("UPDATE poll_state SET next_poll_at = NULL")
                    poll = build_poll_sensors(load_settings())[0](build_sensor_context(instance=instance, resources=resources))
                    inbox = inbox_sensor(build_sensor_context(instance=instance, resources=resources))
                    return poll, inbox

                _measure(standins, tick, "first cycle (new shops)")
                quiet = [_measure(standins, tick, f"nothing new, cycle {i + 1}") for i in range(args.cycles)]
                for key in keys[: len(keys) // 4]:
                    standins.shopmonkey.create_order(key, with_customer=False, emit_webhook=False)
                _measure(standins, tick, f"new order in {len(keys) // 4} shops")
        finally:
            server.stop()

    seconds = [r["seconds"] for r in quiet]
    print(f"\nnothing new, {args.shops} shops: wall median {statistics.median(seconds):.2f}s, "
          f"max {max(seconds):.2f}s; requests per cycle {quiet[0]['requests']} "
          f"(max {max(r['max_per_shop'] for r in quiet)} per shop); runs launched per cycle "
          f"{max(r['runs'] for r in quiet)}")
    ok = all(r["max_per_shop"] <= 1 and r["shops_asked"] == args.shops and r["seconds"] < LIMIT_SECONDS
             for r in quiet)
    print("OK" if ok else "FAILED: more than one request for a shop, a shop not asked, or 30 s exceeded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
