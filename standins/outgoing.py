"""Calls a vendor stand-in makes *to us* (webhooks, status callbacks, events).

They run on a few daemon worker threads so that an API request never waits for a
receiver, and so that a slow or hanging receiver cannot keep the process alive at exit.
"""
from __future__ import annotations

import email.utils
import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import httpx


@dataclass
class PostResult:
    status: int | None  # None when no HTTP answer arrived (refused, reset, timeout)
    error: str | None
    headers: dict[str, str]


class OutgoingCalls:
    def __init__(self, name: str, workers: int = 4, timeout: float = 10.0) -> None:
        self._name = name
        self._workers = workers
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        # Delayed jobs wait in a heap watched by one timer thread, not in a sleeping worker,
        # so that many messages "in flight" do not exhaust the workers.
        self._later: list[tuple[float, int, Callable[[], None]]] = []
        self._later_changed = threading.Condition(self._lock)
        self._order = itertools.count()
        # trust_env=False: receivers are local; a developer's HTTP(S)_PROXY must not catch them.
        self._http = httpx.Client(timeout=timeout, trust_env=False)

    def submit(self, job: Callable[[], None], delay: float = 0.0) -> None:
        with self._lock:
            if self._closing.is_set():
                return
            if not self._threads:  # started lazily: most tests never send anything
                for i in range(self._workers):
                    self._start_thread(self._work, f"{self._name}-out-{i}")
                self._start_thread(self._timer, f"{self._name}-timer")
            if delay > 0:
                heapq.heappush(self._later, (time.monotonic() + delay, next(self._order), job))
                self._later_changed.notify()
                return
        self._queue.put(job)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def pause(self, seconds: float) -> bool:
        """Wait between retries; False means shutting down, so the caller should give up."""
        return not self._closing.wait(max(0.0, seconds))

    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> PostResult:
        try:
            r = self._http.post(url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            return PostResult(None, f"{type(exc).__name__}: {exc}", {})
        return PostResult(r.status_code, None, dict(r.headers))

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._closing.set()
            self._later.clear()
            self._later_changed.notify_all()
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._http.close()

    def _timer(self) -> None:
        with self._lock:
            while not self._closing.is_set():
                if not self._later:
                    self._later_changed.wait()
                    continue
                due = self._later[0][0] - time.monotonic()
                if due > 0:
                    self._later_changed.wait(due)
                    continue
                self._queue.put(heapq.heappop(self._later)[2])

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a broken job must not kill the worker
                logging.getLogger("standins").exception("%s: background job failed", self._name)


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """Parse Retry-After in either of its two forms (delta seconds or HTTP date)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
