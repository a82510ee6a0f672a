"""The shape most faults share: estimates arrive by webhook while a fault is injected;
then wait for the backlog to drain and count."""
from __future__ import annotations

import time
from typing import Callable

from faults.common import Context, say
from faults.ledger import Ledger, Result
from faults.traffic import Estimate, WebhookSender
from tests.support import wait_for


def run_webhook_fault(ctx: Context, fs, name: str, what: str, estimates: list[Estimate], *, over_seconds: float,
                      inject: Callable[[WebhookSender], tuple[float, float]], expect: str = "acknowledged",
                      sender: WebhookSender | None = None) -> tuple[Result, Ledger, WebhookSender]:
    """`inject(sender)` runs the fault while the webhooks go out and returns
    (fault start, fault end) on the monotonic clock."""
    ledger = Ledger(fs, estimates, expect)
    sender = (sender or WebhookSender(fs.receiver_url)).start(estimates, over_seconds)
    say(f"{name}: {len(estimates)} estimates by webhook over {over_seconds:.0f} s")
    fault_start, fault_end = inject(sender)
    say(f"{name}: fault over after {fault_end - fault_start:.1f} s; waiting for the backlog "
        f"(at most {ctx.recovery_cap:.0f} s)")
    recovery = ledger.wait_drained(fault_end, ctx.recovery_cap, sender)
    if not sender.done():
        sender.join()
    result = ledger.result(name, what, sender=sender, recovery_s=None if recovery is None else round(recovery, 1),
                           fault_s=fault_end - fault_start, waited_s=time.monotonic() - fault_end)
    return result, ledger, sender


def wait_until(condition: Callable[[], object], timeout: float, message: str) -> None:
    wait_for(condition, timeout=timeout, interval=0.1, message=message)


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))
