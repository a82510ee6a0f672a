"""Records when each message reaches a stand-in's outbox (monotonic clock)."""
from __future__ import annotations

import threading
import time
from collections import defaultdict


class Arrivals:
    def __init__(self, outbox, key, interval: float = 0.005):
        self.outbox, self.key, self.interval = outbox, key, interval
        self.times: dict[str, list[float]] = defaultdict(list)
        self._seen = len(outbox)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if len(self.outbox) > self._seen:
                now = time.monotonic()
                new = self.outbox.items_since(self._seen)
                self._seen += len(new)
                for item in new:
                    self.times[self.key(item)].append(now)
            time.sleep(self.interval)

    def first(self, key: str) -> float | None:
        found = self.times.get(key)
        return found[0] if found else None

    def __enter__(self) -> "Arrivals":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
