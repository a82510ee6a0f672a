"""The per-shop webhook rate limit across receiver processes (webhook_receiver/shop_budget.py,
sql/0019_webhook_rate_windows.sql): the bookkeeping of leased budget without I/O, the
lease function in PostgreSQL, and two real receiver processes hammered for one shop."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support import ThreadedServer, free_port, wait_for
from tests.test_receiver_shopmonkey import order_body, signed_headers
from webhook_receiver.shop_budget import CLEAN_AT_MOST, CLEAN_EVERY_S, Grant, LeaseRequest, ShopBudgets

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedLease:
    """Answers leases with `answer(request)`; records the requests."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: LeaseRequest) -> Grant:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        result = self.answer(request)
        if isinstance(result, BaseException):
            raise result
        return result


def granting(n: int, window: int = 7, left: float = 30.0):
    return lambda request: Grant(granted=min(n, request.wanted), window=window, window_left_s=left, retry_after_s=0)


def scripted(rate: str, answer) -> tuple[ShopBudgets, ScriptedLease, Clock]:
    lease, clock = ScriptedLease(answer), Clock()
    return ShopBudgets(rate, lease, clock=clock), lease, clock


def run(coro):
    return asyncio.run(coro)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- bookkeeping, without I/O --------------------------------------------------------

def test_leased_requests_are_spent_from_memory_and_renewed_before_they_run_out():
    budgets, lease, clock = scripted("800/minute", granting(1000))
    assert (budgets.limit, budgets.period_s, budgets.lease_size) == (800, 60, 100)

    async def scenario():
        assert await budgets.admit("shopmonkey", "a") is None
        assert len(lease.requests) == 1 and lease.requests[0].wanted == 100
        for _ in range(73):
            assert await budgets.admit("shopmonkey", "a") is None
        await settle()
        assert len(lease.requests) == 1  # 74 admitted on one lease, 26 in hand
        assert await budgets.admit("shopmonkey", "a") is None  # a quarter left: ask in advance
        await settle()
        assert len(lease.requests) == 2
        lease.gate = asyncio.Event()  # closed: a request that waited for a lease would hang

        async def spend(n):
            return [await budgets.admit("shopmonkey", "a") for _ in range(n)]

        # The 25 in hand, then the 100 of the new lease, never waiting.
        assert await asyncio.wait_for(spend(125), timeout=5) == [None] * 125
        await settle()
        assert len(lease.requests) == 3  # asked in advance again
        r = lease.requests[0]
        assert (r.vendor, r.shop, r.limit, r.period_s) == ("shopmonkey", "a", 800, 60)

    run(scenario())


def test_a_refusal_is_remembered_until_there_is_room_again():
    refused = lambda request: Grant(granted=0, window=7, window_left_s=10.0, retry_after_s=12.5)  # noqa: E731
    budgets, lease, clock = scripted("5/minute", refused)

    async def scenario():
        assert await budgets.admit("twilio", "a") == pytest.approx(12.5)
        clock.now += 2
        for _ in range(50):
            assert await budgets.admit("twilio", "a") == pytest.approx(10.5)
        assert len(lease.requests) == 1  # a flood past the limit costs the database nothing
        clock.now += 11
        lease.answer = granting(1, window=8)
        assert await budgets.admit("twilio", "a") is None
        assert len(lease.requests) == 2

    run(scenario())


def test_after_a_refusal_the_budget_in_hand_is_spent_without_asking_again():
    budgets, lease, clock = scripted("600/minute", granting(8))

    async def scenario():
        for _ in range(6):  # 2 left, a quarter: ask in advance, refused
            assert await budgets.admit("shopmonkey", "a") is None
        lease.answer = lambda request: Grant(granted=0, window=7, window_left_s=30.0, retry_after_s=20.0)
        await settle()
        assert [await budgets.admit("shopmonkey", "a") for _ in range(3)] == [None, None, pytest.approx(20.0)]
        await settle()
        assert len(lease.requests) == 2

    run(scenario())


def test_requests_that_find_no_budget_share_one_lease():
    budgets, lease, clock = scripted("600/minute", granting(3))

    async def scenario():
        lease.gate = asyncio.Event()
        waiting = [asyncio.ensure_future(budgets.admit("shopmonkey", "a")) for _ in range(10)]
        await settle()
        assert len(lease.requests) == 1
        lease.gate.set()
        return await asyncio.gather(*waiting)

    assert run(scenario()) == [None] * 10
    assert len(lease.requests) == 4  # 3 + 3 + 3 + 1


def test_budget_unused_when_its_window_ends_goes_back_with_the_next_lease():
    budgets, lease, clock = scripted("6000/minute", granting(100, window=7, left=5.0))

    async def scenario():
        for _ in range(10):
            assert await budgets.admit("shopmonkey", "a") is None
        clock.now += 6  # the window is over: 90 were never used
        lease.answer = granting(100, window=8, left=60.0)
        assert await budgets.admit("shopmonkey", "a") is None
        assert (lease.requests[-1].return_window, lease.requests[-1].returned) == (7, 90)
        for _ in range(80):
            await budgets.admit("shopmonkey", "a")
        await settle()
        assert lease.requests[-1].returned == 0  # given back once

    run(scenario())


def test_without_budget_a_lease_error_reaches_the_request_and_the_next_request_tries_again():
    down = psycopg.OperationalError("the database is unreachable")
    budgets, lease, clock = scripted("600/minute", lambda request: down)

    async def scenario():
        with pytest.raises(psycopg.OperationalError):
            await budgets.admit("shopmonkey", "a")
        lease.answer = granting(10)
        assert await budgets.admit("shopmonkey", "a") is None

    run(scenario())


def test_a_failed_lease_in_advance_leaves_the_budget_in_hand():
    budgets, lease, clock = scripted("600/minute", granting(4))

    async def scenario():
        assert await budgets.admit("shopmonkey", "a") is None  # 3 left; a quarter of 4 is 1
        lease.answer = lambda request: psycopg.OperationalError("gone")
        assert [await budgets.admit("shopmonkey", "a") for _ in range(2)] == [None, None]
        await settle()  # the lease in advance failed
        assert await budgets.admit("shopmonkey", "a") is None  # the last one in hand
        with pytest.raises(psycopg.OperationalError):
            await budgets.admit("shopmonkey", "a")

    run(scenario())


def test_expired_rows_are_cleaned_with_one_lease_a_minute():
    budgets, lease, clock = scripted("5/minute", granting(1))

    async def scenario():
        for shop in ("a", "b", "c"):
            await budgets.admit("shopmonkey", shop)
        await settle()  # the leases in advance too
        clock.now += CLEAN_EVERY_S
        await budgets.admit("shopmonkey", "d")

    run(scenario())
    cleaning = [r.shop for r in lease.requests if r.clean_at_most == CLEAN_AT_MOST]
    assert cleaning == ["a", "d"], [(r.shop, r.clean_at_most) for r in lease.requests]


def test_odd_names_get_keys_postgresql_can_hold():
    lease = ScriptedLease(granting(1))
    run(ShopBudgets("5/minute", lease).admit("shopmonkey", "x\x00" + "y" * 500))
    assert lease.requests[0].shop == "x\ufffd" + "y" * 126


@pytest.mark.parametrize("rate", ["0/minute", "nonsense"])
def test_a_rate_that_admits_nothing_is_refused_at_start(rate):
    with pytest.raises(ValueError):
        ShopBudgets(rate, ScriptedLease(granting(1)))


# --- the lease in PostgreSQL -----------------------------------------------------------

def _unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def _lease(db, shop: str, *, limit: int, period_s: int, wanted: int, returned=(None, 0), clean: int = 0) -> Grant:
    from webhook_receiver.guards import database_lease

    request = LeaseRequest(vendor="shopmonkey", shop=shop, limit=limit, period_s=period_s, wanted=wanted,
                           return_window=returned[0], returned=returned[1], clean_at_most=clean)
    return run(database_lease(lambda: db)(request))


def _granted(admin, shop: str) -> dict[int, int]:
    rows = admin.execute("SELECT window_no, granted FROM webhook_rate_windows WHERE shop = %s", (shop,)).fetchall()
    return {r["window_no"]: r["granted"] for r in rows}


def test_processes_leasing_at_once_never_hold_more_than_the_limit(db):
    """Two processes' worth of budgets, each with its own leases, asking concurrently."""
    from webhook_receiver.guards import database_lease

    shop = _unique("shared")

    async def hammer():
        first, second = (ShopBudgets("50/hour", database_lease(lambda: db)) for _ in range(2))
        answers = await asyncio.gather(*(b.admit("shopmonkey", shop) for _ in range(60) for b in (first, second)))
        await asyncio.gather(first.close(), second.close())
        return answers

    answers = run(hammer())
    assert answers.count(None) == 50, answers
    assert all(wait is not None and wait > 0 for wait in answers if wait is not None)


def test_a_lease_is_half_of_what_is_left_and_nothing_once_it_is_gone(db):
    shop = _unique("halves")
    grants = [_lease(db, shop, limit=10, period_s=3600, wanted=100).granted for _ in range(6)]
    assert grants == [5, 3, 1, 1, 0, 0]
    refused = _lease(db, shop, limit=10, period_s=3600, wanted=100)
    assert refused.granted == 0 and 0 < refused.retry_after_s <= 3600 + 360  # this window, then a tenth of the next
    assert 0 < refused.window_left_s <= 3600


def test_the_previous_window_weighs_by_how_much_of_it_is_in_view(db, admin):
    limit, period = 1000, 600
    for _ in range(3):  # again with another shop in the rare case a window's edge passed in between
        shop = _unique("sliding")
        now = admin.execute("SELECT extract(epoch FROM clock_timestamp())::float AS t").fetchone()["t"]
        window = int(now // period)
        admin.execute("INSERT INTO webhook_rate_windows VALUES ('shopmonkey', %s, %s, %s, %s, "
                      "now() + interval '1 hour')", (shop, period, window - 1, limit))
        grant = _lease(db, shop, limit=limit, period_s=period, wanted=limit)
        if grant.window == window:
            break
    in_view = (period - (now - window * period)) / period
    room = int(limit - limit * in_view)
    # Time passed between the two clock readings: the weight can only have shrunk.
    assert -(-room // 2) <= grant.granted <= -(-(room + 3) // 2)


def test_unused_budget_goes_back_to_its_window(db, admin):
    shop = _unique("returned")
    grant = _lease(db, shop, limit=100, period_s=3600, wanted=10)
    assert grant.granted == 10 and _granted(admin, shop) == {grant.window: 10}
    again = _lease(db, shop, limit=100, period_s=3600, wanted=10, returned=(grant.window, 4))
    assert _granted(admin, shop) == {grant.window: 6 + again.granted}


def test_expired_windows_are_deleted_on_the_way(db, admin):
    old, kept = _unique("old"), _unique("kept")
    admin.execute("INSERT INTO webhook_rate_windows VALUES ('twilio', %s, 60, 1, 3, now() - interval '1 second'), "
                  "('twilio', %s, 60, 2, 3, now() + interval '1 minute')", (old, kept))
    grant = _lease(db, _unique("cleaner"), limit=10, period_s=60, wanted=1, clean=CLEAN_AT_MOST)
    assert grant.cleaned >= 1
    assert _granted(admin, old) == {} and _granted(admin, kept) == {2: 3}


# --- one receiver over HTTP ----------------------------------------------------------------

@pytest.fixture
def receiver_with(settings, db):
    from webhook_receiver.main import create_app

    servers = []

    def start(rate: str) -> ThreadedServer:
        server = ThreadedServer(create_app(settings.model_copy(update={"webhook_rate_limit": rate}), db)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def test_a_lease_serves_many_requests(receiver_with, make_shop, admin):
    server, shop = receiver_with("8000/minute"), make_shop()  # leases of 1,000
    secret = shop.webhook_secret.get_secret_value()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(60):
            body = order_body()
            assert client.post(f"/webhooks/shopmonkey/{shop.slug}", content=body,
                               headers=signed_headers(secret, body)).status_code == 202
    # One lease of 1,000 for this shop served all 60 (a second lease would have taken
    # more). Counted in its own rows: the process-wide lease counter also counts what the
    # session's other receivers lease meanwhile (late webhooks of earlier tests).
    assert _granted(admin, shop.slug) and sum(_granted(admin, shop.slug).values()) == 1000


def test_an_unexpected_error_of_the_limit_is_the_one_500_body(receiver_with, caplog):
    server = receiver_with("600/minute")
    app = server._server.config.app

    async def broken(request):
        raise RuntimeError("a bug")

    app.rate_budgets._lease = broken
    response = httpx.post(f"{server.url}/webhooks/shopmonkey/some-shop", content=b"{}", timeout=10)
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "RuntimeError" in caplog.text


# --- two receiver processes ---------------------------------------------------------------

class ReceiverProcess:
    """`uvicorn webhook_receiver.main:create_app --factory`, as deployments run it."""

    def __init__(self, database_url: str, data_dir: Path, rate: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": database_url, "WEBHOOK_RATE_LIMIT": rate, "LEAD_DATA_DIR": str(data_dir),
               "APP_SECRET_KEY": "test-secret-key", "PUBLIC_BASE_URL": self.url}
        self.log = data_dir / f"receiver-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "webhook_receiver.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

    def wait_started(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, interval=0.2, message=f"the receiver on {self.url}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def two_receivers(database_url, tmp_path):
    receivers = [ReceiverProcess(database_url, tmp_path, "40/hour") for _ in range(2)]
    try:
        for receiver in receivers:
            receiver.wait_started()
        yield receivers
    finally:
        for receiver in receivers:
            receiver.stop()


def test_two_receiver_processes_hold_one_limit_together(two_receivers, make_shop, admin):
    shop, other = make_shop(), make_shop()
    secret = shop.webhook_secret.get_secret_value()
    limit, lease_size = 40, 5  # "40/hour": leases of an eighth

    def deliver(i: int):
        receiver = two_receivers[i % 2]
        body = order_body()
        headers = signed_headers(secret, body)
        response = client.post(f"{receiver.url}/webhooks/shopmonkey/{shop.slug}", content=body, headers=headers)
        return i % 2, response, headers["webhook-id"]

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(deliver, range(3 * limit)))
    accepted = [(process, webhook_id) for process, r, webhook_id in answers if r.status_code == 202]
    refused = [r for _, r, _ in answers if r.status_code != 202]
    # No overshoot. Short of the limit only by what a process may still hold leased when the
    # hammering stops (each got 60 deliveries, more than the whole limit, so in practice none).
    assert limit - 2 * lease_size <= len(accepted) <= limit, [r.status_code for _, r, _ in answers]
    assert {process for process, _ in accepted} == {0, 1}  # both processes admitted some
    for r in refused:
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert int(r.headers["retry-after"]) >= 1
    stored = {row["webhook_id"] for row in admin.execute(
        "SELECT webhook_id FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchall()}
    assert stored == {webhook_id for _, webhook_id in accepted}  # every 202 is stored, nothing else
    # Another shop has a budget of its own, through either process.
    for receiver in two_receivers:
        body = order_body()
        headers = signed_headers(other.webhook_secret.get_secret_value(), body)
        assert httpx.post(f"{receiver.url}/webhooks/shopmonkey/{other.slug}", content=body, headers=headers,
                          timeout=30).status_code == 202
