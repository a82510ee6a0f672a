"""Twilio and SendGrid misbehaving, through fault proxies in front of their stand-ins."""
from __future__ import annotations

import time

from faults.common import Context
from faults.ledger import Result
from faults.proxy import FAULT_KINDS
from faults.scenario import run_webhook_fault, sleep_until
from faults.stack import FaultStack
from faults.traffic import plan_estimates

ESTIMATES = 300
FAILING = 0.2


def vendor_errors(ctx: Context) -> Result:
    """20 % of the calls to Twilio and to SendGrid fail while 300 estimates arrive: an
    even mix of 429 and 500 (answered by the proxy, never sent), read timeouts and
    connections closed after the vendor answered (the message *was* accepted: only
    at-most-once sending avoids a duplicate). Then the vendors recover."""
    name = "vendor-errors"
    duration = ctx.seconds(60, 30)
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=10, proxies=("twilio", "sendgrid"), seed=ctx.seed,
                    keep=ctx.keep) as fs:
        fs.start()
        estimates = plan_estimates(fs, ESTIMATES)
        start = time.monotonic()
        for n, proxy in enumerate(fs.proxies.values()):
            proxy.set_faults(FAILING, FAULT_KINDS, seed=ctx.seed + n)

        def inject(sender):
            sleep_until(start + duration)
            for proxy in fs.proxies.values():
                proxy.set_faults(0.0)
            return start, time.monotonic()

        result, _, _ = run_webhook_fault(
            ctx, fs, name, f"Twilio and SendGrid failing {FAILING:.0%} for {duration:.0f} s "
            "(429, 500, read timeout, closed after answering)", estimates, over_seconds=duration * 0.8, inject=inject)
        for vendor, proxy in fs.proxies.items():
            result.extra[f"{vendor}_proxy"] = proxy.counts()
        return result
