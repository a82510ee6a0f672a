"""A simulated week: 100 leads across four shops in three time zones, time driven by a
test clock (no sleeps) through the plain functions the Dagster job and ingest run.

The week (Fri 2027-11-05 → Fri 2027-11-12, UTC) has a daylight-saving change (Sun 7th)
and a federal holiday (Veterans Day, Thu 11th). Leads come in through the real ingest
path (ShopMonkey stand-in → inbox → process_event) at random moments, day and night;
the touch-point runner ticks every 4 minutes as the schedule does. Customers interrupt:
STOP, replies, START, one-click unsubscribe, bounces, approvals; one sender crashes
between the provider call and the commit.

Every provider call is recorded at simulated time and compared with an independent
oracle (written here, not using SendWindow): the exact expected send time of every
step, nothing in quiet hours or on a closed day, nothing after a stop, nothing twice.
"""
from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import httpx
import pytest

from lead_orchestrator.services.ingest import process_event
from lead_orchestrator.store.inbox import store_event
from lead_orchestrator.domain.sequences import DEFAULT_SEQUENCE, Step
from lead_orchestrator.services.touch_sweep import send_due_touches
from tests.conftest import emails_to, sms_to
from tests.touchpoint_support import UTC, RecordingVendors, SimClock, SimulatedCrash, unique_email, unique_phone

START = dt.datetime(2027, 11, 5, 0, 0, tzinfo=UTC)  # a Friday
END = START + dt.timedelta(days=7)
TICK = dt.timedelta(minutes=4)
US_HOLIDAYS_THIS_WEEK = {dt.date(2027, 11, 11)}  # Veterans Day, written out: the oracle does not ask `holidays`
OPT_OUT = "Reply STOP to opt out."

CUSTOM_STEPS = [{"step": 0, "offset_minutes": 0, "channel": "email", "template": "first_email"},
                {"step": 1, "offset_minutes": 30, "channel": "sms", "template": "followup_sms"},
                {"step": 2, "offset_minutes": 2 * 24 * 60, "channel": "sms", "template": "last_sms"},
                {"step": 3, "offset_minutes": 4 * 24 * 60, "channel": "email", "template": "followup_email"}]


@dataclass(frozen=True)
class Rules:
    zone: str
    start: dt.time
    end: dt.time
    closed: frozenset[int]
    holidays: frozenset[dt.date]

    def allows(self, moment: dt.datetime) -> bool:
        here = moment.astimezone(ZoneInfo(self.zone))
        return (here.weekday() not in self.closed and here.date() not in self.holidays
                and self.start <= here.time() < self.end)


SHOPS = {
    # name: (rules, sequence override, postal address)
    "ny": (Rules("America/New_York", dt.time(8), dt.time(21), frozenset(), frozenset(US_HOLIDAYS_THIS_WEEK)),
           None, "1 Broadway, New York, NY 10004"),
    "chi": (Rules("America/Chicago", dt.time(9, 30), dt.time(18), frozenset({6}), frozenset(US_HOLIDAYS_THIS_WEEK)),
            None, "233 S Wacker Dr, Chicago, IL 60606"),
    "la": (Rules("America/Los_Angeles", dt.time(8), dt.time(20), frozenset({5, 6}), frozenset()),
           None, "200 N Spring St, Los Angeles, CA 90012"),
    "ny2": (Rules("America/New_York", dt.time(8), dt.time(21), frozenset(), frozenset(US_HOLIDAYS_THIS_WEEK)),
            CUSTOM_STEPS, "350 5th Ave, New York, NY 10118"),
}


def ticks_from(moment: dt.datetime):
    """The schedule's ticks at or after `moment`."""
    n = -(-(moment - START) // TICK)
    t = START + n * TICK
    while True:
        yield t
        t += TICK


def first_allowed_tick(rules: Rules, moment: dt.datetime) -> dt.datetime:
    return next(t for t in ticks_from(moment) if rules.allows(t))


@dataclass
class SimLead:
    n: int
    shop: str
    created: dt.datetime
    phone: str | None
    email: str | None
    order_id: str | None = None
    lead_id: int | None = None
    stopped_at: dt.datetime | None = None
    sms_opted_out: bool = False  # created while its number was opted out (never re-subscribed)
    expected: dict[tuple[int, str], dt.datetime] = field(default_factory=dict)


def steps_of(shop: str) -> list[Step]:
    custom = SHOPS[shop][1]
    if custom is None:
        return list(DEFAULT_SEQUENCE)
    return [Step(s["step"], dt.timedelta(minutes=s["offset_minutes"]), s["channel"], s["template"]) for s in custom]


def oracle(lead: SimLead) -> dict[tuple[int, str], dt.datetime]:
    """When each step must go out, by the rules alone: the first touch at once if allowed
    (ingest sends it), every other step at the first allowed tick at or after the later
    of its due time and its spacing (an earlier step's send + the gap between their
    offsets); nothing on a channel without an address or an opted-out number; nothing at
    or after the lead was stopped, nothing after the simulated week."""
    rules = SHOPS[lead.shop][0]
    out, sent = {}, []  # sent: (step, offset, when)
    for step in sorted(steps_of(lead.shop), key=lambda s: (s.step, s.channel)):
        address = lead.phone if step.channel == "sms" else lead.email
        if address is None or (step.channel == "sms" and lead.sms_opted_out):
            continue
        due = lead.created + step.offset
        earliest = max([due] + [when + (step.offset - offset) for n, offset, when in sent if n < step.step])
        if step.offset == dt.timedelta(0) and rules.allows(due):
            when = due
        else:
            when = first_allowed_tick(rules, earliest)
        if when < END and (lead.stopped_at is None or when < lead.stopped_at):
            out[(step.step, step.channel)] = when
            sent.append((step.step, step.offset, when))
    return out


@dataclass
class Stop:
    at: dt.datetime
    kind: str  # stop | reply | start | unsubscribe | bounce | approve
    lead: SimLead
    body: str = ""


@pytest.fixture
def sim_shops(connected_shop, admin):
    shops = {}
    for name, (rules, steps, address) in SHOPS.items():
        settings = {"holiday_country": "US" if rules.holidays else None, "closed_weekdays": sorted(rules.closed)}
        if steps:
            settings["sequence"] = steps
        shops[name] = connected_shop(name=f"Sim {name} Auto", time_zone=rules.zone, postal_address=address,
                                     send_window_start=rules.start, send_window_end=rules.end, settings=settings)
    yield shops
    # Their touches live in 2027: keep them out of every later run of the real job.
    admin.execute("UPDATE tenants SET active = false WHERE id = ANY(%s)", ([s.id for s in shops.values()],))


def create_lead(db, vendors, standins, shop, lead: SimLead, clock: SimClock) -> None:
    """An estimate created in the ShopMonkey stand-in, stored in the inbox as received at
    the simulated moment, and ingested: qualify, plan, send the first touch."""
    stamp = lead.created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    customer = {"firstName": f"Cust{lead.n}", "preferredContactMethod": "All",
                "phoneNumbers": [{"id": uuid.uuid4().hex, "number": lead.phone, "primary": True, "type": "Mobile",
                                  "optIn": True}] if lead.phone else [],
                "emails": [{"id": uuid.uuid4().hex, "email": lead.email, "primary": True, "subscribed": True}]
                if lead.email else []}
    created = standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), customer=customer,
                                               order={"createdDate": stamp, "updatedDate": stamp},
                                               emit_webhook=False)
    lead.order_id = created["order"]["id"]
    event_id = _inbox(db, shop, "INSERT", created["order"], lead.created)
    result = process_event(db, vendors, shop.id, event_id, now=clock)
    assert result.outcome == "new_lead", result
    lead.lead_id = result.lead_id


def _inbox(db, shop, operation: str, order: dict, received: dt.datetime) -> int:
    # Stored as already claimed by this test, so a Dagster daemon alive in the session
    # (its inbox sensor) never picks the event up in real time.
    with db.tenant_tx(shop.id) as conn:
        event_id = store_event(conn, source="webhook", operation=operation, table="order", data=order,
                               payload={"operation": operation, "table": "order", "data": order})
        conn.execute("UPDATE inbox_events SET received_at = %s, status = 'processing', claimed_by = 'simulation', "
                     "claimed_at = now() WHERE id = %s", (received, event_id))
    return event_id


def apply_stop(stop: Stop, db, vendors, standins, receiver, shops, clock: SimClock) -> None:
    lead, shop = stop.lead, shops[stop.lead.shop]
    if stop.kind in ("stop", "reply", "start"):
        status = standins.twilio.simulate_inbound(f"{receiver.url}/webhooks/twilio/{shop.slug}/inbound", lead.phone,
                                                  shop.twilio_sender, stop.body, account_sid=shop.twilio_account_sid)
        assert status == 200
    elif stop.kind == "unsubscribe":
        (first,) = [m for m in emails_to(standins, lead.email)][:1]
        link = first["headers"]["List-Unsubscribe"].strip("<>")
        response = httpx.post(link, content=b"List-Unsubscribe=One-Click", timeout=10,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200
    elif stop.kind == "bounce":
        message_id = emails_to(standins, lead.email)[0]["message_id"]
        url = f"{receiver.url}/webhooks/sendgrid/{shop.slug}/events"
        assert standins.sendgrid.post_events(url, standins.sendgrid.events_for(message_id, "bounce")) == 200
    elif stop.kind == "approve":
        stamp = stop.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        order = standins.shopmonkey.update_order(lead.order_id, {"authorized": True, "updatedDate": stamp},
                                                 emit_webhook=False)["order"]
        assert process_event(db, vendors, shop.id, _inbox(db, shop, "UPDATE", order, stop.at),
                             now=clock).outcome == "closed"


def test_a_simulated_week_sends_exactly_what_the_rules_say(db, vendors, standins, receiver, sim_shops, admin):
    rng = random.Random(20271105)
    clock = SimClock(START)
    recording = RecordingVendors(vendors, clock)

    # --- 100 leads: 98 new customers spread over the four shops, created day and night over
    # the first three and a half days, and two who come back with a second estimate.
    leads: list[SimLead] = []
    for n in range(98):
        shop = list(SHOPS)[n % 4]
        created = START + dt.timedelta(seconds=rng.randrange(3600, int(3.5 * 86400)), milliseconds=rng.randrange(1, 999))
        roll = rng.random()
        phone = None if roll < 0.1 else unique_phone()
        email = None if 0.1 <= roll < 0.2 else unique_email(f"sim{n}")
        leads.append(SimLead(n, shop, created, phone, email))

    # Customers interrupt (all at odd seconds, never on a tick). Leads are picked by
    # index among those with the needed address, early enough that some steps went out.
    with_both = [lead for lead in leads if lead.phone and lead.email]
    stops: list[Stop] = []
    for i, word in enumerate(("STOP", "stop", "Unsubscribe", "quit")):
        stops.append(Stop(with_both[i].created + dt.timedelta(hours=5, seconds=7), "stop", with_both[i], word))
    for i in range(4, 7):
        stops.append(Stop(with_both[i].created + dt.timedelta(hours=26, seconds=11), "reply", with_both[i],
                          "Can you fit me in Tuesday morning?"))
    # Unsubscribe and bounce need an email that went out: 2 h after the first one.
    def first_email(lead: SimLead) -> dt.datetime:
        return min(when for (_, channel), when in oracle(lead).items() if channel == "email")

    for i in range(7, 10):
        stops.append(Stop(first_email(with_both[i]) + dt.timedelta(hours=2, seconds=3), "unsubscribe", with_both[i]))
    for i in range(10, 13):
        stops.append(Stop(first_email(with_both[i]) + dt.timedelta(hours=2, seconds=5), "bounce", with_both[i]))
    for i in range(13, 16):
        stops.append(Stop(with_both[i].created + dt.timedelta(hours=2, seconds=9), "approve", with_both[i]))

    # Two customers come back with a new estimate on the number they opted out: one
    # texted START first (texted again), one did not (no texts, email only).
    stopped_then_back, stopped_for_good = with_both[0], with_both[1]
    start_at = stopped_then_back.created + dt.timedelta(hours=9, seconds=13)
    stops.append(Stop(start_at, "start", stopped_then_back, "Start"))
    returning = [SimLead(98, stopped_then_back.shop, start_at + dt.timedelta(hours=3, seconds=1),
                         stopped_then_back.phone, unique_email("back")),
                 SimLead(99, stopped_for_good.shop, stops[1].at + dt.timedelta(hours=4, seconds=17),
                         stopped_for_good.phone, unique_email("again"), sms_opted_out=True)]
    for s in stops:
        if s.kind in ("stop", "reply", "unsubscribe", "bounce", "approve"):
            s.lead.stopped_at = s.at
    crashing = next(lead for lead in leads[40:] if lead.phone and lead.email and lead.stopped_at is None)
    recording.crash_after[("sms", crashing.phone)] = 2  # its second text: step 1
    everyone = leads + returning
    assert len(everyone) == 100

    # --- the week, tick by tick
    happenings = sorted([(lead.created, "lead", lead) for lead in everyone] + [(s.at, "stop", s) for s in stops],
                        key=lambda h: h[0])
    shop_ids = [s.id for s in sim_shops.values()]
    crashes = 0
    tick_at = START
    while tick_at < END:
        while happenings and happenings[0][0] <= tick_at:
            at, kind, what = happenings.pop(0)
            clock.set(at)
            if kind == "lead":
                create_lead(db, recording, standins, sim_shops[what.shop], what, clock)
            else:
                apply_stop(what, db, recording, standins, receiver, sim_shops, clock)
        clock.set(tick_at)
        try:
            send_due_touches(db, recording, now=tick_at, due_before=tick_at, clock=clock, tenant_ids=shop_ids,
                             sleep=clock.sleep)
        except SimulatedCrash:
            crashes += 1  # the run died mid-way; the schedule's next run picks up
            send_due_touches(db, recording, now=tick_at, due_before=tick_at, clock=clock, tenant_ids=shop_ids,
                             sleep=clock.sleep)
        tick_at += TICK
    assert crashes == 1

    # --- what was sent, per (lead, step, channel), at simulated time
    by_lead = {lead.lead_id: lead for lead in everyone}
    rows = admin.execute("SELECT lead_id, step, channel, status, reason, reserved_at, send_after FROM touches "
                         "WHERE tenant_id = ANY(%s)", (shop_ids,)).fetchall()
    actual = {(r["lead_id"], r["step"], r["channel"]): r["reserved_at"] for r in rows
              if r["status"] in ("sent", "unknown")}
    expected = {(lead.lead_id, *key): when for lead in everyone for key, when in oracle(lead).items()}
    wrong = sorted((k, expected.get(k), actual.get(k)) for k in set(expected) | set(actual)
                   if expected.get(k) != actual.get(k))
    assert not wrong, f"{len(wrong)} step(s) differ (key, expected, actual): {wrong[:10]}"
    assert len(expected) > 300  # the week really happened
    deferrals = admin.execute("SELECT detail->>'reason' AS reason, count(*) AS n FROM lead_events "
                              "WHERE tenant_id = ANY(%s) AND kind = 'touch_deferred' GROUP BY 1 ORDER BY 1",
                              (shop_ids,)).fetchall()
    print(f"\nsimulated week: {len(everyone)} leads, {len(recording.calls)} messages "
          f"({sum(c.channel == 'sms' for c in recording.calls)} SMS), {(END - START) // TICK} ticks; "
          f"deferrals {', '.join(str(d['reason']) + '=' + str(d['n']) for d in deferrals)}")

    # Each provider call matches one sent touch: nothing twice, nothing unaccounted for.
    assert len(recording.calls) == len(actual)
    assert sorted(c.at for c in recording.calls) == sorted(actual.values())

    # Zero sends inside quiet hours, on a closed day or a holiday (shop time).
    slug_rules = {sim_shops[name].slug: SHOPS[name][0] for name in SHOPS}
    assert [c for c in recording.calls if not slug_rules[c.shop].allows(c.at)] == []

    # Zero sends after STOP, a reply, an unsubscribe, a bounce or an approval: not for the
    # lead, and not to its addresses (the one exception: the number that texted START,
    # which its new estimate may text again).
    for stop in stops:
        if stop.kind == "start":
            continue
        lead = stop.lead
        own = admin.execute("SELECT step, channel FROM touches WHERE lead_id = %s AND reserved_at > %s",
                            (lead.lead_id, stop.at)).fetchall()
        assert own == [], (stop.kind, own)
        until = start_at if lead is stopped_then_back else END
        late = [c for c in recording.calls if (c.to == lead.email and c.at > stop.at)
                or (c.to == lead.phone and stop.at < c.at < until)]
        assert late == [], (stop.kind, late)
        row = admin.execute("SELECT status, status_reason FROM leads WHERE id = %s", (lead.lead_id,)).fetchone()
        reason = {"stop": "opted_out", "reply": "replied", "unsubscribe": "unsubscribed", "bounce": "email_bounced",
                  "approve": "authorized"}[stop.kind]
        assert (row["status"], row["status_reason"]) == ("converted" if stop.kind == "approve" else "stopped", reason)

    # START re-subscribed: the returning customer is texted, the other one is not.
    back_texts = [c for c in recording.calls if c.to == stopped_then_back.phone and c.at > start_at]
    assert back_texts and OPT_OUT in back_texts[0].body
    assert [c for c in recording.calls if c.to == stopped_for_good.phone and c.at > stops[1].at] == []
    assert [c for c in recording.calls if c.to == returning[1].email]  # email still reaches them

    # The crash: one step-1 text, never sent again, recorded as unknown (or proven sent).
    crashed = admin.execute("SELECT status, attempts FROM touches WHERE lead_id = %s AND step = 1 AND channel = 'sms'",
                            (crashing.lead_id,)).fetchone()
    assert crashed["status"] in ("unknown", "sent") and crashed["attempts"] == 1
    step1 = [m for m in sms_to(standins, crashing.phone) if "just checking in" in m["body"]]
    assert len(step1) == 1

    # The stand-ins received exactly what was recorded.
    for lead in everyone:
        if lead.phone:
            assert len(sms_to(standins, lead.phone)) == len({(c.at, c.body) for c in recording.calls
                                                              if c.to == lead.phone})

    # Content: every lead's first text says how to opt out (and only the first); every
    # email carries the shop's postal address and working one-click unsubscribe headers.
    texts = admin.execute("SELECT lead_id, body FROM touches WHERE tenant_id = ANY(%s) AND channel = 'sms' "
                          "AND status IN ('sent', 'unknown') ORDER BY lead_id, reserved_at, step",
                          (shop_ids,)).fetchall()
    seen: set[int] = set()
    for t in texts:
        assert (OPT_OUT in t["body"]) == (t["lead_id"] not in seen), t
        seen.add(t["lead_id"])
    assert len(seen) > 70
    emails = [c for c in recording.calls if c.channel == "email"]
    assert emails
    address_of = {sim_shops[name].slug: SHOPS[name][2] for name in SHOPS}
    for c in emails:
        assert address_of[c.shop] in c.body
        assert c.headers["List-Unsubscribe"].startswith("<http") and "/unsubscribe/" in c.headers["List-Unsubscribe"]
        assert c.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # Never dropped: whatever did not go out has a reason, or is still owed after the week.
    for r in rows:
        key = (r["lead_id"], r["step"], r["channel"])
        if r["status"] in ("scheduled", "deferred"):
            assert r["send_after"] >= END - TICK and key not in expected, r
            assert by_lead[r["lead_id"]].stopped_at is None
        elif r["status"] not in ("sent", "unknown"):
            assert r["reason"], r
            assert key not in expected
