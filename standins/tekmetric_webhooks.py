"""Tekmetric webhook deliveries, as partners describe them, and the faults tests need.

Tekmetric posts `{"event": "<sentence>", "data": {<repair order>}}` to the URL a shop
registered (our per-shop `...?token=...`), with no signature header. Nothing is known
about retries, so the emitter makes one attempt per copy. What goes wrong in practice
can be switched on: deliveries dropped (some shops never get any), delayed (Tekmetric's
are ~13 s late) and duplicated.
"""
from __future__ import annotations

import json
import random
import threading
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from standins.outbox import Outbox
from standins.outgoing import OutgoingCalls

USER_AGENT = "Tekmetric-Webhooks (stand-in)"  # a guess: partners saw no custom headers


def redact_token(url: str) -> str:
    """The URL with its token hidden: it is the shop's credential."""
    parts = urlsplit(url)
    query = [(k, "***" if k == "token" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


class Delivery:
    """One copy of one event to one URL (a duplicated event is two deliveries)."""

    def __init__(self, url: str, body: dict, *, copy: int, delay: float, dropped: bool) -> None:
        self.id = str(uuid.uuid4())  # ours, for the record: Tekmetric sends no delivery id
        self.url = url
        self.body = body
        self.copy = copy
        self.delay = delay
        self.dropped = dropped
        self.status: int | None = None
        self.error: str | None = None
        self._done = threading.Event()
        if dropped:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float = 10.0) -> "Delivery":
        if not self._done.wait(timeout):
            raise TimeoutError(f"webhook delivery {self.id} still running after {timeout}s")
        return self

    def as_dict(self) -> dict:
        data = self.body.get("data") or {}
        order = data.get("repairOrder") or data
        return {"id": self.id, "url": redact_token(self.url), "event": self.body.get("event"),
                "order_id": order.get("id"), "updatedDate": order.get("updatedDate"), "copy": self.copy,
                "delay": self.delay, "dropped": self.dropped, "status": self.status, "error": self.error,
                "done": self.done}


class WebhookEmitter:
    def __init__(self, outgoing: OutgoingCalls, record: Outbox) -> None:
        self.outgoing = outgoing
        self.record = record
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.delay_seconds = 0.0  # every delivery waits this long before it is posted
            self.duplicate_gap_seconds = 0.05  # between the two copies of a duplicated event
            self.drop_next = 0
            self.duplicate_next = 0
            self.drop_rate = 0.0
            self.duplicate_rate = 0.0
            self._random = random.Random(0)

    def set_faults(self, *, drop_next: int | None = None, duplicate_next: int | None = None,
                   delay_seconds: float | None = None, drop_rate: float | None = None,
                   duplicate_rate: float | None = None, seed: int | None = None) -> dict:
        """Counts apply to the next events emitted; rates to every event after (seeded,
        so a run is repeatable)."""
        for name, value in (("drop_rate", drop_rate), ("duplicate_rate", duplicate_rate)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        with self._lock:
            if drop_next is not None:
                self.drop_next = max(0, drop_next)
            if duplicate_next is not None:
                self.duplicate_next = max(0, duplicate_next)
            if delay_seconds is not None:
                self.delay_seconds = max(0.0, delay_seconds)
            if drop_rate is not None:
                self.drop_rate = drop_rate
            if duplicate_rate is not None:
                self.duplicate_rate = duplicate_rate
            if seed is not None:
                self._random = random.Random(seed)
            return self.faults()

    def faults(self) -> dict:
        return {"drop_next": self.drop_next, "duplicate_next": self.duplicate_next,
                "delay_seconds": self.delay_seconds, "drop_rate": self.drop_rate,
                "duplicate_rate": self.duplicate_rate}

    def emit(self, url: str, body: dict, *, wait: bool) -> list[Delivery]:
        """One event: its deliveries (none posted when dropped, two when duplicated)."""
        with self._lock:
            # A dropped event is one lost delivery; it does not use up a duplicate.
            dropped = self._take("drop_next") or self._random.random() < self.drop_rate
            doubled = not dropped and (self._take("duplicate_next") or self._random.random() < self.duplicate_rate)
            copies = 2 if doubled else 1
            delay = self.delay_seconds
            gap = self.duplicate_gap_seconds
        deliveries = [self.record.add(Delivery(url, body, copy=i + 1, delay=delay + i * gap, dropped=dropped))
                      for i in range(copies)]
        for d in deliveries:
            if not d.dropped:
                self.outgoing.submit(lambda d=d: self._post(d), delay=d.delay)
        if wait:
            for d in deliveries:
                d.wait(d.delay + 15.0)
        return deliveries

    def _take(self, counter: str) -> bool:
        left = getattr(self, counter)
        if left > 0:
            setattr(self, counter, left - 1)
            return True
        return False

    def _post(self, delivery: Delivery) -> None:
        try:
            result = self.outgoing.post(delivery.url, content=json.dumps(delivery.body).encode(),
                                        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT})
            delivery.status, delivery.error = result.status, result.error
        finally:
            delivery._done.set()
            self.record.touch()
