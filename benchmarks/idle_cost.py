"""Idle cost: the whole stack (receiver, dispatcher, Dagster daemon and webserver) with
100 configured shops and no traffic. Reports each process's average CPU (% of one core,
children included: the daemon's runs and code servers) and memory.

    ./dev bench idle [--shops 100] [--seconds 300]
"""
from __future__ import annotations

import argparse
import time

import psutil

from benchmarks.common import machine, process_cpu, say
from benchmarks.stack_harness import Stack


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(process_cpu(p) for p in procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench idle", description=__doc__)
    parser.add_argument("--shops", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to let start-up work finish first")
    args = parser.parse_args(argv)
    say(f"machine: {machine()}")
    with Stack(shops=args.shops, processes=("receiver", "dispatcher", "daemon", "webserver")) as stack:
        say(f"letting start-up settle for {args.settle:.0f}s")
        time.sleep(args.settle)
        trees = stack.process_tree()
        before = {name: cpu_seconds(procs) for name, procs in trees.items()}
        requests_before = stack.standins.shopmonkey.request_counts()["total"]
        say(f"measuring {args.seconds:.0f}s with no traffic")
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        # Runs started meanwhile are children too: count the tree as it is now.
        trees = stack.process_tree()
        total = 0.0
        for name, procs in sorted(trees.items()):
            used = cpu_seconds(procs) - before.get(name, 0.0)
            total += used
            rss = sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
            say(f"{name:<10} {100 * used / elapsed:5.2f}% of one core, {rss:6.0f} MB in {len(procs)} process(es)")
        requests = stack.standins.shopmonkey.request_counts()["total"] - requests_before
        say(f"all       {100 * total / elapsed:5.2f}% of one core (target <= 5%); "
            f"ShopMonkey requests while idle: {requests} ({requests / elapsed * 60:.0f}/min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
