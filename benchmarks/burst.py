"""Burst: 1,000 new estimates within 10 s, spread over 50 shops, each arriving as a
signed webhook from the ShopMonkey stand-in (which also enforces a rate limit per API
key, as ShopMonkey does). Reports time to the last first touch, runs launched, peak
memory of each process and duplicates.

    ./dev bench burst [--estimates 1000] [--shops 50] [--seconds 10]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import psutil

from benchmarks.arrivals import Arrivals
from benchmarks.common import machine, say
from benchmarks.idle_cost import cpu_seconds
from benchmarks.stack_harness import PeakMemory, Stack
from tests.support import wait_for


def dagster_runs(stack: Stack) -> int:
    import psycopg

    with psycopg.connect(stack.pg.url("dagster")) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench burst", description=__doc__)
    parser.add_argument("--estimates", type=int, default=1000)
    parser.add_argument("--shops", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="spread the estimates over this long")
    parser.add_argument("--rate-limit", type=int, default=100,
                        help="ShopMonkey stand-in: requests per key per 10 s before 429")
    args = parser.parse_args(argv)
    say(f"machine: {machine()}")
    with Stack(shops=args.shops) as stack:
        stack.standins.shopmonkey.set_rate_limit(args.rate_limit, 10.0)
        runs_before = dagster_runs(stack)
        cpu_before = {name: cpu_seconds(procs) for name, procs in stack.process_tree().items()}
        own_before = time.process_time()
        machine_before = psutil.cpu_times()
        keys = [s.shopmonkey_api_key.get_secret_value() for s in stack.shop_list]
        phones, emails = [], []
        with PeakMemory(stack) as memory, \
                Arrivals(stack.standins.twilio.messages, key=lambda m: m["to"]) as sms, \
                Arrivals(stack.standins.sendgrid.sent, key=lambda m: m["to"][0]) as mail:
            say(f"sending {args.estimates} estimates over {args.seconds:.0f}s across {args.shops} shops")
            started = time.monotonic()
            for i in range(args.estimates):
                due = started + i * args.seconds / args.estimates
                time.sleep(max(0.0, due - time.monotonic()))
                created = stack.standins.shopmonkey.create_order(keys[i % len(keys)])
                phones.append(created["customer"]["phoneNumbers"][0]["number"])
                emails.append(created["customer"]["emails"][0]["email"])
            sent_in = time.monotonic() - started
            say(f"all estimates created in {sent_in:.1f}s; waiting for every first touch")
            wait_for(lambda: all(sms.first(p) for p in phones) and all(mail.first(e) for e in emails),
                     timeout=300, interval=0.2, message="every first SMS and email")
            last = max(max(sms.first(p) for p in phones), max(mail.first(e) for e in emails))
            time.sleep(3)  # let anything that would be a duplicate arrive before counting
        runs = dagster_runs(stack) - runs_before
        cpu_used = {name: cpu_seconds(procs) - cpu_before.get(name, 0.0) for name, procs in stack.process_tree().items()}
        cpu_used["stand-ins + load generator (this process)"] = time.process_time() - own_before
        machine_after = psutil.cpu_times()
        busy = sum(getattr(machine_after, f) - getattr(machine_before, f) for f in ("user", "system", "nice", "irq", "softirq"))
        cpu_used["whole machine (incl. PostgreSQL)"] = busy
        sms_counts = Counter(m["to"] for m in stack.standins.twilio.messages.items())
        mail_counts = Counter(m["to"][0] for m in stack.standins.sendgrid.sent.items())
        duplicates = sum(n - 1 for n in sms_counts.values() if n > 1) + sum(n - 1 for n in mail_counts.values() if n > 1)
        counts = stack.standins.shopmonkey.request_counts()
        say(f"last first touch {last - started:.1f}s after the first estimate (target: within 20 s)")
        say(f"first touches: {len(phones)} SMS, {len(emails)} emails; duplicates: {duplicates}")
        say(f"Dagster runs launched during the burst: {runs} (independent of the number of shops)")
        say(f"ShopMonkey stand-in requests: {counts['total']}, answered 429 (and waited out): "
            f"{counts['rate_limited']}")
        say("CPU seconds used: " + ", ".join(f"{name} {sec:.1f}" for name, sec in cpu_used.items()))
        say("peak memory (MB, process + children): "
            + ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(memory.peak_mb.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
