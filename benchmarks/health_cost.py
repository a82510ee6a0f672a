"""Benchmark: what the operations features cost, over many shops with history.

    python -m benchmarks.health_cost [--shops 200] [--leads-per-shop 500] [--flush-shops 50]

Starts an embedded PostgreSQL with the schema in a temporary directory and an ephemeral
Dagster instance, creates the shops and, per shop, leads of the last days with their
first touch sent (two per day deferred for quiet hours, one in ten found by the poll),
then times:

- one evaluation of the five health checks over every shop (what health_checks_sensor
  does every minute), through the real sensor;
- a dispatcher flush recording `leads` points for --flush-shops shops (cumulative
  figures from the tables, previous points read back), against the bare writes of as
  many materializations (what a flush cost before the figures);
- one shop's daily report (figures and two PNG charts).

Exits non-zero if the health evaluation takes 30 s or more (the sensor's budget is its
60-second interval).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import bench_box  # also sets LEAD_ENCRYPTION_KEY for the run

import psycopg
from psycopg.rows import dict_row

LIMIT_SECONDS = 30.0


def _create_history(url: str, shops: int, leads_per_shop: int) -> None:
    from lead_orchestrator.store.shops import ShopChanges, create_shop

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for i in range(shops):
            create_shop(conn, f"bench-{i:04d}", f"Bench shop {i}", ShopChanges(), bench_box())
        # As the owner: row-level security does not bind it, so one statement fills every shop.
        conn.execute(
            """INSERT INTO leads (tenant_id, order_id, status, source, order_created_at, first_seen_at)
               SELECT t.id, 'o-' || g, CASE WHEN g %% 7 = 0 THEN 'converted' ELSE 'active' END,
                      CASE WHEN g %% 10 = 0 THEN 'poll' ELSE 'webhook' END,
                      now() - g * interval '7 minutes', now() - g * interval '7 minutes' + interval '1 second'
                 FROM tenants t, generate_series(1, %s) g""", (leads_per_shop,))
        conn.execute(
            """INSERT INTO touches (tenant_id, lead_id, step, channel, status, due_at, send_after, to_address,
                                    sent_at, reserved_at, delivery_status)
               SELECT l.tenant_id, l.id, 0, c, 'sent', l.first_seen_at, l.first_seen_at, 'x',
                      l.first_seen_at + interval '3 seconds', l.first_seen_at + interval '3 seconds', 'delivered'
                 FROM leads l, unnest(ARRAY['sms', 'email']) c""")
        conn.execute(
            """INSERT INTO lead_events (tenant_id, lead_id, at, kind, detail)
               SELECT tenant_id, id, first_seen_at, 'touch_deferred',
                      '{"step": 0, "channel": "sms", "reason": "quiet_hours"}'
                 FROM leads WHERE order_id LIKE '%5'""")
        conn.execute("ANALYZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=200)
    parser.add_argument("--leads-per-shop", type=int, default=500)
    parser.add_argument("--flush-shops", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from dagster import AssetMaterialization, DagsterInstance, build_sensor_context

    from lead_orchestrator.store.db import Database
    from lead_orchestrator.runtime.embedded_pg import EmbeddedPostgres
    from lead_orchestrator.services.ingest import EventResult
    from lead_orchestrator.store.migrations import apply_migrations
    from orchestrator_dagster.checks import health_checks_sensor
    from orchestrator_dagster.history import LeadsHistory
    from orchestrator_dagster.reports import shop_report
    from orchestrator_dagster.resources import DatabaseResource

    with tempfile.TemporaryDirectory(prefix="health-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg").start()
        try:
            url = server.url()
            apply_migrations(url, bench_box())
            t0 = time.perf_counter()
            _create_history(url, args.shops, args.leads_per_shop)
            print(f"{args.shops} shops x {args.leads_per_shop} leads set up in {time.perf_counter() - t0:.1f}s; "
                  f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
            db = Database(url, max_size=4, name="bench", box=bench_box()).open()
            with DagsterInstance.ephemeral() as instance:
                resources = {"database": DatabaseResource(database_url=url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])}
                health = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    result = health_checks_sensor.evaluate_tick(build_sensor_context(instance=instance,
                                                                                     resources=resources))
                    health.append(time.perf_counter() - started)
                print(f"health checks over {args.shops} shops (sensor tick): median {statistics.median(health):.2f}s, "
                      f"max {max(health):.2f}s | {result.skip_message[:100]}")

                with db.system_tx() as conn:
                    tenants = conn.execute("SELECT t FROM active_tenant_ids() t LIMIT %s",
                                           (args.flush_shops,)).fetchall()
                slugs = {}
                for row in tenants:
                    with db.tenant_tx(row["t"]) as conn:
                        slugs[row["t"]] = conn.execute("SELECT slug FROM tenants").fetchone()["slug"]
                results = [EventResult(tid, slug, 1, "webhook", "updated") for tid, slug in slugs.items()]
                history = LeadsHistory(db, instance)
                flush, bare = [], []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    history.record_results(results, "bench")
                    flush.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    for slug in slugs.values():
                        instance.report_runless_asset_event(AssetMaterialization("bench", partition=slug))
                    bare.append(time.perf_counter() - started)
                print(f"dispatcher flush, {len(slugs)} shops: median {statistics.median(flush):.2f}s "
                      f"(bare writes of as many materializations: {statistics.median(bare):.2f}s)")

                took = []
                for tenant_id in list(slugs)[:2]:  # the first one imports matplotlib
                    started = time.perf_counter()
                    report = shop_report(db, tenant_id, dt.datetime.now(dt.timezone.utc))
                    took.append(time.perf_counter() - started)
                print(f"one shop's daily report ({report.metadata['leads_total'].value} leads that day, two PNG "
                      f"charts): {took[1]:.2f}s (the first, importing matplotlib: {took[0]:.2f}s)")
            db.close()
        finally:
            server.stop()
    ok = max(health) < LIMIT_SECONDS
    print("OK" if ok else f"FAILED: a health evaluation took {LIMIT_SECONDS:.0f} s or more")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
