"""What became of each estimate a fault sent: stored, lead, first SMS and email at the
stand-ins, or a recorded reason — and when the backlog drained after the fault ended.

An estimate is *reached* when its first SMS and first email are in the Twilio and
SendGrid stand-ins' outboxes; *explained* when not, but its lead says why (the lead is
not active, or each missing first touch is failed/unknown/skipped/cancelled/deferred);
otherwise it is *lost* once the wait is over: never stored, stored but still waiting,
parked, or dead (given up). The backlog has drained when every expected estimate is
reached or explained, no inbox event is pending, processing or parked, and no send that
is due is still scheduled (a retry) or sending (an outcome not yet recorded).
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from faults.common import RECOVERY_TARGET_S, say
from faults.traffic import Estimate

REASON_STATUSES = frozenset({"failed", "unknown", "skipped", "cancelled", "deferred"})
WAITING_STATUSES = ("pending", "processing", "parked")


@dataclass
class Snapshot:
    at: float
    stored: set[str]
    events: Counter  # inbox event statuses of the expected orders
    leads: dict[str, dict]  # order id -> lead row
    first_touches: dict[int, dict[str, dict]]  # lead id -> channel -> touch
    backlog: int  # inbox events pending, processing or parked, and sends due but unfinished (all shops)
    dead: dict[str, str]  # order id -> error of its dead event
    sms: Counter  # messages per phone number at the Twilio stand-in
    email: Counter  # messages per address at the SendGrid stand-in

    def state(self, est: Estimate) -> str:
        if self.sms[est.phone] and self.email[est.email]:
            return "reached"
        lead = self.leads.get(est.order_id)
        if lead is None:
            return "lost"
        if lead["status"] != "active":
            return "explained"
        touches = self.first_touches.get(lead["id"], {})
        for channel, count in (("sms", self.sms[est.phone]), ("email", self.email[est.email])):
            if not count and touches.get(channel, {}).get("status") not in REASON_STATUSES:
                return "lost"
        return "explained"


@dataclass
class Result:
    """One fault's figures and verdict."""

    name: str
    what: str
    sent: int = 0
    acknowledged: int | None = 0  # None: no webhooks in this fault (the poll must find the changes)
    stored: int = 0
    leads: int = 0
    sms: int = 0
    emails: int = 0
    duplicates: int = 0
    unsent_with_reason: int = 0
    lost: int = 0
    recovery_s: float | None = None  # None: not drained within the wait
    waited_s: float = 0.0
    fault_s: float = 0.0
    exited: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)  # extra pass/fail lines of this fault
    extra: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    def judge(self) -> "Result":
        self.failures = []
        if self.lost:
            self.failures.append(f"{self.lost} estimate(s) lost")
        if self.duplicates:
            self.failures.append(f"{self.duplicates} duplicate message(s)")
        if self.recovery_s is None:
            self.failures.append(f"backlog not drained {self.waited_s:.0f} s after the fault ended")
        elif self.recovery_s > RECOVERY_TARGET_S:
            self.failures.append(f"backlog drained {self.recovery_s:.0f} s after the fault ended (> {RECOVERY_TARGET_S:.0f} s)")
        if self.exited:
            self.failures.append("exited by itself: " + ", ".join(self.exited))
        self.failures += [name for name, ok in self.checks.items() if not ok]
        return self


class Ledger:
    """Follows `estimates` through the stack. `expect="acknowledged"`: only estimates whose
    webhook was acknowledged must arrive (webhook faults); `"all"`: every estimate made in
    the CRM must (changes the poll has to find)."""

    def __init__(self, fs, estimates: list[Estimate], expect: str = "acknowledged") -> None:
        self.fs, self.estimates, self.expect = fs, estimates, expect

    def expected(self) -> list[Estimate]:
        return [e for e in self.estimates if e.order is not None and (self.expect == "all" or e.acked)]

    def snapshot(self) -> Snapshot | None:
        """None while the database cannot be read (e.g. stopped by the fault)."""
        sms = Counter(m["to"] for m in self.fs.standins.twilio.messages.items())
        email = Counter(m["to"][0] for m in self.fs.standins.sendgrid.sent.items())
        self._order_ids = [e.order_id for e in self.estimates if e.order is not None]
        try:
            with self.fs.connect() as conn:
                rows = conn.execute("SELECT object_id, status, error FROM inbox_events "
                                    "WHERE table_name = 'order' AND object_id = ANY(%s)", (self._order_ids,)).fetchall()
                leads = {r["order_id"]: r for r in conn.execute(
                    "SELECT id, order_id, status, status_reason FROM leads WHERE order_id = ANY(%s)",
                    (self._order_ids,)).fetchall()}
                touches: dict[int, dict[str, dict]] = {}
                for t in conn.execute("SELECT lead_id, channel, status, reason FROM touches "
                                      "WHERE step = 0 AND lead_id = ANY(%s)", ([l["id"] for l in leads.values()],)):
                    touches.setdefault(t["lead_id"], {})[t["channel"]] = t
                backlog = conn.execute("SELECT count(*) AS n FROM inbox_events WHERE status = ANY(%s)",
                                       (list(WAITING_STATUSES),)).fetchone()["n"]
                # Sends due now but not finished: a retry waiting, or a reservation whose
                # outcome nobody recorded yet.
                backlog += conn.execute("SELECT count(*) AS n FROM touches WHERE status IN ('scheduled', 'sending') "
                                        "AND send_after <= now()").fetchone()["n"]
        except psycopg.Error:
            return None
        done = {r["object_id"] for r in rows if r["status"] == "done"}
        dead = {r["object_id"]: r["error"] or "" for r in rows if r["status"] == "dead" and r["object_id"] not in done}
        return Snapshot(time.monotonic(), {r["object_id"] for r in rows}, Counter(r["status"] for r in rows),
                        leads, touches, backlog, dead, sms, email)

    def drained(self, snap: Snapshot | None) -> bool:
        if snap is None or snap.backlog:
            return False
        return all(snap.state(e) != "lost" for e in self.expected())

    def wait_drained(self, fault_end: float, cap: float, sender=None) -> float | None:
        """Seconds from `fault_end` until the backlog drained (0 if it already had), or None
        if it did not within `cap` seconds after the fault ended."""
        deadline = fault_end + cap
        while True:
            self.fs.check_processes()
            sending = sender is not None and not sender.done()
            if not sending and self.drained(self.snapshot()):
                return max(0.0, time.monotonic() - fault_end)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)

    def result(self, name: str, what: str, *, sender=None, recovery_s: float | None, fault_s: float,
               waited_s: float, settle: float = 3.0) -> Result:
        time.sleep(settle)  # anything that would be a duplicate has time to arrive
        snap = None
        for _ in range(20):
            snap = self.snapshot()
            if snap is not None:
                break
            time.sleep(1)
        expected = self.expected()
        res = Result(name, what, recovery_s=recovery_s, fault_s=round(fault_s, 1), waited_s=round(waited_s, 1))
        res.sent = sender.sent if sender is not None else len(self.estimates)
        res.acknowledged = sender.acked if sender is not None else None
        res.exited = [f"{e['process']} (code {e['exit_code']})" for e in self.fs.check_processes()]
        if snap is None:
            res.error = "the database could not be read at the end"
            return res.judge()
        phones = {e.phone for e in self.estimates if e.phone}
        emails = {e.email for e in self.estimates if e.email}
        res.stored = sum(1 for e in expected if e.order_id in snap.stored)
        res.leads = sum(1 for e in expected if e.order_id in snap.leads)
        res.sms = sum(n for a, n in snap.sms.items() if a in phones)
        res.emails = sum(n for a, n in snap.email.items() if a in emails)
        res.duplicates = (sum(n - 1 for n in snap.sms.values() if n > 1)
                          + sum(n - 1 for n in snap.email.values() if n > 1))
        states = Counter(snap.state(e) for e in expected)
        res.unsent_with_reason, res.lost = states["explained"], states["lost"]
        res.extra["expected"] = len(expected)
        res.extra["inbox_events"] = dict(snap.events)
        touch_states = Counter(t["status"] for by_channel in snap.first_touches.values() for t in by_channel.values())
        res.extra["first_touches"] = dict(touch_states)
        lost_dead = [snap.dead[e.order_id] for e in expected if e.order_id in snap.dead and snap.state(e) == "lost"]
        if lost_dead:
            res.extra["dead_reasons"] = dict(Counter(_generic(r) for r in lost_dead).most_common(3))
        if sender is not None:
            res.extra["webhooks"] = sender.summary()
        if res.lost:
            say(f"{name}: {res.lost} estimate(s) lost; inbox states {dict(snap.events)}")
        return res.judge()


def _generic(reason: str) -> str:
    """A reason without its ids, so that like reasons are counted together."""
    return re.sub(r"[0-9a-f]{24}", "<id>", reason)[:100]
