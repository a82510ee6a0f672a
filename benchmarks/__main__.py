"""`./dev bench NAME [options]`: run one benchmark (each prints its numbers; the latest
results are recorded in BENCHMARKS.md)."""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "trickle": ("benchmarks.trickle_latency", "webhook -> first SMS latency vs a stock Dagster sensor"),
    "burst": ("benchmarks.burst", "1,000 estimates in 10 s over 50 shops"),
    "receiver": ("benchmarks.receiver_throughput", "webhooks acknowledged per second vs bare and naive"),
    "idle": ("benchmarks.idle_cost", "CPU and memory of the whole stack with 100 shops and no traffic"),
    "poll": ("benchmarks.poll_cycle", "one backup-poll cycle over 200 shops with nothing new"),
    "poll-scale": ("benchmarks.poll_scale", "the poll over 5,000 and 20,000 idle shops: cycle, requests, CPU"),
    "tekmetric-poll": ("benchmarks.tekmetric_poll", "1,000 Tekmetric shops inside one partner app's 600/min budget"),
    "dispatchers": ("benchmarks.dispatcher_rate", "leads/s with one and two dispatchers in the production layout"),
    "health": ("benchmarks.health_cost", "health checks, leads history flush and daily report over 200 shops"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: ./dev bench NAME [--help]\n")
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:<10} {what}")
        return 0 if not argv else 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
