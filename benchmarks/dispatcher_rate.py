"""Leads per second with one and with two dispatchers, in the production layout
(`lead-orchestrator up --production`: deploy/Procfile's processes under the supervisor,
stand-ins as its own process). For each round the dispatchers and the Dagster daemon are
held stopped (DATA_DIR/hold, so no safety-net run takes the events either) while a
backlog of estimates arrives as webhooks and is stored; then one dispatcher, or both, are
let go. The rate is the backlog over the time from the first claim to the last event
done; it also prints the peak database connections per process during the round. A last
round holds only the dispatchers: the safety net (inbox sensor -> ingest runs launched by
the code server) takes the estimates as they arrive.

    ./dev bench dispatchers [--estimates 500] [--shops 20] [--safety-net 100]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.common import machine, say
from benchmarks.idle_cost import cpu_seconds
from tests.layout_support import ConnectionPeaks, Estimate, ProductionLayout
from tests.support import wait_for

HELD = ("dispatcher-1", "dispatcher-2", "dagster-daemon")


def hold(layout: ProductionLayout, names: tuple[str, ...]) -> None:
    """Stops `names` and keeps them stopped (the supervisor's hold files)."""
    hold_dir = layout.data_dir / "hold"
    hold_dir.mkdir(exist_ok=True)
    for name in names:
        (hold_dir / name).touch()
        psutil.Process(layout.pid(name)).terminate()
    wait_for(lambda: all(layout.state()[n]["state"] == "held" for n in names), timeout=90, interval=0.2,
             message=f"{', '.join(names)} held")


def release(layout: ProductionLayout, names: tuple[str, ...]) -> None:
    for name in names:
        (layout.data_dir / "hold" / name).unlink()


def stored(layout: ProductionLayout, estimates: list[Estimate]) -> bool:
    with layout.connect() as conn:
        n = conn.execute("SELECT count(DISTINCT object_id) FROM inbox_events WHERE object_id = ANY(%s)",
                         ([e.order_id for e in estimates],)).fetchone()["count"]
    return n == len(estimates)


def processing_span(layout: ProductionLayout, estimates: list[Estimate]) -> tuple[float, dict[str, int]]:
    """Seconds from the first claim to the last event done, and events done per claimer."""
    with layout.connect() as conn:
        span = conn.execute("SELECT extract(epoch FROM max(processed_at) - min(claimed_at)) AS s FROM inbox_events "
                            "WHERE object_id = ANY(%s)", ([e.order_id for e in estimates],)).fetchone()["s"]
        rows = conn.execute("SELECT split_part(claimed_by, ' ', 1) AS who, count(*) AS n FROM inbox_events "
                            "WHERE object_id = ANY(%s) GROUP BY 1", ([e.order_id for e in estimates],)).fetchall()
    return float(span), {r["who"]: r["n"] for r in rows}


def dispatcher_cpu(layout: ProductionLayout) -> float:
    procs = []
    for name in ("dispatcher-1", "dispatcher-2"):
        try:
            procs.append(psutil.Process(layout.pid(name)))
        except (psutil.Error, TypeError):
            pass
    return cpu_seconds(procs)


def runs_launched(layout: ProductionLayout) -> int:
    with layout.connect("dagster") as conn:
        return conn.execute("SELECT count(*) AS n FROM runs").fetchone()["n"]


def one_round(layout: ProductionLayout, shops: list, estimates: int, dispatchers: int) -> dict:
    """`dispatchers` 0: every dispatcher held, the daemon running: the safety net
    (inbox sensor -> ingest runs in the code server) takes the events as they arrive."""
    held = HELD if dispatchers else HELD[:2]
    hold(layout, held)
    runs_before = runs_launched(layout)
    peaks = ConnectionPeaks(layout).start()
    backlog = layout.create_estimates(shops, estimates)
    cpu_before = 0.0
    if dispatchers:
        wait_for(lambda: stored(layout, backlog), timeout=120, interval=0.5, message="the backlog stored")
        say(f"{estimates} estimates stored; letting {dispatchers} dispatcher(s) go")
        release(layout, held[:dispatchers])
        listening = {f"lead-{n}/dispatcher-listen" for n in held[:dispatchers]}
        wait_for(lambda: listening <= set(layout.connections()), timeout=60, interval=0.05,
                 message="the dispatchers listening")
        cpu_before = dispatcher_cpu(layout)  # after their start-up
    else:
        say(f"{estimates} estimates sent with every dispatcher held: the safety net takes them")
    wait_for(lambda: layout.answered(backlog), timeout=600, interval=0.5, message="every first SMS and email")
    cpu = dispatcher_cpu(layout) - cpu_before if dispatchers else 0.0
    peaks.stop()
    span, per_claimer = processing_span(layout, backlog)
    release(layout, held[dispatchers:])
    wait_for(lambda: all(layout.state()[n]["ready"] for n in HELD), timeout=120, interval=0.5,
             message="every process back")
    sms = layout.sms_per_phone()
    return {"dispatchers": dispatchers, "seconds": span, "rate": estimates / span, "per_claimer": per_claimer,
            "cpu": cpu, "duplicates": sum(sms[e.phone] - 1 for e in backlog if sms[e.phone] > 1),
            "runs": runs_launched(layout) - runs_before, "connections": peaks.per_process(),
            "peak": dict(peaks.peak), "peak_total": peaks.peak_total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench dispatchers", description=__doc__)
    parser.add_argument("--estimates", type=int, default=500, help="backlog per round")
    parser.add_argument("--shops", type=int, default=20)
    parser.add_argument("--safety-net", type=int, default=100,
                        help="then this many estimates with no dispatcher (0: skip that round)")
    args = parser.parse_args(argv)
    say(f"machine: {machine()}")
    layout = ProductionLayout(Path(tempfile.mkdtemp(prefix="lead-bench-layout-")))
    try:
        say("starting `lead-orchestrator up --production` (2 dispatchers)")
        layout.start()
        shops = layout.add_shops(args.shops, "rate")
        results = [one_round(layout, shops, args.estimates, n) for n in (1, 2)]
        if args.safety_net:
            results.append(one_round(layout, shops, args.safety_net, 0))
        for r, n in zip(results, [args.estimates, args.estimates, args.safety_net]):
            r["leads"] = n
    finally:
        if layout.proc is not None and layout.proc.poll() is None:
            layout.stop()
        layout.kill_everything()
    for r in results:
        who = f"{r['dispatchers']} dispatcher(s)" if r["dispatchers"] else "safety net (no dispatcher)"
        per = r["rate"] / r["dispatchers"] if r["dispatchers"] else r["rate"]
        say(f"{who}: {r['leads']} leads in {r['seconds']:.1f}s = {r['rate']:.1f} leads/s ({per:.1f} per process); "
            f"events per claimer {sorted(r['per_claimer'].values(), reverse=True)}; Dagster runs {r['runs']}; "
            f"dispatcher CPU {r['cpu']:.1f}s ({1000 * r['cpu'] / r['leads']:.1f} ms per lead); "
            f"duplicates {r['duplicates']}")
        say("   peak connections per process: " + ", ".join(f"{k} {v}" for k, v in sorted(r["connections"].items()))
            + f"; all at once {r['peak_total']}")
        say("   by purpose: " + ", ".join(f"{k or '(unnamed)'} {v}" for k, v in sorted(r["peak"].items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
