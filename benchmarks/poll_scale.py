"""Benchmark: the backup poll over thousands of idle shops.

    python -m benchmarks.poll_scale [--shops 5000 20000] [--seconds 60] [--latency-ms 0]
                                    [--concurrency 32] [--pollers 1]

For each size: an embedded PostgreSQL of its own, shops written with one COPY, and the
ShopMonkey stand-in in a child process (so that the poller's CPU is its own) knowing
every shop's key, with no orders: every shop is idle. `--latency-ms` makes each stand-in
answer that much later (the real API answers in a few hundred milliseconds).

1. Burst: every shop is due at once (a new deployment): one tick, as the sensor runs it,
   until its 25-s budget; shops per second.
2. Steady state: ticks every 5 s (the daemon's pace) for `--seconds`, each polling the
   shops whose slot has come. Reported: each tick's duration (a tick longer than 5 s
   means the poller is behind), the longest gap between two polls of one shop (the
   cycle each shop actually gets), requests per shop per 30 s (counted at the stand-in),
   and the CPU of the poller process(es), PostgreSQL and the stand-in.

`--pollers N` runs N poller processes, each the shard of its index (what N poll
sensors, or N code servers, do), to see whether the poll scales past one interpreter.

Exits non-zero when the first size (5,000 by default) misses the issue's bar: every
shop polled once per cycle of at most 30 s (+ one 5-s tick of lag), at most one
request per idle shop per cycle.
"""
from __future__ import annotations

import argparse
import asyncio
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

from benchmarks.common import bench_box, machine, percentile, process_cpu, say, start_database

TICK_S = 5.0
CADENCE_S = 30.0


# --- the stand-in, in a child process -------------------------------------------------

def _standin_child(keys: list[str], latency_ms: float, port_queue, stop_event) -> None:
    from standins import shopmonkey
    from standins.servers import StandinServers
    from standins.shopmonkey_state import ShopMonkeyState

    if latency_ms:  # every API answer waits, as a remote API's would (asyncio: no thread held)
        build = shopmonkey.create_app

        def slow_app(state):
            app = build(state)

            @app.middleware("http")
            async def latency(request, call_next):
                if request.url.path.startswith("/v3/"):
                    await asyncio.sleep(latency_ms / 1000)
                return await call_next(request)
            return app
        shopmonkey.create_app = slow_app
    state = ShopMonkeyState()
    for key in keys:
        state.add_shop(key)
    with StandinServers(shopmonkey=state, tekmetric_port=None) as servers:
        port_queue.put(servers.shopmonkey_url)
        stop_event.wait()


# --- shops, fast ------------------------------------------------------------------------

def _seed_shops(url: str, count: int) -> list[str]:
    """`count` active ShopMonkey shops, each with its own API key, written with two COPYs
    (create_shop one by one takes minutes at 20,000). Secrets are encrypted as the
    application writes them."""
    box = bench_box()
    sendgrid = box.encrypt("SG.bench-key-0123456789abcdef")
    keys = [f"bench-{i:05d}-{os.urandom(4).hex()}" for i in range(count)]
    tenants = "".join(f"bench-{i:05d}\tBench shop {i}\t{sendgrid}\tservice@bench.example\t"
                      f"1 Bench St, Austin, TX 78701\n" for i in range(count))
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy("COPY tenants (slug, name, sendgrid_api_key, sendgrid_sender, postal_address) "
                                "FROM STDIN") as copy:
            copy.write(tenants)
        ids = dict(conn.execute("SELECT slug, id FROM tenants").fetchall())
        with conn.cursor().copy("COPY shopmonkey_credentials (tenant_id, api_key) FROM STDIN") as copy:
            copy.write("".join(f"{ids[f'bench-{i:05d}']}\t{box.encrypt(key)}\n" for i, key in enumerate(keys)))
        # Connected yesterday: the first poll's window is a day long, as for a real shop.
        conn.execute("UPDATE tenants SET created_at = now() - interval '1 day'")
    return keys


# --- the poller(s) --------------------------------------------------------------------

def _poller(url: str, standin_url: str, shard: tuple[int, int], concurrency: int, plan: dict, out_queue) -> None:
    """Runs the burst tick, then 5-s ticks until `plan['until']` (a wall-clock time),
    sending back each tick's numbers and this process's CPU time."""
    from lead_orchestrator.services.poll import PollConfig, Shard, new_http_client, poll_cycle
    from lead_orchestrator.services.shop_clients import Vendors
    from lead_orchestrator.store.db import Database

    config = PollConfig(concurrency=concurrency)
    db = Database(url, min_size=1, max_size=8, name="poll", box=bench_box()).open()
    http = new_http_client(config)
    vendors = Vendors(shopmonkey_base_url=standin_url, twilio_base_url=None, sendgrid_base_url=None,
                      public_base_url="http://127.0.0.1:9", secret_key="bench")
    me = psutil.Process()

    def tick(label: str) -> dict:
        cpu = sum(me.cpu_times()[:2])
        wall_at = time.time()
        started = time.monotonic()
        cycle = poll_cycle(db, vendors, http=http, config=config, shard=Shard(*shard))
        return {"label": label, "at": wall_at, "seconds": time.monotonic() - started,
                "cpu": sum(me.cpu_times()[:2]) - cpu, "ok": len(cycle.with_outcome("ok")),
                "shops": len(cycle.shops), "not_reached": len(cycle.with_outcome("not_reached")),
                "requests": cycle.requests,
                "polled": [(s.tenant_id, s.polled_at.timestamp()) for s in cycle.with_outcome("ok")]}

    # One tick every 5 s from the burst on, as the daemon ticks; those before steady_at
    # are the warm-up (the shops settle on their slots), the rest are measured.
    next_tick, cpu_at_steady = plan["burst_at"], None
    while next_tick < plan["until"]:
        time.sleep(max(0.0, next_tick - time.time()))
        label = "burst" if next_tick == plan["burst_at"] else "warmup" if next_tick < plan["steady_at"] else "steady"
        if label == "steady" and cpu_at_steady is None:
            cpu_at_steady = sum(me.cpu_times()[:2])
        out_queue.put(tick(label))
        next_tick = max(next_tick + TICK_S, time.time())  # the daemon never overlaps one sensor's ticks
    out_queue.put({"label": "done", "cpu": sum(me.cpu_times()[:2]) - (cpu_at_steady or 0.0)})
    http.close()
    db.close()


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants, the exited ones included (their
    time is added to their parent's children_* once reaped): PostgreSQL forks a backend
    per connection, and pools open and close connections as they please."""
    try:
        root = psutil.Process(pid)
        return process_cpu(root, reaped_children=True) + sum(map(process_cpu, root.children(recursive=True)))
    except psutil.Error:
        return 0.0


def run_size(count: int, args) -> dict:
    say(f"--- {count} idle shops, {args.pollers} poller process(es), concurrency {args.concurrency}, "
        f"stand-in latency {args.latency_ms:.0f} ms")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="poll-scale-") as tmp:
        server, url = start_database(Path(tmp) / "pg")
        standin = None
        pollers = []
        try:
            t0 = time.perf_counter()
            keys = _seed_shops(url, count)
            stop_standin, port_queue = ctx.Event(), ctx.Queue()
            standin = ctx.Process(target=_standin_child, args=(keys, args.latency_ms, port_queue, stop_standin))
            standin.start()
            standin_url = port_queue.get(timeout=120)
            say(f"seeded {count} shops and the stand-in in {time.perf_counter() - t0:.1f}s")

            out = ctx.Queue()
            start = time.time() + 8  # the pollers import and connect meanwhile
            plan = {"burst_at": start, "steady_at": start + 30, "until": start + 30 + args.seconds}
            pollers = [ctx.Process(target=_poller, args=(url, standin_url, (i, args.pollers), args.concurrency,
                                                         plan, out)) for i in range(args.pollers)]
            for p in pollers:
                p.start()
            while time.time() < plan["steady_at"] - TICK_S / 2:  # between two ticks
                time.sleep(0.05)
            watched = {"postgres": [server.postmaster_pid()],
                       "stand-in": [standin.pid]}
            cpu_before = {name: sum(map(_tree_cpu, pids)) for name, pids in watched.items()}
            while time.time() < plan["until"]:
                time.sleep(0.2)
            ticks, poller_cpu, done = [], 0.0, 0
            while done < len(pollers):
                item = out.get(timeout=300)
                if item["label"] == "done":
                    done, poller_cpu = done + 1, poller_cpu + item["cpu"]
                else:
                    ticks.append(item)
            steady_wall = time.time() - plan["steady_at"]
            cpu = {name: sum(map(_tree_cpu, pids)) - cpu_before[name] for name, pids in watched.items()}
            cpu["poller"] = poller_cpu  # its own count: a poller may have exited by now
            with httpx.Client() as client:
                counts = client.get(f"{standin_url}/_standin/requests", timeout=60).json()
            for p in pollers:
                p.join(timeout=60)
        finally:
            for p in pollers:
                if p.is_alive():
                    p.kill()
            if standin is not None:
                stop_standin.set()
                standin.join(timeout=30)
                if standin.is_alive():
                    standin.kill()
            server.stop()
    return _report(count, args, ticks, steady_wall, cpu, counts)


def _report(count: int, args, ticks: list[dict], steady_wall: float, cpu: dict, counts: dict) -> dict:
    bursts = [t for t in ticks if t["label"] == "burst"]
    burst_polled = sum(t["ok"] for t in bursts)
    burst_s = max(t["seconds"] for t in bursts)
    say(f"burst (all {count} due at once): {burst_polled} polled in {burst_s:.1f}s "
        f"({burst_polled / burst_s:.0f} shops/s), poller CPU {sum(t['cpu'] for t in bursts):.1f}s")

    steady = sorted((t for t in ticks if t["label"] == "steady"), key=lambda t: t["at"])
    durations = [t["seconds"] for t in steady]
    # Gaps between two polls of one shop, each dated when it began, the later one in
    # the steady window.
    last_poll: dict[int, float] = {}
    gaps: list[float] = []
    for tenant_id, at in sorted((p for t in ticks for p in t["polled"]), key=lambda p: p[1]):
        if tenant_id in last_poll and at >= steady[0]["at"]:
            gaps.append(at - last_poll[tenant_id])
        last_poll[tenant_id] = at
    polled_in_window = {i for t in steady for i, _ in t["polled"]}
    cycles = steady_wall / CADENCE_S
    per_shop = counts["by_key"].values()
    polls = sum(t["ok"] for t in steady)
    throughput = polls / steady_wall
    # The stand-in counts every request of the run; the ticks every poll of it.
    all_polls = sum(t["ok"] for t in ticks)
    busy = sum(durations) / max(1, args.pollers) / steady_wall
    row = {
        "shops": count, "burst_s": burst_s, "burst_polled": burst_polled,
        "ticks": len(steady), "tick_p50": statistics.median(durations), "tick_max": max(durations),
        "busy_share": busy, "gap_max": max(gaps, default=float("nan")), "gap_min": min(gaps, default=float("nan")),
        "gap_p50": statistics.median(gaps) if gaps else float("nan"),
        "shops_polled": len(polled_in_window), "requests": counts["total"], "polls": polls,
        "requests_per_poll": counts["total"] / max(1, all_polls), "throughput": throughput,
        "polls_per_shop_cycle": polls / count / cycles,
        "cycle": max(CADENCE_S, count / throughput) if throughput else float("inf"),
        "max_requests_one_shop": max(per_shop, default=0), "shops_asked": len(counts["by_key"]),
        "cpu": cpu, "wall": steady_wall,
    }
    row["polls_per_tick_second"] = polls / max(1e-9, sum(durations))
    say(f"steady, {steady_wall:.0f}s ({cycles:.1f} cycles): {len(steady)} ticks, duration p50 {row['tick_p50']:.2f}s "
        f"p95 {percentile(durations, 95):.2f}s max {row['tick_max']:.2f}s; poller busy {busy:.0%} of the time, "
        f"{row['polls_per_tick_second']:.0f} polls a second while ticking")
    say(f"  {polls} polls ({throughput:.0f}/s, {row['polls_per_shop_cycle']:.2f} per shop per 30 s): "
        f"{len(polled_in_window)}/{count} shops polled in the window, "
        f"each shop's cycle {row['cycle']:.0f}s; gap between two polls of one shop min {row['gap_min']:.1f}s, "
        f"p50 {row['gap_p50']:.1f}s, max {row['gap_max']:.1f}s")
    say(f"  requests at the stand-in over the whole run: {counts['total']} for {all_polls} polls, "
        f"{row['requests_per_poll']:.3f} per poll, at most {row['max_requests_one_shop']} for one shop; "
        f"429s {counts['rate_limited']}")
    say("  CPU over the steady window: " + ", ".join(f"{name} {seconds:.1f}s ({seconds / steady_wall:.0%} of a core)"
                                                    for name, seconds in cpu.items()))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--seconds", type=float, default=60.0, help="steady-state window after the burst")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every stand-in answer")
    parser.add_argument("--concurrency", type=int, default=64, help="shops in flight per poller")
    parser.add_argument("--pollers", type=int, default=1, help="poller processes, one shard each")
    args = parser.parse_args(argv)
    say(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    rows = [run_size(count, args) for count in args.shops]
    first = rows[0]
    # Every shop polled, every 30 s at the median and never more than 40 s apart (a poll
    # waits up to one 5-s tick for its slot, and its place in a tick adds up to the
    # tick's length), one request per poll and about one poll per shop per 30 s. (A late
    # poll is followed by one on time: a gap shorter than 30 s, printed, not judged.)
    ok = (first["shops_polled"] == first["shops"] and first["gap_p50"] <= CADENCE_S + 1
          and first["gap_max"] <= CADENCE_S + 2 * TICK_S and first["requests_per_poll"] <= 1.0
          and first["polls_per_shop_cycle"] <= 1.05)
    print("OK" if ok else f"FAILED at {first['shops']} shops: not every shop polled, a median gap over "
                          f"{CADENCE_S + 1:.0f} s or one over {CADENCE_S + 2 * TICK_S:.0f} s, or more than "
                          "one request per idle shop per cycle")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
