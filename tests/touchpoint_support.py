"""Helpers for touch-point tests: a clock the test moves, a vendors wrapper that records
every provider call at the simulated time (and can crash right after one), and leads
created the way ingest creates them."""
from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import dataclass, field

from lead_orchestrator.domain.send_window import SendWindow
from lead_orchestrator.services.touches import plan_sequence

UTC = dt.timezone.utc
_numbers = itertools.count(100)


def unique_phone() -> str:
    """A valid US number no other test uses: exchange 200, unlike the stand-ins' defaults
    (555-01xx). Only ever sent to the stand-ins."""
    n = next(_numbers)
    area = ("212", "312", "213", "617", "303", "404", "206", "702")[n % 8]
    return f"+1{area}{2000000 + n:07d}"


def unique_email(tag: str = "c") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


class SimClock:
    """The time as the test says it is; `sleep` moves it instead of waiting."""

    def __init__(self, start: dt.datetime):
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    def set(self, moment: dt.datetime) -> None:
        assert moment >= self.now, "the clock never goes back"
        self.now = moment

    def advance(self, **delta) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


class SimulatedCrash(BaseException):
    """The process died: not an Exception, so nothing in the engine can catch it."""


@dataclass
class Call:
    at: dt.datetime
    shop: str
    channel: str
    to: str
    body: str
    subject: str | None = None
    headers: dict = field(default_factory=dict)
    result: object = None


class RecordingVendors:
    """Real vendor clients (reaching the stand-ins), with each provider call recorded at
    the clock's time. `crash_after[(channel, to)] = n` kills the sender right after the
    provider accepted that address's n-th message, before the outcome is committed."""

    def __init__(self, inner, clock):
        self.inner, self.clock = inner, clock
        self.calls: list[Call] = []
        self.crash_after: dict[tuple[str, str], int] = {}

    def __getattr__(self, name):  # shopmonkey, status_callback_url, unsubscribe_url, close
        return getattr(self.inner, name)

    def sms(self, shop):
        return _Recorder(self, shop, "sms", self.inner.sms(shop))

    def email(self, shop):
        return _Recorder(self, shop, "email", self.inner.email(shop))

    def to(self, address: str) -> list[Call]:
        return [c for c in self.calls if c.to == address]


class _Recorder:
    def __init__(self, owner: RecordingVendors, shop, channel: str, sender):
        self.owner, self.shop, self.channel, self.sender = owner, shop, channel, sender

    def send(self, *args, **kwargs):
        if self.channel == "sms":
            to, body = args[0], args[1]
            call = Call(self.owner.clock(), self.shop.slug, "sms", to, body)
        else:
            email = args[0]
            call = Call(self.owner.clock(), self.shop.slug, "email", email.to, email.text, email.subject,
                        dict(email.headers))
        self.owner.calls.append(call)
        call.result = self.sender.send(*args, **kwargs)
        key = (self.channel, call.to)
        if key in self.owner.crash_after:
            self.owner.crash_after[key] -= 1
            if self.owner.crash_after[key] <= 0:
                del self.owner.crash_after[key]
                raise SimulatedCrash(f"crash after the provider took the {self.channel} to {call.to}")
        return call.result


def insert_lead(db, shop, *, first_seen: dt.datetime, phone: str | None = None, email: str | None = None,
                first_name: str = "Dana", order_id: str | None = None) -> dict:
    """A qualified lead with its sequence planned, as ingest leaves it (without sending)."""
    with db.tenant_tx(shop.id) as conn:
        lead = conn.execute(
            """INSERT INTO leads (tenant_id, order_id, order_number, first_name, last_name, vehicle_name,
                                  total_cents, phone_e164, email, status, source, first_seen_at)
               VALUES (current_tenant_id(), %s, %s, %s, 'Lopez', '2018 Toyota Camry', 84950, %s, %s,
                       'active', 'manual', %s) RETURNING *""",
            (order_id or uuid.uuid4().hex[:20], str(10000 + next(_numbers)), first_name, phone, email, first_seen),
        ).fetchone()
        plan_sequence(conn, shop, lead, SendWindow.for_shop(shop))
    return lead


def touches_of(admin, lead_id: int) -> dict[tuple[int, str], dict]:
    rows = admin.execute("SELECT * FROM touches WHERE lead_id = %s ORDER BY step, channel", (lead_id,)).fetchall()
    return {(r["step"], r["channel"]): r for r in rows}


def lead_row(admin, lead_id: int) -> dict:
    return admin.execute("SELECT * FROM leads WHERE id = %s", (lead_id,)).fetchone()


def events_of(admin, lead_id: int) -> list[dict]:
    return admin.execute("SELECT kind, detail, at FROM lead_events WHERE lead_id = %s ORDER BY at, id",
                         (lead_id,)).fetchall()


def tenant_counts(admin, tenant_id: int) -> dict[str, int]:
    """Rows of one shop per table: what a refused request must leave unchanged (other
    tests' background callbacks may still write to their own shops meanwhile)."""
    tables = ("inbox_events", "leads", "contacts", "touches", "lead_events")
    counts = {t: admin.execute(f"SELECT count(*) AS n FROM {t} WHERE tenant_id = %s", (tenant_id,)).fetchone()["n"]
              for t in tables}
    counts["touch_statuses"] = admin.execute(
        "SELECT string_agg(status || coalesce(delivery_status, ''), ',' ORDER BY id) AS s FROM touches "
        "WHERE tenant_id = %s", (tenant_id,)).fetchone()["s"]
    return counts


def settle_sms_callbacks(admin, lead_id: int, step: int = 0) -> None:
    """Waits until the stand-in's status callbacks for the lead's SMS have arrived."""
    from tests.support import wait_for

    wait_for(lambda: touches_of(admin, lead_id)[(step, "sms")]["delivery_status"] == "delivered",
             timeout=15, message="SMS status callbacks")


KILLED_SENDER = """
import datetime as dt, os, sys
from lead_orchestrator.store.db import Database
from lead_orchestrator.store.secret_box import SecretBox, parse_keys
from lead_orchestrator.store.shops import load_shop
from lead_orchestrator.services.touches import send_touch
from lead_orchestrator.services.shop_clients import Vendors

url, tenant_id, touch_id, channel, now, twilio, sendgrid, public, secret = sys.argv[1:]
box = SecretBox(parse_keys(os.environ["LEAD_ENCRYPTION_KEY"]))
db = Database(url, max_size=2, box=box).open()
vendors = Vendors(shopmonkey_base_url="http://127.0.0.1:9", twilio_base_url=twilio, sendgrid_base_url=sendgrid,
                  public_base_url=public, secret_key=secret)

class DiesAfterSending:
    def __init__(self, inner):
        self.inner = inner
    def send(self, *args, **kwargs):
        self.inner.send(*args, **kwargs)
        os._exit(137)  # killed after the vendor took it, before the outcome is committed

real = getattr(vendors, channel)
setattr(vendors, channel, lambda shop: DiesAfterSending(real(shop)))
with db.tenant_tx(int(tenant_id)) as conn:
    shop = load_shop(conn, int(tenant_id), db.box)
send_touch(db, shop, int(touch_id), vendors, now=dt.datetime.fromisoformat(now))
"""


def kill_a_sender_mid_send(database_url: str, secret_key: str, standins, public_url: str, shop, touch_id: int,
                           channel: str, now: dt.datetime) -> None:
    """Runs a real sender process that reserves the touch, has the vendor take the
    message, and dies (os._exit) before recording the outcome."""
    import subprocess
    import sys

    before = {m["sid"] for m in standins.twilio.messages.items()}
    proc = subprocess.run([sys.executable, "-c", KILLED_SENDER, database_url, str(shop.id), str(touch_id), channel,
                           now.isoformat(), standins.twilio_url, standins.sendgrid_url, public_url, secret_key],
                          capture_output=True, timeout=120)
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    if channel == "sms":
        wait_until_twilio_sent(standins, before)


def wait_until_twilio_sent(standins, before: set[str]) -> None:
    """Simulated hours pass in milliseconds here: let Twilio send what it queued (its list
    shows a message only once it has a date sent, ~50 ms later, longer under load) before
    the engine asks about it, or the answer is "absent" at a simulated time long settled."""
    from tests.support import wait_for

    wait_for(lambda: all(m["date_sent"] for m in standins.twilio.messages.items() if m["sid"] not in before),
             timeout=10, message="the Twilio stand-in sending what it queued")
