"""Benchmark: the backup poll over 1,000 Tekmetric shops of one partner app.

    python -m benchmarks.tekmetric_poll [--shops 1000] [--busy 50] [--minutes 5]
                                        [--fetches-per-minute 40] [--cold]

Tekmetric allows 600 requests a minute per partner app, all its shops together. The
Tekmetric stand-in (its own process) enforces exactly that (a sliding 60-s window, 429
with an empty body above it). The poller ticks every 5 s, as the poll sensor does, and
reaches each shop through `TekmetricAdapter.changes_since` with the app's client on the
shared budget (crm/app_budget.py). `--busy` shops have a change in the last hour (they
keep a 30-s cadence); the others get what the plan (crm/tekmetric/budget.py) leaves.
Meanwhile another process fetches `--fetches-per-minute` estimates (order, customer,
vehicle: three requests each) through its own client on the same budget, as the
dispatcher does for webhooks: the budget is shared across processes, not split.

Without `--cold` the shops start as a running deployment has them (polled before, slots
spread over their cadence); with it, every shop is new and due at once.

Printed: requests a minute at the stand-in (all, and the poll's), the most in any 60 s,
429s (must be 0), each shop's cycle (the gap between two of its polls, busy and quiet),
refusals by our own budget, and the poller's CPU. Exits non-zero on any 429.
"""
from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import psycopg

from benchmarks.common import bench_box, machine, percentile, say, start_database
from benchmarks.poll_scale import _seed_shops, _tree_cpu

APP, SECRET = "bench-app", "bench-secret"
FIRST_SHOP = 1001
TICK_S = 5.0


def _standin_child(shops: int, busy: int, port_queue, stop_event) -> None:
    from standins.servers import StandinServers
    from standins.tekmetric_state import TekmetricState

    state = TekmetricState()  # 600 requests a minute per app, as Tekmetric
    state.add_app(APP, SECRET)
    for i in range(shops):
        state.add_shop(FIRST_SHOP + i, client_id=APP)
    for i in range(busy):  # a change in the last hour: these shops are busy
        state.create_order(FIRST_SHOP + i, emit_webhook=False)
    with StandinServers(tekmetric=state) as servers:
        port_queue.put((servers.tekmetric_url, sorted(state.orders)))
        stop_event.wait()


def _fetcher_child(url: str, standin_url: str, order_ids: list[int], per_minute: float, until: float,
                   out_queue) -> None:
    """Another process of the same app: fetches estimates as webhooks would have it."""
    from lead_orchestrator.crm.errors import CrmError
    from lead_orchestrator.crm.tekmetric import TekmetricAdapter, partner_app_client
    from lead_orchestrator.store.db import Database

    db = Database(url, max_size=2, name="fetcher", box=bench_box()).open()
    fetched = refused = 0
    with partner_app_client(db, standin_url, APP, SECRET) as client:
        adapters = {}
        next_at = time.time()
        i = 0
        while next_at < until and order_ids:
            time.sleep(max(0.0, next_at - time.time()))
            position = i % len(order_ids)
            i += 1
            try:
                # The stand-in made one order in each busy shop, in shop order.
                adapter = adapters.setdefault(position, TekmetricAdapter(client, FIRST_SHOP + position))
                adapter.fetch_estimate(str(order_ids[position]), deadline=time.monotonic() + 5)
                fetched += 1
            except CrmError:
                refused += 1
            next_at += 60.0 / per_minute
    out_queue.put({"label": "fetcher", "fetched": fetched, "refused": refused})
    db.close()


def _seed_poll_state(url: str, shops: int, busy: int, plan, app: str) -> None:
    """Every shop as a running deployment has it: polled before, busy or quiet, and its
    next slot at its phase in its planned cadence (the deletion query due at spread times)."""
    from lead_orchestrator.services.poll import next_slot

    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for tenant_id in range(1, shops + 1):
        is_busy = tenant_id <= busy
        cadence = plan.busy_interval_s if is_busy else plan.quiet_interval_s
        checked = now - dt.timedelta(seconds=(tenant_id * 0.618 % 1.0) * plan.deleted_every * cadence)
        rows.append((tenant_id, now - dt.timedelta(minutes=10), next_slot(tenant_id, now, cadence), cadence, app,
                     is_busy, now - dt.timedelta(minutes=5) if is_busy else None, checked))
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO poll_state (tenant_id, watermark, next_poll_at, wait_reason, cadence_s, budget_app,
                                           busy, last_change_at, deletions_checked_at, last_polled_at)
                   VALUES (%s, %s, %s, 'cadence', %s, %s, %s, %s, %s, now())""", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=50, help="shops with a change in the last hour")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--fetches-per-minute", type=float, default=40.0)
    parser.add_argument("--cold", action="store_true", help="every shop new and due at once")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)

    from lead_orchestrator.crm.app_budget import app_key
    from lead_orchestrator.crm.tekmetric import TekmetricAdapter, partner_app_client, plan_poll
    from lead_orchestrator.services.poll import PollConfig, new_http_client, poll_cycle
    from lead_orchestrator.services.shop_clients import Vendors
    from lead_orchestrator.store.db import Database

    plan = plan_poll(args.shops, busy=args.busy)
    say(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    say(f"{args.shops} Tekmetric shops of one app, {args.busy} busy; plan: busy every {plan.busy_interval_s}s, "
        f"quiet every {plan.quiet_interval_s}s, deletions every {plan.deleted_every} cycles, "
        f"{plan.requests_per_minute:.0f} poll requests a minute at most (of {plan.poll_budget_per_minute:.0f})")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tekmetric-poll-") as tmp:
        server, url = start_database(Path(tmp) / "pg")
        stop_standin, port_queue, out = ctx.Event(), ctx.Queue(), ctx.Queue()
        standin = ctx.Process(target=_standin_child, args=(args.shops, args.busy, port_queue, stop_standin))
        standin.start()
        fetcher = None
        try:
            _seed_shops(url, args.shops)
            standin_url, order_ids = port_queue.get(timeout=120)
            if not args.cold:
                _seed_poll_state(url, args.shops, args.busy, plan, app_key("tekmetric", APP))
            db = Database(url, max_size=8, name="poll", box=bench_box()).open()
            config = PollConfig(concurrency=args.concurrency)
            vendors = Vendors(shopmonkey_base_url="http://127.0.0.1:9", twilio_base_url=None, sendgrid_base_url=None,
                              public_base_url="http://127.0.0.1:9", secret_key="bench")
            with partner_app_client(db, standin_url, APP, SECRET) as client, new_http_client(config) as http:
                client.scope()
                adapters = {}

                def crm_for(shop, *, http, pacer):
                    if shop.id not in adapters:
                        adapters[shop.id] = TekmetricAdapter(client, FIRST_SHOP + shop.id - 1)
                    return adapters[shop.id]

                httpx.delete(f"{standin_url}/_standin/requests")
                started = time.time()
                until = started + args.minutes * 60
                if args.fetches_per_minute:
                    fetcher = ctx.Process(target=_fetcher_child, args=(url, standin_url, order_ids,
                                                                      args.fetches_per_minute, until, out))
                    fetcher.start()
                me, pg_cpu0 = psutil.Process(), _tree_cpu(server.postmaster_pid())
                cpu0 = sum(me.cpu_times()[:2])
                ticks, polls, next_tick = [], {}, started
                while next_tick < until:
                    time.sleep(max(0.0, next_tick - time.time()))
                    at = time.time()
                    cycle = poll_cycle(db, vendors, http=http, config=config, crm_for=crm_for)
                    ticks.append({"at": at, "seconds": cycle.seconds, "shops": len(cycle.shops),
                                  "ok": len(cycle.with_outcome("ok")), "limited": len(cycle.with_outcome("rate_limited")),
                                  "requests": cycle.requests, "other": len(cycle.shops) - len(cycle.with_outcome("ok"))
                                  - len(cycle.with_outcome("rate_limited"))})
                    for shop in cycle.with_outcome("ok"):
                        polls.setdefault(shop.tenant_id, []).append(at)
                    next_tick = max(next_tick + TICK_S, time.time())
                elapsed = time.time() - started
                cpu = sum(me.cpu_times()[:2]) - cpu0
                pg_cpu = _tree_cpu(server.postmaster_pid()) - pg_cpu0
                counts = httpx.get(f"{standin_url}/_standin/requests").json()
            fetched = out.get(timeout=120) if fetcher is not None else None
            db.close()
        finally:
            if fetcher is not None:
                fetcher.join(timeout=60)
            stop_standin.set()
            standin.join(timeout=30)
            server.stop()

    minutes = elapsed / 60
    poll_requests = sum(t["requests"] for t in ticks)
    say(f"{minutes:.1f} min, {len(ticks)} ticks (duration p50 {statistics.median(t['seconds'] for t in ticks):.2f}s, "
        f"max {max(t['seconds'] for t in ticks):.2f}s)")
    say(f"requests at the stand-in: {counts['total']} = {counts['total'] / minutes:.0f}/min "
        f"(poll {poll_requests / minutes:.0f}/min, the other process's fetches "
        f"{(counts['total'] - poll_requests) / minutes:.0f}/min); most in any 60 s: "
        f"{counts['peak_in_window'].get(APP, 0)} of {counts['budget']['requests']}; 429s: {counts['rate_limited']}")
    gaps = {kind: [b - a for tenant_id, times in polls.items() if (tenant_id <= args.busy) == (kind == "busy")
                   for a, b in zip(times, times[1:])] for kind in ("busy", "quiet")}
    for kind, values in gaps.items():
        if values:
            say(f"cycle of a {kind} shop (gap between two of its polls): p50 {statistics.median(values):.0f}s, "
                f"p95 {percentile(values, 95):.0f}s, max {max(values):.0f}s ({len(values)} gaps)")
    say(f"shops polled at least once: {len(polls)}/{args.shops}; polls {sum(len(v) for v in polls.values())}; "
        f"moved to a later slot by our budget: {sum(t['limited'] for t in ticks)}; other outcomes: "
        f"{sum(t['other'] for t in ticks)}")
    if fetched:
        say(f"the other process: {fetched['fetched']} estimates fetched, {fetched['refused']} refused by the budget")
    say(f"CPU: poller {cpu:.1f}s ({cpu / elapsed:.0%} of a core), PostgreSQL {pg_cpu:.1f}s")
    ok = counts["rate_limited"] == 0
    print("OK: no 429" if ok else f"FAILED: {counts['rate_limited']} answers were 429")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
