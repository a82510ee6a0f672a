"""`why`, as an operator asks it: by customer name; with the recorded reason a customer
gets no text; in time order; honest about poll-found leads; in agreement with `preview`
about deferred sends; and for orders whose inbox events never made a lead (waiting,
parked for credentials, dead), with what happens next."""
from __future__ import annotations

import datetime as dt
import re
import uuid
from zoneinfo import ZoneInfo

from lead_orchestrator.services.poll import poll_cycle
from lead_orchestrator.services.touch_sweep import send_due_touches
from tests.analyst_support import KEY_REFUSED, add_event
from tests.test_cli_touchpoints import cli  # noqa: F401 - the CLI fixture
from tests.test_poll import ingest_until, leads_of, new_order
from tests.touchpoint_support import UTC, RecordingVendors, SimClock, insert_lead, touches_of

CHICAGO = ZoneInfo("America/Chicago")
LINE_TIME = re.compile(r"^  (\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+) ")


def timeline_times(out: str) -> list[dt.datetime]:
    """The times of the Timeline section's lines, as printed (to the second)."""
    section = out.split("Timeline (shop time)", 1)[1]
    return [dt.datetime.strptime(m.group(1)[:-4], "%a %Y-%m-%d %H:%M:%S")
            for line in section.splitlines() if (m := LINE_TIME.match(line))]


def line_index(out: str, text: str) -> int:
    return next(i for i, line in enumerate(out.splitlines()) if text in line)


def future_night(days: int = 30) -> dt.datetime:
    """22:00 in Chicago some days ahead: outside the default window, and later than the
    real clock, which `why` compares pending touches with."""
    day = (dt.datetime.now(CHICAGO) + dt.timedelta(days=days)).date()
    return dt.datetime.combine(day, dt.time(22, 0), tzinfo=CHICAGO).astimezone(UTC)


def test_why_finds_leads_by_customer_name(cli, db, make_shop):
    shop = make_shop()
    t0 = dt.datetime.now(UTC)
    surname = "Quintana" + uuid.uuid4().hex[:6]
    marisol = insert_lead(db, shop, first_seen=t0, phone=None, email=None, first_name="Marisol")
    for first in ("Ana", "Bea", "Cy", "Dee", "Eve", "Flo"):
        insert_lead(db, shop, first_seen=t0, phone=None, email=None, first_name=first)
    with db.tenant_tx(shop.id) as conn:
        conn.execute("UPDATE leads SET last_name = %s", (surname,))

    out = cli("why", shop.slug, f"marisol {surname.upper()}").output
    assert f"Lead {marisol['id']} of {shop.slug}" in out and out.count("Lead ") == 1, out
    assert f"customer   Marisol {surname}" in out

    everyone = cli("why", shop.slug, surname).output  # seven leads: five timelines, then a list
    assert everyone.count("Touches (shop time") == 5
    assert "2 more lead(s) match; name one by its order id:" in everyone
    assert cli("why", shop.slug, "Nobody ByThatname").exit_code != 0


def test_why_says_why_a_customer_gets_no_text(cli, db, vendors, connected_shop, standins, admin):
    shop = connected_shop()
    landline = {"phoneNumbers": [{"id": uuid.uuid4().hex[:24], "number": "+15125550142", "extension": None,
                                  "primary": True, "type": "Landline", "optIn": True}]}
    created = standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), customer=landline,
                                               wait_webhook=True)
    ingest_until(db, vendors, lambda: leads_of(admin, shop), message="the lead")

    out = cli("why", shop.slug, created["order"]["id"]).output
    assert "no SMS (landline number, not mobile)" in out, out
    assert re.search(r"0    sms     skipped .*no_contact:sms \(landline number, not mobile\)", out), out
    assert "no SMS: landline number, not mobile" in out  # on the qualification itself
    assert "step 1 sms not sent: no_contact:sms (landline number, not mobile)" in out


def test_why_says_a_poll_found_lead_was_found_by_the_poll_and_orders_lines_by_time(
        cli, db, vendors, connected_shop, standins, admin):
    shop = connected_shop()
    order = new_order(standins, shop)  # no webhook: only the poll can find it
    poll_cycle(db, vendors, tenant_ids=[shop.id])
    ingest_until(db, vendors, lambda: leads_of(admin, shop) and admin.execute(
        "SELECT 1 FROM lead_events WHERE tenant_id = %s AND kind = 'first_touch_latency'", (shop.id,)).fetchone(),
        message="the lead's first touch")

    out = cli("why", shop.slug, order["id"]).output
    assert "the backup poll found it (no webhook came first)" in out, out
    latency = re.search(r"first touch ([\d.]+) s after the poll found it \(([\d.]+) s after the estimate was "
                        r"created\)", out)
    assert latency and float(latency.group(2)) >= float(latency.group(1)) - 0.05, out
    assert "after the webhook" not in out
    times = timeline_times(out)
    assert times and times == sorted(times)
    assert (line_index(out, "created in the CRM") < line_index(out, "first seen: the poll found it")
            < line_index(out, "qualified as a lead") < line_index(out, "step 0 sms sent"))


def test_why_and_preview_agree_on_deferred_send_times(cli, db, vendors, connected_shop, admin):
    shop = connected_shop(send_window_start="08:00", send_window_end="21:00")
    night = future_night()
    lead = insert_lead(db, shop, first_seen=night, phone="+13125550177", email=None, order_id=uuid.uuid4().hex)
    morning = dt.datetime.combine(night.astimezone(CHICAGO).date() + dt.timedelta(days=1), dt.time(8, 0),
                                  tzinfo=CHICAGO)
    out = cli("why", shop.slug, lead["order_id"]).output
    # Planned in quiet hours: step 1 waits for 08:00 and then for the hour after step 0.
    step1 = next(line for line in out.splitlines() if line.startswith("  1    sms"))
    expected = morning + dt.timedelta(hours=1)
    assert expected.strftime("%a %Y-%m-%d %H:%M %Z") in step1.split("deferred", 1)[1], out
    assert "quiet_hours, then spacing after an earlier step" in step1
    # Decisions made at the plan come after the qualification... and in time order.
    times = timeline_times(out)
    assert times == sorted(times)

    preview = cli("preview", shop.slug, "--at", night.astimezone(CHICAGO).strftime("%Y-%m-%dT%H:%M")).output
    assert f"goes out {expected.strftime('%a %Y-%m-%d %H:%M %Z')}" in preview.split("== step 1 · SMS", 1)[1]

    # And the sender does just that.
    clock = SimClock(morning.astimezone(UTC))
    send_due_touches(db, RecordingVendors(vendors, clock), now=clock(), due_before=clock(), clock=clock,
                     tenant_ids=[shop.id])
    step1_row = touches_of(admin, lead["id"])[(1, "sms")]
    assert (step1_row["status"], step1_row["reason"], step1_row["send_after"]) == ("deferred", "spacing", expected)


def test_why_explains_orders_whose_events_made_no_lead(cli, db, vendors, connected_shop, standins, admin):
    shop = connected_shop()
    key = shop.shopmonkey_api_key.get_secret_value()
    parked = standins.shopmonkey.create_order(key, wait_webhook=True)["order"]["id"]
    standins.shopmonkey.revoke_key(key)
    ingest_until(db, vendors, lambda: admin.execute(
        "SELECT 1 FROM inbox_events WHERE tenant_id = %s AND object_id = %s AND status = 'parked'",
        (shop.id, parked)).fetchone(), message="the event parked")

    out = cli("why", shop.slug, parked).output
    assert f"No lead of {shop.slug} for order {parked} (yet)" in out, out
    assert re.search(r"webhook received: parked since .*: ShopMonkey rejected the shop's API key \(HTTP 401\); "
                     rf"released when the key is updated \(`./dev cli shops update {shop.slug} "
                     r"--shopmonkey-api-key …`\) or the poll sees it work again", out), out

    now = dt.datetime.now(UTC)
    add_event(admin, shop.id, status="dead", order_id="ord-dead-1", received=now - dt.timedelta(hours=2),
              changed=now - dt.timedelta(hours=1), error="unexpected error (see run logs)", attempts=7)
    out = cli("why", shop.slug, "ord-dead-1").output
    assert ("dead since " in out and "unexpected error (see run logs); replay with "
            f"`./dev cli replay {shop.slug} --order ord-dead-1`") in out, out

    add_event(admin, shop.id, source="poll", status="pending", order_id="ord-wait-1", received=now,
              attempts=3, available=now + dt.timedelta(minutes=3), error="ShopMonkey /v3/order: HTTP 503")
    out = cli("why", shop.slug, "ord-wait-1").output
    assert "found by the poll: pending, tried 3 time(s), last error: ShopMonkey /v3/order: HTTP 503; next try at" \
        in out, out
    add_event(admin, shop.id, status="pending", order_id="ord-new-1", received=now)
    assert "pending, waiting for the inbox sensor's next ingest run (no dispatcher is running)" in cli(
        "why", shop.slug, "ord-new-1").output


def test_a_leads_waiting_events_show_on_its_timeline(cli, db, make_shop, admin):
    shop = make_shop()
    t0 = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    lead = insert_lead(db, shop, first_seen=t0, phone=None, email=None, order_id=uuid.uuid4().hex)
    add_event(admin, shop.id, status="parked", order_id=lead["order_id"], received=t0 + dt.timedelta(minutes=5),
              error=KEY_REFUSED)
    add_event(admin, shop.id, order_id=lead["order_id"], received=t0, outcome="new_lead")
    out = cli("why", shop.slug, lead["order_id"]).output
    assert "webhook received: parked since" in out, out
    assert "done (new_lead)" not in out  # what was applied is the lead itself
