"""ShopMonkey failing: unreachable, hanging, a revoked key, a rate limit, and rows moving
while the poll pages."""
from __future__ import annotations

import datetime as dt
import time

from faults.common import Context, say
from faults.ledger import Ledger, Result
from faults.scenario import run_webhook_fault, sleep_until, wait_until
from faults.stack import FaultStack
from faults.traffic import plan_estimates


def _outage(ctx: Context, name: str, mode: str, what: str) -> Result:
    duration = ctx.seconds(300, 60)
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=5, proxies=("shopmonkey",), seed=ctx.seed, keep=ctx.keep,
                    hold_seconds=duration) as fs:
        fs.start()
        crm = fs.proxies["shopmonkey"]
        estimates = plan_estimates(fs, 50)
        start = time.monotonic()
        crm.set_mode(mode)

        def inject(sender):
            sleep_until(start + duration)
            crm.set_mode("pass")
            return start, time.monotonic()

        # The estimates arrive during the first half of the outage, so that each has
        # failed for a while before ShopMonkey is back.
        result, _, _ = run_webhook_fault(ctx, fs, name, f"{what} for {duration:.0f} s while 50 estimates arrive",
                                         estimates, over_seconds=duration / 2, inject=inject)
        result.extra["shopmonkey_proxy"] = crm.counts()
        return result


def crm_refused(ctx: Context) -> Result:
    """ShopMonkey refuses connections (nothing listens) for 5 minutes (60 s with --short)."""
    return _outage(ctx, "crm-refused", "refuse", "ShopMonkey refusing connections")


def crm_hang(ctx: Context) -> Result:
    """ShopMonkey accepts connections and never answers for 5 minutes (60 s with --short)."""
    return _outage(ctx, "crm-hang", "hang", "ShopMonkey hanging")


def key_revoked(ctx: Context) -> Result:
    """One shop's key is refused (401) for 5 minutes (60 s with --short) while 30 of its
    estimates arrive (and 10 of another shop); then the key works again and the operator
    runs `shops update SLUG --shopmonkey-api-key KEY`, as after fixing it."""
    name = "key-revoked"
    duration = ctx.seconds(300, 60)
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=2, seed=ctx.seed, keep=ctx.keep) as fs:
        fs.start()
        victim, other = fs.shops
        key = victim.shopmonkey_api_key.get_secret_value()
        estimates = plan_estimates(fs, 40, [victim, victim, victim, other])
        start = time.monotonic()
        fs.standins.shopmonkey.revoke_key(key)
        waiting: dict[str, int] = {}

        def inject(sender):
            sleep_until(start + duration)
            with fs.connect() as conn:
                waiting.update({r["status"]: r["n"] for r in conn.execute(
                    "SELECT status, count(*) AS n FROM inbox_events WHERE tenant_id = %s GROUP BY status",
                    (victim.id,))})
            fs.standins.shopmonkey.restore_key(key)
            fixed = fs.cli("shops", "update", victim.slug, "--shopmonkey-api-key", key)
            if fixed.returncode != 0:
                raise RuntimeError(f"shops update failed: {fixed.stderr or fixed.stdout}")
            return start, time.monotonic()

        result, _, _ = run_webhook_fault(ctx, fs, name, f"a shop's key revoked for {duration:.0f} s, then fixed "
                                         "(stand-in restore + shops update)", estimates,
                                         over_seconds=duration / 2, inject=inject)
        result.extra["victim_inbox_events_when_fixed"] = waiting
        return result


def crm_rate_limit(ctx: Context) -> Result:
    """ShopMonkey allows the shop's key 2 requests a second while 300 of its estimates
    arrive within 10 s; the limit is lifted after 5 minutes. A 429 must be a pace, not a
    failure: nothing may be given up meanwhile, and the backlog drains within a minute of
    the lift. With --short the limit lasts 60 s and the burst shrinks with it (60
    estimates): the same scenario, a burst about what the limited key can fetch while
    it lasts. 300 estimates behind a 60-s limit would leave ~570 requests for after it,
    57 s at the shop's base pace of 10/s: a target no pacing can meet."""
    name = "crm-rate-limit"
    duration = ctx.seconds(300, 60)
    count = round(300 * duration / 300)
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=1, seed=ctx.seed, keep=ctx.keep) as fs:
        fs.start()
        crm = fs.standins.shopmonkey
        key = fs.shops[0].shopmonkey_api_key.get_secret_value()
        estimates = plan_estimates(fs, count)
        crm.reset_request_counts()
        crm.set_rate_limit(2, 1.0, api_key=key)
        start = time.monotonic()
        during: dict = {}

        def inject(sender):
            sleep_until(start + duration)
            counts = crm.request_counts()
            during.update(requests=counts["total"], answered_429=counts["rate_limited"],
                          first_sms_sent=len(fs.standins.twilio.messages))
            crm.set_rate_limit(None, api_key=key)
            return start, time.monotonic()

        result, _, _ = run_webhook_fault(ctx, fs, name, f"ShopMonkey limiting the shop's key to 2 requests/s for "
                                         f"{duration:.0f} s, {count} estimates in 10 s", estimates, over_seconds=10,
                                         inject=inject)
        result.extra["while_limited"] = during
        return result


def poll_paging(ctx: Context) -> Result:
    """150 orders changed 7-10 minutes ago (older than the poll's 2-minute overlap) and
    never announced by webhook; while the poll reads its first page, one order of that
    page is edited, before the second page is read. Every order must become a lead."""
    name = "poll-paging"
    count = 150
    with FaultStack(name, ctx.run_dir, ctx.ports, shops=1, seed=ctx.seed, keep=ctx.keep) as fs:
        shop = fs.shops[0]
        key = shop.shopmonkey_api_key.get_secret_value()
        with fs.connect() as conn:  # connected an hour ago, so its first poll reaches back over the orders
            conn.execute("UPDATE tenants SET created_at = now() - interval '1 hour' WHERE id = %s", (shop.id,))
        base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)

        def stamp(i: int) -> dict:
            at = (base + dt.timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return {"createdDate": at, "updatedDate": at}

        estimates = [e.create() for e in plan_estimates(fs, count, overrides=stamp)]
        edit = fs.standins.shopmonkey.edit_between_pages(key, estimates[0].order_id,
                                                        {"complaint": "Grinding noise, and a squeal now"})
        ledger = Ledger(fs, estimates, expect="all")
        fs.start()
        start = time.monotonic()
        wait_until(lambda: edit.fired_at is not None, 180, "the poll to read its second page")
        fault_end = edit.fired_at
        say(f"{name}: order edited between the poll's pages; waiting for the backlog (at most {ctx.recovery_cap:.0f} s)")
        recovery = ledger.wait_drained(fault_end, ctx.recovery_cap)
        result = ledger.result(name, f"{count} orders changed outside the poll's overlap, one edited between "
                               "two page reads", recovery_s=None if recovery is None else round(recovery, 1),
                               fault_s=fault_end - start, waited_s=time.monotonic() - fault_end)
        result.extra["list_requests"] = fs.standins.shopmonkey.request_counts()["by_path"].get("/v3/order", 0)
        return result
