"""Receiver throughput: signed webhooks durably acknowledged per second, and latency,
against a bare FastAPI endpoint and a naive verify-and-INSERT endpoint, all served the
same way (uvicorn, one process) and loaded by wrk from a separate process over loopback.

    ./dev bench receiver [--seconds 10] [--connections 16]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import psycopg

from benchmarks.common import (make_shops, machine, process_cpu, say, signed_order_webhook, spawn, start_database, stop,
                               venv_bin)
from tests.support import free_port

TARGETS = {
    "bare": "benchmarks.baseline_apps:bare",
    "naive": "benchmarks.baseline_apps:naive",
    "receiver": "webhook_receiver.main:create_app",
}


def write_requests(prefix: Path, secret: str, threads: int, per_thread: int) -> None:
    for t in range(threads):
        with open(f"{prefix}-{t}.tsv", "w") as out:
            for _ in range(per_thread):
                headers, body = signed_order_webhook(secret)
                out.write(f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t"
                          f"{headers['webhook-signature']}\t{body.decode()}\n")


def parse_wrk(text: str) -> dict:
    def seconds(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", text, re.M))
    pct = {}
    for q, raw in lat.items():
        value, unit = re.match(r"([\d.]+)(\w+)", raw).groups()
        pct[int(q)] = seconds(value, unit) * 1000
    errors = re.search(r"Socket errors: (.*)", text)
    return {"rps": rps, "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50_ms": pct.get(50), "p99_ms": pct.get(99), "socket_errors": errors.group(1) if errors else ""}


def guard_cost_us(calls: int = 200_000) -> float:
    """CPU time per request of the per-shop rate limit alone, budget in hand (what every
    webhook pays; a lease, once per many requests, is not in it)."""
    from webhook_receiver.shop_budget import Grant, ShopBudgets

    async def lease(request):
        return Grant(granted=request.wanted, window=1, window_left_s=3600.0, retry_after_s=0.0)

    async def spend() -> float:
        budgets = ShopBudgets("10000000/minute", lease)
        started = time.process_time()
        for _ in range(calls):
            await budgets.admit("shopmonkey", "a-shop")
        return (time.process_time() - started) / calls * 1e6

    return asyncio.run(spend())


def hot_route_cost_us(requests: int = 20_000, rounds: int = 3) -> float:
    """CPU time per webhook of the receiver's own code on the hot route, without the HTTP
    server or the database: the app as create_app builds it (guards, hot route, handler,
    answer) called as uvicorn would call it, with the shop cached, budget in hand and the
    writer replaced by one that answers at once after serialising the event as the real
    one does. The best of `rounds` rounds: one process, one thread, no I/O, so it hardly
    moves with the machine's load, unlike req/s."""
    import base64
    import os as _os

    from pydantic import SecretStr

    from lead_orchestrator.settings import Settings
    from lead_orchestrator.store.shops import Shop, ShopMonkeyCredentials
    from webhook_receiver.main import create_app
    from webhook_receiver.shop_budget import Grant

    secret = "whsec_" + base64.b64encode(_os.urandom(24)).decode()
    shop = Shop(id=1, slug="a-shop", name="A shop", credentials=ShopMonkeyCredentials(webhook_secret=SecretStr(secret)))
    app = create_app(Settings(database_url="postgresql:///unused", webhook_rate_limit="10000000/minute"), db=object())

    class AnsweringWriter:
        stored = 0

        async def store(self, tenant_id, event):
            event.batch_item(0, tenant_id)
            self.stored += 1
            return self.stored

    async def lease(request):
        return Grant(granted=request.wanted, window=1, window_left_s=3600.0, retry_after_s=0.0)

    app.state.inbox_writer = AnsweringWriter()
    app.state.shops.entries[shop.slug] = (time.monotonic() + 3600, shop)
    app.rate_budgets._lease = lease
    deliveries = []
    for _ in range(requests):
        headers, body = signed_order_webhook(secret)
        raw = [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]
        deliveries.append((raw + [(k.encode(), v.encode()) for k, v in headers.items()], body))
    statuses: dict[int, int] = {}

    async def deliver(headers, body) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": f"/webhooks/shopmonkey/{shop.slug}",
                 "raw_path": f"/webhooks/shopmonkey/{shop.slug}".encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    async def measure() -> float:
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            for headers, body in deliveries:
                await deliver(headers, body)
            best = min(best, (time.process_time() - started) / len(deliveries) * 1e6)
        return best

    cost = asyncio.run(measure())
    if set(statuses) != {202}:
        raise RuntimeError(f"the hot route answered {statuses}")
    return cost


def run_one(name: str, url: str, env: dict, shop, args, workdir: Path) -> dict:
    port = free_port()
    argv = [venv_bin("uvicorn"), TARGETS[name], "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
            "--workers", str(args.workers)]
    if name == "receiver":
        argv.append("--factory")
    # The per-shop rate limit guards production; this benchmark measures raw capacity.
    proc = spawn(argv, {**env, "DATABASE_URL": url, "NAIVE_SECRET": shop.webhook_secret.get_secret_value(),
                        "WEBHOOK_RATE_LIMIT": "10000000/minute"},
                 workdir / f"{name}.log")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{base}/webhooks/shopmonkey/{shop.slug}", content=b"{}", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start: {(workdir / f'{name}.log').read_text()[-2000:]}")
                time.sleep(0.2)
        prefix = workdir / f"req-{name}"
        per_thread = int(args.max_rps * args.seconds * 1.2 / args.threads) + 1000
        write_requests(prefix, shop.webhook_secret.get_secret_value(), args.threads, per_thread)
        # Warm up, then measure.
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(Path(__file__).with_name("wrk_signed.lua")),
                        f"{base}/", "--", str(workdir / "warm"), f"/webhooks/shopmonkey/{shop.slug}"],
                       capture_output=True, text=True) if (workdir / "warm-0.tsv").exists() else None
        # The server's own CPU per request (every thread of its process): unlike req/s, it
        # hardly moves when other work shares the cores.
        server = psutil.Process(proc.pid)
        cpu_before = process_cpu(server)
        out = subprocess.run(
            ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
             "-s", str(Path(__file__).with_name("wrk_signed.lua")), f"{base}/", "--", str(prefix),
             f"/webhooks/shopmonkey/{shop.slug}"], capture_output=True, text=True, check=True).stdout
        cpu = process_cpu(server) - cpu_before
        result = parse_wrk(out)
        result["raw"] = out
        result["cpu_us"] = cpu / max(1, result["requests"]) * 1e6
        if name == "receiver":  # the rate limit's statements, to compare with the requests
            exposed = httpx.get(f"{base}/metrics", timeout=5).text
            leases = re.findall(r'^lead_webhook_rate_leases_total\{result="(\w+)"\} ([\d.e+]+)$', exposed, re.M)
            result["leases"] = int(sum(float(n) for _, n in leases))
            # Group commit: events per batch and time per batch, over the whole run.
            figures = {name: float(value) for name, value in re.findall(
                r"^(lead_inbox_(?:batch_events|commit_seconds)_(?:sum|count)) ([\d.e+]+)$", exposed, re.M)}
            batches = max(1.0, figures.get("lead_inbox_batch_events_count", 0.0))
            result["batch_mean"] = figures.get("lead_inbox_batch_events_sum", 0.0) / batches
            result["commit_ms"] = figures.get("lead_inbox_commit_seconds_sum", 0.0) / batches * 1000
        return result
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench receiver", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes for every server")
    parser.add_argument("--max-rps", type=int, default=12000, help="sizes the pre-signed request files")
    parser.add_argument("--only", choices=list(TARGETS), action="append")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        say("wrk is not installed: apt-get install wrk (Debian/Ubuntu), then run again")
        return 2
    say(f"machine: {machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"rate-limit guard alone: {guard_cost_us():.2f} µs of CPU per request")
    say(f"hot route alone (no HTTP server, no database): {hot_route_cost_us():.1f} µs of CPU per request")
    server, url = start_database()
    workdir = Path(tempfile.mkdtemp(prefix="lead-bench-receiver-"))
    try:
        warm_shop = make_shops(url, 1, prefix="warm")[0]
        write_requests(workdir / "warm", warm_shop.webhook_secret.get_secret_value(), 1, 4000)
        results = {}
        for name in args.only or TARGETS:
            shop = make_shops(url, 1, prefix=f"rcv-{name}")[0]
            say(f"{name}: {args.connections} connections for {args.seconds}s")
            results[name] = r = run_one(name, url, {}, shop, args, workdir)
            say(f"{name}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"non-2xx {r['non2xx']} {r['socket_errors']}; server CPU {r['cpu_us']:.0f} µs per request")
            if name == "receiver":
                with psycopg.connect(url) as conn:
                    stored = conn.execute("SELECT count(*) FROM inbox_events WHERE tenant_id = %s",
                                          (shop.id,)).fetchone()[0]
                acked = r["requests"] - r["non2xx"]
                say(f"receiver: {acked} acknowledged, {stored} stored in the inbox"
                    f" ({'all committed' if stored >= acked else 'MISSING EVENTS'});"
                    f" {r['leases']} rate-limit leases from PostgreSQL")
                say(f"receiver: {r['batch_mean']:.1f} events per inbox batch on average, "
                    f"{r['commit_ms']:.2f} ms per batch")
        if "bare" in results and "receiver" in results:
            ratio = results["receiver"]["rps"] / results["bare"]["rps"]
            vs_naive = results["receiver"]["rps"] / results["naive"]["rps"] if "naive" in results else float("nan")
            say(f"receiver = {ratio:.0%} of bare, {vs_naive:.2f}x naive; p99 {results['receiver']['p99_ms']:.2f} ms "
                f"(targets: >= 50% of bare, p99 <= 15 ms)")
        say(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
