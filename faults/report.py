"""The suite's report: one table row per fault, then what failed and the details; or JSON."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess

from benchmarks.common import ROOT, machine
from faults.ledger import Result

COLUMNS = [("fault", "name", "<"), ("sent", "sent", ">"), ("acked", "acknowledged", ">"), ("stored", "stored", ">"),
           ("leads", "leads", ">"), ("SMS", "sms", ">"), ("emails", "emails", ">"), ("dup", "duplicates", ">"),
           ("unsent+reason", "unsent_with_reason", ">"), ("lost", "lost", ">"), ("recovered", "recovery", ">"),
           ("verdict", "verdict", "<")]


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def _cell(r: Result, key: str) -> str:
    if key == "recovery":
        return "n/a" if r.error else ("no" if r.recovery_s is None else f"{r.recovery_s:.1f} s")
    if key == "verdict":
        return "PASS" if r.passed else "FAIL"
    value = getattr(r, key)
    return "-" if value is None else str(value)


def table(results: list[Result]) -> str:
    rows = [[label for label, _, _ in COLUMNS]] + [[_cell(r, key) for _, key, _ in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(f"{cell:{align}{w}}" for cell, w, (_, _, align) in zip(row, widths, COLUMNS)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def text_report(results: list[Result], meta: dict) -> str:
    out = [f"fault suite at {meta['commit']} ({meta['date']}, {'--short' if meta['short'] else 'full durations'}, "
           f"seed {meta['seed']}); {meta['machine']}", "", table(results), ""]
    for r in results:
        out.append(f"{r.name}: {r.what}; fault lasted {r.fault_s:.1f} s")
        if r.error:
            out.append(f"  ERROR: {r.error}")
        for failure in r.failures:
            out.append(f"  - {failure}")
        for key, value in r.extra.items():
            out.append(f"  {key}: {json.dumps(value, sort_keys=True)}")
    return "\n".join(out)


def json_report(results: list[Result], meta: dict) -> str:
    faults = []
    for r in results:
        data = dataclasses.asdict(r)
        data["passed"] = r.passed
        faults.append(data)
    return json.dumps({**meta, "faults": faults}, indent=1, default=str)


def meta(short: bool, seed: int) -> dict:
    return {"commit": commit(), "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "short": short, "seed": seed, "machine": machine(),
            "targets": "0 acknowledged estimates lost, 0 duplicate messages, every lead ends with its first touch "
                       "or a recorded reason, backlog drained within 60 s of the fault ending"}
