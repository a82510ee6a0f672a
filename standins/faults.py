"""Failures a test queues for a stand-in's next requests: a number of 429s, then chosen
error statuses, one per request. The Twilio and SendGrid stand-ins share this; each
answers the taken status with its own vendor's error body."""
from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter
from pydantic import BaseModel, Field


@dataclass
class InjectedFaults:
    throttle: int = 0
    fail: list[int] = field(default_factory=list)  # HTTP statuses, one per request

    def take(self) -> int | None:
        """The status the next request fails with (429s first), or None."""
        if self.throttle > 0:
            self.throttle -= 1
            return 429
        return self.fail.pop(0) if self.fail else None


class FaultsControl:
    """`throttle_next` / `fail_next` for a stand-in state that has `_lock` and
    `modes` (an InjectedFaults)."""

    def throttle_next(self, count: int) -> None:
        with self._lock:
            self.modes.throttle += count

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self.modes.fail.extend([status] * count)

    def take_injected_status(self) -> int | None:
        with self._lock:
            return self.modes.take()


class CountIn(BaseModel):
    count: int = Field(1, ge=0)
    status: int = 500
    after_seconds: float = 0.0  # Twilio's /drop only


def add_fault_routes(router: APIRouter, state: FaultsControl) -> None:
    """POST /throttle and /fail on a stand-in's control router."""

    @router.post("/throttle")
    def throttle(c: CountIn) -> dict:
        state.throttle_next(c.count)
        return {"throttle": c.count}

    @router.post("/fail")
    def fail(c: CountIn) -> dict:
        state.fail_next(c.count, c.status)
        return {"fail": c.count, "status": c.status}
