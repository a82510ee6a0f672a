"""Estimates made in the ShopMonkey stand-in, and their webhooks delivered to the receiver
the way a CRM's delivery client does it: signed, retried until acknowledged (2xx) with the
same `webhook-id` and body, backing off, honouring Retry-After — within a bound of
attempts and time. Every request is to loopback."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx
from standardwebhooks import Webhook

from faults.common import say

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class Estimate:
    """One estimate of one shop. The order is made in the CRM stand-in at the moment its
    webhook is due (`create()`), as a service writer would: made earlier, the backup poll
    would find it before its webhook and the webhook path would not be tested."""

    shop: object  # lead_orchestrator.store.shops.Shop
    crm: object  # standins.shopmonkey_state.ShopMonkeyState
    overrides: dict | None = None
    order: dict | None = None
    phone: str | None = None
    email: str | None = None
    webhook_id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(12))
    attempts: int = 0
    acked: bool = False
    gave_up: str | None = None

    def create(self) -> "Estimate":
        if self.order is None:
            created = self.crm.create_order(self.shop.shopmonkey_api_key.get_secret_value(), emit_webhook=False,
                                            order=self.overrides)
            customer = created["customer"]
            self.phone = customer["phoneNumbers"][0]["number"]
            self.email = customer["emails"][0]["email"]
            self.order = created["order"]
        return self

    @property
    def order_id(self) -> str | None:
        return self.order["id"] if self.order else None

    def body(self) -> bytes:
        return json.dumps({"apiVersion": "3", "operation": "INSERT", "table": "order", "data": self.order},
                          separators=(",", ":")).encode()


def plan_estimates(fs, count: int, shops: list | None = None, *, overrides=None) -> list[Estimate]:
    """`count` estimates round-robin over `shops` (default: all of the stack's); each
    order is made when its webhook is sent (or by `create()`). `overrides` is a dict of
    order fields, or a function of the estimate's rank returning one."""
    shops = shops or fs.shops
    return [Estimate(shops[i % len(shops)], fs.standins.shopmonkey,
                     overrides(i) if callable(overrides) else overrides) for i in range(count)]


def sign(secret: str, msg_id: str, body: bytes, at: dt.datetime | None = None) -> dict[str, str]:
    at = at or dt.datetime.now(dt.timezone.utc)
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode())}


class WebhookSender:
    """sender = WebhookSender(receiver_url).start(estimates, over_seconds=10); ...; sender.join()"""

    def __init__(self, receiver_url: str, *, concurrency: int = 32, attempt_timeout: float = 15.0,
                 max_attempts: int = 100, budget_s: float = 400.0) -> None:
        self.receiver_url = receiver_url
        self.concurrency, self.attempt_timeout = concurrency, attempt_timeout
        self.max_attempts, self.budget_s = max_attempts, budget_s
        self.outcomes: Counter[str] = Counter()  # per attempt: status code or error kind
        self.latency: dict[str, list[float]] = defaultdict(list)  # seconds per attempt, by outcome
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.estimates: list[Estimate] = []
        self.finished_at: float | None = None

    # ----- counts -----
    @property
    def acked(self) -> int:
        return sum(1 for e in self.estimates if e.acked)

    @property
    def sent(self) -> int:
        return sum(1 for e in self.estimates if e.attempts)

    @property
    def retried(self) -> int:
        return sum(1 for e in self.estimates if e.attempts > 1)

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    # ----- running -----
    def start(self, estimates: list[Estimate], over_seconds: float = 0.0) -> "WebhookSender":
        """Deliver each estimate at its own moment, spread evenly over `over_seconds`."""
        self.estimates = list(estimates)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(over_seconds)), name="webhook-sender",
                                        daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout if timeout is not None else self.budget_s + 60)
        if self._thread.is_alive():
            raise TimeoutError("the webhook sender did not finish within its budget")

    async def _run(self, over_seconds: float) -> None:
        started = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.receiver_url, limits=limits, timeout=self.attempt_timeout,
                                     trust_env=False) as client:
            n = max(1, len(self.estimates))
            await asyncio.gather(*(self._deliver(client, gate, e, started + i * over_seconds / n, started)
                                   for i, e in enumerate(self.estimates)))
        self.finished_at = time.monotonic()
        gave_up = [e for e in self.estimates if not e.acked]
        if gave_up:
            say(f"webhook sender: {len(gave_up)} webhook(s) never acknowledged "
                f"(e.g. {gave_up[0].gave_up})")

    async def _deliver(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, est: Estimate, due: float,
                       started: float) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        est.create()
        body, secret = est.body(), est.shop.webhook_secret.get_secret_value()
        path = f"/webhooks/shopmonkey/{est.shop.slug}"
        delay = 0.2
        while True:
            async with gate:
                est.attempts += 1
                sent_at = time.monotonic()
                outcome, retry_after = await self._attempt(client, path, sign(secret, est.webhook_id, body), body)
                self._record(outcome, time.monotonic() - sent_at)
            if outcome in ("200", "201", "202", "204"):
                est.acked = True
                return
            if outcome.isdigit() and int(outcome) not in RETRY_STATUSES:
                est.gave_up = f"HTTP {outcome}"
                return
            if est.attempts >= self.max_attempts or time.monotonic() - started > self.budget_s:
                est.gave_up = f"last answer {outcome} after {est.attempts} attempts"
                return
            await asyncio.sleep(min(retry_after if retry_after is not None else delay, 10.0))
            delay = min(delay * 2, 5.0)

    async def _attempt(self, client: httpx.AsyncClient, path: str, headers: dict, body: bytes) -> tuple[str, float | None]:
        try:
            response = await client.post(path, content=body, headers=headers)
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.ConnectError:
            return "refused", None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            return "disconnected", None
        retry_after = response.headers.get("retry-after")
        return str(response.status_code), float(retry_after) if retry_after and retry_after.isdigit() else None

    def _record(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.latency[outcome].append(seconds)

    def summary(self) -> dict:
        with self._lock:
            slowest = {k: round(max(v), 2) for k, v in self.latency.items() if v}
            return {"attempts": dict(sorted(self.outcomes.items())), "retried_webhooks": self.retried,
                    "slowest_answer_s": slowest}
