"""Faults of the product's own processes and of its database."""
from __future__ import annotations

import time

from faults.common import Context
from faults.ledger import Result
from faults.scenario import run_webhook_fault, sleep_until, wait_until
from faults.stack import FaultStack
from faults.traffic import plan_estimates

BURST = 1000
BURST_SECONDS = 10.0
BURST_SHOPS = 20  # 50 webhooks per shop: well under the receiver's 600/minute per shop


def receiver_kill(ctx: Context) -> Result:
    """SIGKILL the receiver after 40 % of a 1,000-webhook burst was acknowledged; the suite
    starts it again 2 s later. The sender retries whatever was not acknowledged with the
    same webhook-id, as ShopMonkey does."""
    name = "receiver-kill"
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=BURST_SHOPS, seed=ctx.seed, keep=ctx.keep) as fs:
        fs.start()
        estimates = plan_estimates(fs, BURST)

        def inject(sender):
            wait_until(lambda: sender.acked >= 0.4 * BURST, 120, "40 % of the burst acknowledged")
            start = time.monotonic()
            fs.kill("receiver")
            time.sleep(2)
            fs.restart("receiver", wait=False)
            end = time.monotonic()
            fs.stack.wait_ready("receiver")
            return start, end

        result, _, sender = run_webhook_fault(ctx, fs, name, "receiver SIGKILL mid-burst of 1,000 webhooks",
                                              estimates, over_seconds=BURST_SECONDS, inject=inject)
        result.checks[f"{sender.sent - sender.acked} webhook(s) never acknowledged"] = sender.acked == sender.sent
        return result


def worker_kill(ctx: Context) -> Result:
    """SIGKILL the dispatcher and the Dagster daemon once 30 % of a 1,000-estimate burst
    has its first SMS; the suite starts both again 3 s later (as a supervisor would)."""
    name = "worker-kill"
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=BURST_SHOPS, seed=ctx.seed, keep=ctx.keep) as fs:
        fs.start()
        estimates = plan_estimates(fs, BURST)

        def inject(sender):
            wait_until(lambda: len(fs.standins.twilio.messages) >= 0.3 * BURST, 180, "30 % of the first SMS sent")
            start = time.monotonic()
            fs.kill("dispatcher")
            fs.kill("daemon")
            time.sleep(3)
            fs.restart("dispatcher", wait=False)
            fs.restart("daemon", wait=False)
            end = time.monotonic()
            fs.stack.wait_ready("daemon", timeout=180)
            return start, end

        result, _, _ = run_webhook_fault(ctx, fs, name, "dispatcher and Dagster daemon SIGKILL mid-burst",
                                         estimates, over_seconds=BURST_SECONDS, inject=inject)
        result.extra["sms_before_kill_at_least"] = int(0.3 * BURST)
        return result


def postgres_stop(ctx: Context) -> Result:
    """A trickle of estimates (2 a second over 5 shops); PostgreSQL is stopped (fast
    shutdown) for 30 s in the middle, then started again on the same data directory.
    The receiver should answer 503 quickly while it is down; the sender retries."""
    name = "postgres-stop"
    before, down, after = ctx.seconds(20, 10), ctx.seconds(30, 30), ctx.seconds(20, 10)
    rate = 2.0
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=5, seed=ctx.seed, keep=ctx.keep) as fs:
        fs.start()
        total = before + down + after
        estimates = plan_estimates(fs, int(total * rate))

        def inject(sender):
            began = time.monotonic()
            sleep_until(began + before)
            start = time.monotonic()
            fs.stop_database()
            sleep_until(start + down)
            fs.start_database()
            return start, time.monotonic()

        result, _, sender = run_webhook_fault(ctx, fs, name, f"PostgreSQL stopped {down:.0f} s under a trickle",
                                              estimates, over_seconds=total, inject=inject)
        slowest_503 = sender.summary()["slowest_answer_s"].get("503")
        timeouts = sender.outcomes.get("timeout", 0)
        result.extra["receiver_503s"] = sender.outcomes.get("503", 0)
        result.extra["slowest_503_s"] = slowest_503
        result.extra["attempts_timed_out_15s"] = timeouts
        result.checks["receiver answered 503 within 1 s while the database was down"] = (
            (slowest_503 is None or slowest_503 <= 1.0) and timeouts == 0)
        return result
