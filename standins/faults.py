"""Failures a test queues for a stand-in's next requests. The Twilio and SendGrid
stand-ins share this; each answers a failure status with its own vendor's error body.

Two kinds, because they mean opposite things to a sender:
- before the work (`throttle`, `fail`): the request is refused and nothing is created;
- after the work (`drop`, `fail_after`): the message is created / the mail accepted, and
  then the answer is lost (connection closed unanswered, after a wait that can outlast
  the client's read timeout) or is an error status. The sender cannot tell these from
  the first kind by the status alone: that is what makes them ambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter
from pydantic import BaseModel, Field

from standins.connection_drop import request_drop


@dataclass
class InjectedFaults:
    throttle: int = 0
    fail: list[int] = field(default_factory=list)  # HTTP statuses, one per request
    drop: list[float] = field(default_factory=list)  # seconds before closing, one per request
    fail_after: list[int] = field(default_factory=list)  # statuses answered after doing the work

    def take(self) -> int | None:
        """The status the next request fails with (429s first), or None."""
        if self.throttle > 0:
            self.throttle -= 1
            return 429
        return self.fail.pop(0) if self.fail else None


class FaultsControl:
    """Fault controls for a stand-in state that has `_lock` and `modes` (an InjectedFaults)."""

    def throttle_next(self, count: int) -> None:
        with self._lock:
            self.modes.throttle += count

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self.modes.fail.extend([status] * count)

    def drop_next(self, count: int, after_seconds: float = 0.0) -> None:
        """The next N valid requests are carried out, then the connection closes unanswered."""
        with self._lock:
            self.modes.drop.extend([after_seconds] * count)

    def fail_after_work_next(self, count: int, status: int = 500) -> None:
        """The next N valid requests are carried out, then answered with `status`."""
        with self._lock:
            self.modes.fail_after.extend([status] * count)

    def take_injected_status(self) -> int | None:
        with self._lock:
            return self.modes.take()

    def lose_answer(self, scope: dict) -> int | None:
        """Called once the work is done: arranges a drop of this request's connection, or
        returns the error status to answer instead of success (None: answer normally)."""
        with self._lock:
            drop = self.modes.drop.pop(0) if self.modes.drop else None
            status = self.modes.fail_after.pop(0) if drop is None and self.modes.fail_after else None
        if drop is not None:
            request_drop(scope, drop)
        return status


class CountIn(BaseModel):
    count: int = Field(1, ge=0)
    status: int = 500
    after_seconds: float = 0.0  # /drop only


def add_fault_routes(router: APIRouter, state: FaultsControl) -> None:
    """POST /throttle, /fail, /drop and /fail-after-work on a stand-in's control router."""

    @router.post("/throttle")
    def throttle(c: CountIn) -> dict:
        state.throttle_next(c.count)
        return {"throttle": c.count}

    @router.post("/fail")
    def fail(c: CountIn) -> dict:
        state.fail_next(c.count, c.status)
        return {"fail": c.count, "status": c.status}

    @router.post("/drop")
    def drop(c: CountIn) -> dict:
        state.drop_next(c.count, c.after_seconds)
        return {"drop": c.count, "after_seconds": c.after_seconds}

    @router.post("/fail-after-work")
    def fail_after_work(c: CountIn) -> dict:
        state.fail_after_work_next(c.count, c.status)
        return {"fail_after_work": c.count, "status": c.status}


def add_bookkeeping_routes(router: APIRouter, state) -> None:
    """GET/DELETE /requests (what the stand-in was asked), GET /deliveries (webhooks it
    sent) and POST /reset, for a CRM stand-in whose state has those methods."""

    @router.get("/requests")
    def request_counts() -> dict:
        return state.request_counts()

    @router.delete("/requests")
    def reset_request_counts() -> dict:
        state.reset_request_counts()
        return state.request_counts()

    @router.get("/deliveries")
    def deliveries() -> list[dict]:
        return state.deliveries.items()

    @router.post("/reset")
    def reset() -> dict:
        state.reset()
        return {"reset": True}
