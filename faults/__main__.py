"""`./dev faults [NAME ...] [--short] [--json]`: start the real stack on private ports
(9700-9799) and a private data directory (/tmp/faults-*), inject each fault, and report
per fault what was sent, acknowledged, stored, made into leads, texted and emailed, the
duplicates, the losses and the time the backlog took to drain after the fault ended,
against the targets (docs/reliability.md, "The fault suite")."""
from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from faults.common import Context, say
from faults.ledger import Result

FAULTS = {
    "receiver-kill": ("faults.process_faults:receiver_kill", "receiver SIGKILL mid-burst of 1,000 webhooks"),
    "postgres-stop": ("faults.process_faults:postgres_stop", "PostgreSQL stopped 30 s under a trickle"),
    "worker-kill": ("faults.process_faults:worker_kill", "dispatcher and Dagster daemon SIGKILL mid-burst"),
    "vendor-errors": ("faults.vendor_faults:vendor_errors",
                      "Twilio and SendGrid failing 20 % (429, 500, read timeout, closed after answering)"),
    "crm-refused": ("faults.crm_faults:crm_refused", "ShopMonkey refusing connections for 5 minutes"),
    "crm-hang": ("faults.crm_faults:crm_hang", "ShopMonkey accepting and never answering for 5 minutes"),
    "key-revoked": ("faults.crm_faults:key_revoked", "a shop's ShopMonkey key revoked for 5 minutes, then fixed"),
    "crm-rate-limit": ("faults.crm_faults:crm_rate_limit", "ShopMonkey limiting a key to 2 requests/s, 300 estimates (60 with --short)"),
    "poll-paging": ("faults.crm_faults:poll_paging", "an order edited while the poll reads the next page"),
    "hostile": ("faults.hostile:hostile", "5,000 hostile requests at the receiver"),
}


def _load(name: str):
    module, _, func = FAULTS[name][0].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="faults to run (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--short", action="store_true", help="scale the long faults down (5 min -> 60 s) for quick runs")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress stays on stderr)")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON report to PATH")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault proxies and hostile requests")
    parser.add_argument("--recover-timeout", type=float, default=None,
                        help="seconds to wait for the backlog after a fault (default 360, 150 with --short)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each fault's data directory and logs (the logs of a failed fault are always kept)")
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, what) in FAULTS.items():
            print(f"  {name:<15} {what}")
        return 0
    unknown = [n for n in args.names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    names = args.names or list(FAULTS)

    from faults.report import json_report, meta, text_report

    run_dir = Path(tempfile.mkdtemp(prefix="faults-", dir="/tmp"))
    ctx = Context(run_dir, short=args.short, seed=args.seed, keep=args.keep, recover_timeout=args.recover_timeout)
    say(f"fault suite: {', '.join(names)}; data in {run_dir}")
    results: list[Result] = []
    try:
        for name in names:
            say(f"=== {name}: {FAULTS[name][1]}")
            try:
                result = _load(name)(ctx).judge()  # a fault may have added checks of its own
            except Exception as exc:  # noqa: BLE001 - one broken fault must not hide the others' figures
                traceback.print_exc(file=sys.stderr)
                result = Result(name, FAULTS[name][1], error=f"{type(exc).__name__}: {exc}")
            say(f"=== {name}: {'PASS' if result.passed else 'FAIL'} " + "; ".join(result.failures))
            results.append(result)
            if result.passed and not args.keep:
                shutil.rmtree(run_dir / name, ignore_errors=True)
    except KeyboardInterrupt:
        say("interrupted; reporting what ran")
    finally:
        kept = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
        if kept:
            say(f"logs of {', '.join(kept)} kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    info = meta(args.short, args.seed)
    print(json_report(results, info) if args.json else text_report(results, info))
    if args.save:
        Path(args.save).write_text(json_report(results, info) + "\n")
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
