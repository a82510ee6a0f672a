"""The backup poll as plain functions against real PostgreSQL and the ShopMonkey stand-in
over HTTP: what it finds, what it stores, what it refuses to trust, and how a broken
shop stays out of the way of the others."""
from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lead_orchestrator.services import poll

from lead_orchestrator.crm.shopmonkey import client as shopmonkey_client
from lead_orchestrator.services.ingest import claim_events, process_claimed_events, process_event
from lead_orchestrator.domain.qualification import parse_time
from lead_orchestrator.services.poll import PollConfig, backoff, due_tenant_ids, poll_cycle, window_start
from lead_orchestrator.store.inbox import stored_hint
from tests.conftest import emails_to, sms_to
from tests.support import wait_for

UTC = dt.timezone.utc


# --- helpers shared by the poll tests ------------------------------------------------

def new_order(standins, shop, *, emit_webhook=False, wait_webhook=False, order=None, with_customer=True) -> dict:
    """An estimate whose customer has a phone and an email no other test uses."""
    phone = f"+1512{random.randint(2, 9)}{random.randint(0, 99):02d}{random.randint(0, 9999):04d}"
    email = f"poll-{uuid.uuid4().hex[:10]}@example.com"
    customer = {"phoneNumbers": [{"id": uuid.uuid4().hex[:24], "number": phone, "extension": None, "primary": True,
                                  "type": "Mobile", "optIn": True}],
                "emails": [{"id": uuid.uuid4().hex[:24], "email": email, "primary": True, "subscribed": True}]}
    created = standins.shopmonkey.create_order(shop.shopmonkey_api_key.get_secret_value(), order=order,
                                               customer=customer, with_customer=with_customer,
                                               emit_webhook=emit_webhook, wait_webhook=wait_webhook)
    return {**created, "id": created["order"]["id"], "phone": phone, "email": email}


def ingest_pending(db, vendors) -> list:
    """What the ingest job does, in-process: claim every pending event and process it."""
    return process_claimed_events(db, vendors, claim_events(db, claimer=f"test-{uuid.uuid4().hex[:8]}"))


def ingest_until(db, vendors, condition, *, timeout=20.0, message="condition"):
    """Ingests until `condition()` holds (a Dagster daemon of the session may claim some
    of the events first; then this simply waits for it)."""
    return wait_for(lambda: ingest_pending(db, vendors) is not None and condition(), timeout=timeout,
                    interval=0.1, message=message)


def poll_events(admin, shop) -> list[dict]:
    return admin.execute("SELECT object_id, operation, dedup_key, status, payload FROM inbox_events "
                         "WHERE tenant_id = %s AND source = 'poll' ORDER BY id", (shop.id,)).fetchall()


def poll_state(admin, shop) -> dict | None:
    return admin.execute("SELECT * FROM poll_state WHERE tenant_id = %s", (shop.id,)).fetchone()


def leads_of(admin, shop) -> list[dict]:
    return admin.execute("SELECT * FROM leads WHERE tenant_id = %s ORDER BY id", (shop.id,)).fetchall()


def order_requests(standins, shop) -> int:
    key = shop.shopmonkey_api_key.get_secret_value()
    return standins.shopmonkey.request_counts()["by_key_path"].get(key, {}).get("/v3/order", 0)


def retire_events(admin, shop) -> None:
    """Bulk orders exist to be paged through; ingesting hundreds of them is not what
    their test is about, so they are marked done instead of left for later tests."""
    admin.execute("UPDATE inbox_events SET status = 'done', outcome = 'ignored', error = 'test bulk order' "
                  "WHERE tenant_id = %s AND status = 'pending'", (shop.id,))


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- pure rules --------------------------------------------------------------------

def test_backoff_grows_from_the_second_error_and_is_capped():
    assert [backoff(n).total_seconds() for n in range(0, 8)] == [0, 0, 60, 120, 240, 480, 600, 600]


def test_window_starts_at_the_watermark_minus_the_overlap_or_at_connection_for_a_new_shop():
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    overlap = dt.timedelta(minutes=2)
    # A watermark, however old, is honoured: changes made during an outage may close leads.
    old = now - dt.timedelta(days=40)
    assert window_start(old, now - dt.timedelta(days=90), 7, now, overlap) == old - overlap
    # A new shop starts when it was connected...
    connected = now - dt.timedelta(hours=3)
    assert window_start(None, connected, 7, now, overlap) == connected - overlap
    # ...but never further back than its max lead age (last year's customers get no text).
    assert window_start(None, now - dt.timedelta(days=400), 7, now, overlap) == now - dt.timedelta(days=7) - overlap


def test_client_refilters_sorts_and_dedupes_what_the_api_sends():
    """A server that repeats a row across pages (the table changed while we paged),
    ignores the sort and slips in a row outside the window: the client notices the
    unsorted page and falls back to reading the whole list by offset."""
    import httpx

    since = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    at = lambda minutes: iso(since + dt.timedelta(minutes=minutes))  # noqa: E731
    pages = [
        {"data": [{"id": "c", "updatedDate": at(3)}, {"id": "a", "updatedDate": at(1)}], "meta": {"hasMore": True}},
        {"data": [{"id": "a", "updatedDate": at(1)}, {"id": "b", "updatedDate": at(2)},
                  {"id": "old", "updatedDate": at(-60)}], "meta": {"hasMore": False}},
    ]
    seen_skips = []

    def handler(request: httpx.Request) -> httpx.Response:
        skip = int(request.url.params["skip"])
        seen_skips.append(skip)
        return httpx.Response(200, json={"success": True, **pages[0 if skip == 0 else 1]})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = shopmonkey_client.ShopMonkeyClient("http://sm.test", "key", http=http)
        scan = client.scan_orders_updated_since(since)
    assert [(r["id"], r["updatedDate"]) for r in scan.rows] == [("a", at(1)), ("b", at(2)), ("c", at(3))]
    assert (scan.received, scan.requests, seen_skips) == (5, 2, [0, 2])
    assert scan.complete and scan.read_below == since + dt.timedelta(minutes=3)


class _ChangingOrders:
    """A ShopMonkey list endpoint that honours `updatedDate gte`, the sort and the 100-row
    cap, over a table that changes between two page requests."""

    def __init__(self, start: dt.datetime, count: int):
        self.rows = [{"id": f"o{i:03}", "updatedDate": iso(start + dt.timedelta(seconds=i))} for i in range(count)]
        self.requests: list[int] = []
        self.between_pages = None

    def handler(self, request):
        import httpx

        if self.requests and self.between_pages:
            self.between_pages(self)
            self.between_pages = None
        skip = int(request.url.params["skip"])
        self.requests.append(skip)
        since = parse_time(json.loads(request.url.params["where"])["updatedDate"]["gte"])
        match = sorted((r for r in self.rows if parse_time(r["updatedDate"]) >= since),
                       key=lambda r: (parse_time(r["updatedDate"]), r["id"]))
        page = match[skip:skip + 100]
        return httpx.Response(200, json={"success": True, "data": page,
                                         "meta": {"total": len(match), "hasMore": skip + len(page) < len(match)}})


def test_an_order_edited_while_the_poll_pages_is_not_skipped():
    """The paging trap: an order on page 1 edited while page 2 is read. With offset
    paging every row behind it shifts one place and the 101st row is never read; the
    keyset scan re-asks from the newest stamp read and sees every order."""
    import httpx

    start = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    server = _ChangingOrders(start, 150)

    def edit_first_order(srv):
        srv.rows[0]["updatedDate"] = iso(start + dt.timedelta(minutes=10))

    server.between_pages = edit_first_order
    with httpx.Client(transport=httpx.MockTransport(server.handler)) as http:
        scan = shopmonkey_client.ShopMonkeyClient("http://sm.test", "key", http=http).scan_orders_updated_since(start)
    ids = {r["id"] for r in scan.rows}
    assert ids == {f"o{i:03}" for i in range(150)}, sorted({f"o{i:03}" for i in range(150)} - ids)
    assert scan.complete and scan.read_below == start + dt.timedelta(minutes=10)


def test_an_interrupted_scan_returns_what_it_read_and_how_far():
    import httpx

    start = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    server = _ChangingOrders(start, 250)
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if calls["n"] > 2:
            return httpx.Response(503, json={"success": False, "message": "down"})
        return server.handler(request)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = shopmonkey_client.ShopMonkeyClient("http://sm.test", "key", http=http, max_attempts=1)
        scan = client.scan_orders_updated_since(start)
    assert not scan.complete and isinstance(scan.error, shopmonkey_client.CrmUnavailable)
    assert len(scan.rows) == 199  # two pages of 100, the second starting at the first's newest stamp
    # Rows stamped at the last page's newest stamp may continue on the unread page: the
    # watermark may go this far and no further.
    assert scan.read_below == start + dt.timedelta(seconds=198)


# --- the poll against the stand-in ------------------------------------------------------

def test_dropped_webhook_is_found_by_the_poll_and_the_first_touch_goes_out(db, vendors, standins, connected_shop,
                                                                           admin):
    shop = connected_shop()
    order = new_order(standins, shop, emit_webhook=False)
    assert order["delivery"] is None  # ShopMonkey never told us

    cycle = poll_cycle(db, vendors, tenant_ids=[shop.id])
    (result,) = cycle.shops
    assert (result.outcome, result.stored, result.requests) == ("ok", 1, 1)
    assert [e["object_id"] for e in poll_events(admin, shop)] == [order["id"]]
    assert poll_state(admin, shop)["watermark"] == shopmonkey_client.parse_time(order["order"]["updatedDate"])

    ingest_until(db, vendors, lambda: sms_to(standins, order["phone"]) and emails_to(standins, order["email"]),
                 message="first SMS and email of the polled lead")
    (lead,) = leads_of(admin, shop)
    assert (lead["order_id"], lead["source"], lead["status"]) == (order["id"], "poll", "active")


def test_webhook_and_poll_see_the_order_one_lead_one_sms_one_email(db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    order = new_order(standins, shop, emit_webhook=True, wait_webhook=True)
    assert order["delivery"].as_dict()["final_status"] == 202

    # The poll sees the very change the webhook stored: the inbox keeps one of them.
    (first,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert (first.kept, first.stored) == (1, 0)
    # A later change the webhook missed: the poll stores it, and both events are pending
    # together; two ingest runs take them at the same time.
    standins.shopmonkey.update_order(order["id"], {"totalCostCents": 91000}, emit_webhook=False)
    (second,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert second.stored == 1
    events = admin.execute("SELECT id, source FROM inbox_events WHERE tenant_id = %s ORDER BY id",
                           (shop.id,)).fetchall()
    assert [e["source"] for e in events] == ["webhook", "poll"]

    # Two ingest runs, one event each, at the same moment (as two runs claiming side by side would).
    barrier = threading.Barrier(2)

    def run(event_id):
        barrier.wait()
        return process_event(db, vendors, shop.id, event_id)

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(r.outcome for r in pool.map(run, [e["id"] for e in events]))
    assert outcomes.count("new_lead") <= 1, outcomes
    wait_for(lambda: sms_to(standins, order["phone"]) and emails_to(standins, order["email"]),
             message="first touches")

    (lead,) = leads_of(admin, shop)
    assert lead["total_cents"] == 91000  # the polled change was applied to the same lead
    assert len(sms_to(standins, order["phone"])) == 1
    assert len(emails_to(standins, order["email"])) == 1
    qualified = admin.execute("SELECT count(*) AS n FROM lead_events WHERE lead_id = %s AND kind = 'qualified'",
                              (lead["id"],)).fetchone()["n"]
    assert qualified == 1


def test_250_changed_orders_are_all_found_across_pages(db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    # Orders without a customer: ingest records them quickly, nobody is texted 250 times.
    created = {new_order(standins, shop, with_customer=False)["id"] for _ in range(250)}

    (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert result.outcome == "ok", result.error
    # Each page after the first starts at the newest stamp read so far (keyset paging),
    # so the row at each page boundary is read twice: 100 + 100 + 52.
    assert (result.received, result.kept, result.stored) == (252, 250, 250)
    assert result.requests == order_requests(standins, shop) == 3  # then hasMore is false
    assert {e["object_id"] for e in poll_events(admin, shop)} == created

    # Every one of them is still inside the overlap: asked again, stored once.
    (again,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert (again.kept, again.stored) == (250, 0)
    assert len(poll_events(admin, shop)) == 250
    retire_events(admin, shop)


def test_an_ignored_filter_brings_the_whole_table_but_no_wrong_leads(db, vendors, standins, connected_shop, admin,
                                                                     monkeypatch):
    shop = connected_shop()
    connected = admin.execute("SELECT created_at FROM tenants WHERE id = %s", (shop.id,)).fetchone()["created_at"]
    last_year = iso(connected - dt.timedelta(days=400))
    before_us = iso(connected - dt.timedelta(hours=2))
    old = [new_order(standins, shop, order={"createdDate": last_year, "updatedDate": last_year}) for _ in range(3)]
    earlier = [new_order(standins, shop, order={"createdDate": before_us, "updatedDate": before_us})
               for _ in range(2)]
    fresh = [new_order(standins, shop) for _ in range(2)]
    # "$gte" is not an operator ShopMonkey knows: it drops the clause and sends everything.
    monkeypatch.setattr(shopmonkey_client, "since_filter",
                        lambda since: {"updatedDate": {"$gte": iso(since)}})

    (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert (result.outcome, result.received, result.kept, result.stored) == ("ok", 7, 2, 2)  # one page
    assert {e["object_id"] for e in poll_events(admin, shop)} == {o["id"] for o in fresh}

    ingest_until(db, vendors, lambda: all(sms_to(standins, o["phone"]) for o in fresh), message="fresh leads texted")
    assert {lead["order_id"] for lead in leads_of(admin, shop)} == {o["id"] for o in fresh}
    assert not any(sms_to(standins, o["phone"]) or emails_to(standins, o["email"]) for o in old + earlier)


def test_429_with_retry_after_is_waited_out(db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    created = {new_order(standins, shop, with_customer=False)["id"] for _ in range(120)}
    standins.shopmonkey.set_rate_limit(1, window_seconds=1.0)  # the second page meets a 429
    try:
        started = time.monotonic()
        (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
        waited = time.monotonic() - started
    finally:
        standins.shopmonkey.set_rate_limit(None)
    assert result.outcome == "ok", result.error
    assert result.stored == 120 and {e["object_id"] for e in poll_events(admin, shop)} == created
    assert result.requests == order_requests(standins, shop) == 3  # page 1, 429, page 2 again
    assert waited >= 0.9  # Retry-After: 1
    retire_events(admin, shop)


def test_429_longer_than_the_budget_is_honoured_by_the_next_cycles(db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    new_order(standins, shop, with_customer=False)
    standins.shopmonkey.set_rate_limit(1, window_seconds=60.0)
    try:
        # The first cycle spends the one request allowed; the next one meets "429, Retry-After: 60".
        (first,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
        assert first.outcome == "ok"
        now = dt.datetime.now(UTC)
        started = time.monotonic()
        (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id], now=now, config=PollConfig(shop_budget_s=3)).shops
        elapsed = time.monotonic() - started
    finally:
        standins.shopmonkey.set_rate_limit(None)
    # A 429 is a pace, not a failure: the shop stays healthy and waits its turn.
    assert result.outcome == "rate_limited", result.error
    assert elapsed < 3.5  # it did not sleep 60 s inside the cycle
    state = poll_state(admin, shop)
    assert state["health"] == "ok" and state["next_poll_at"] >= now + dt.timedelta(seconds=55)
    assert shop.id not in due_tenant_ids(db, now + dt.timedelta(seconds=30))
    # Retry-After counts from the answer, at most 3.5 s after `now` (asserted above).
    assert shop.id in due_tenant_ids(db, now + dt.timedelta(seconds=60 + 4))


def test_revoked_key_is_reported_while_another_shops_leads_flow(db, vendors, standins, connected_shop, admin):
    revoked, healthy = connected_shop(), connected_shop()
    new_order(standins, revoked)
    standins.shopmonkey.revoke_key(revoked.shopmonkey_api_key.get_secret_value())
    order = new_order(standins, healthy)

    now = dt.datetime.now(UTC)
    cycle = poll_cycle(db, vendors, tenant_ids=[revoked.id, healthy.id], now=now)
    outcomes = {s.slug: s.outcome for s in cycle.shops}
    assert outcomes == {revoked.slug: "unauthorized", healthy.slug: "ok"}
    assert f"unauthorized: {revoked.slug}" in cycle.summary()
    state = poll_state(admin, revoked)
    assert state["health"] == "unauthorized" and "401" in state["last_error"]
    assert state["watermark"] is None and not poll_events(admin, revoked)

    ingest_until(db, vendors, lambda: sms_to(standins, order["phone"]) and emails_to(standins, order["email"]),
                 message="the healthy shop's first touches")

    # A second failure in a row: the shop sits out the next cycles (1 minute), while the
    # healthy shop's next slot comes within one cycle of its poll. (The poll stamps slots
    # from the clock it ran on, a moment after `now`, hence 45 s rather than exactly 30.)
    poll_cycle(db, vendors, tenant_ids=[revoked.id], now=now)
    assert poll_state(admin, revoked)["consecutive_errors"] == 2
    a_cycle_later = now + dt.timedelta(seconds=45)
    assert revoked.id not in due_tenant_ids(db, a_cycle_later)
    assert healthy.id in due_tenant_ids(db, a_cycle_later)


def test_a_hanging_shop_does_not_slow_the_others(db, vendors, standins, connected_shop, admin):
    stuck, others = connected_shop(), [connected_shop() for _ in range(3)]
    orders = [new_order(standins, shop) for shop in others]
    standins.shopmonkey.inject_failures(1, status=None, hang_seconds=5,
                                        api_key=stuck.shopmonkey_api_key.get_secret_value())
    cycle = poll_cycle(db, vendors, tenant_ids=[stuck.id] + [s.id for s in others],
                       config=PollConfig(shop_budget_s=1.5))
    by_slug = {s.slug: s for s in cycle.shops}
    assert by_slug[stuck.slug].outcome == "failing"
    assert all(by_slug[s.slug].outcome == "ok" and by_slug[s.slug].stored == 1 for s in others)
    assert max(by_slug[s.slug].seconds for s in others) < 1.0
    assert cycle.seconds < 3.0
    assert poll_state(admin, stuck)["health"] == "failing"
    ingest_until(db, vendors, lambda: all(sms_to(standins, o["phone"]) for o in orders),
                 message="the other shops' first SMS")


def test_the_watermark_stops_at_what_was_read_when_a_later_page_fails(db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    for _ in range(150):
        new_order(standins, shop, with_customer=False)
    key = shop.shopmonkey_api_key.get_secret_value()
    # Page one answers; page two fails on every attempt.
    standins.shopmonkey.inject_failures(1, status=None, api_key=key)
    standins.shopmonkey.inject_failures(10, status=503, api_key=key)
    try:
        (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id], config=PollConfig(shop_budget_s=4)).shops
    finally:
        while standins.shopmonkey.take_injected(key):
            pass
    assert result.outcome == "failing" and "503" in result.error
    state = poll_state(admin, shop)
    # Page one is stored, and the watermark goes no further than its newest stamp.
    assert result.stored == 100 and state["consecutive_errors"] == 1
    newest_stored = max(stored_hint(e["payload"]).updated_at for e in poll_events(admin, shop))
    assert state["watermark"] <= newest_stored and state["watermark"] > newest_stored - dt.timedelta(seconds=5)

    (retry,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert retry.outcome == "ok" and retry.stored == 50
    assert len(poll_events(admin, shop)) == 150  # nothing skipped, nothing stored twice
    assert poll_state(admin, shop)["health"] == "ok"
    retire_events(admin, shop)


def test_cycle_polls_only_due_shops_never_polled_first_then_each_at_its_slot(db, vendors, standins, connected_shop,
                                                                             make_shop):
    a, b = connected_shop(), connected_shop()
    now = dt.datetime.now(UTC)
    (polled,) = poll_cycle(db, vendors, tenant_ids=[b.id], now=now).shops
    polled_by = dt.datetime.now(UTC)
    # b waits for its next slot, within one cadence; a has never been polled: due at once.
    assert now < polled.next_poll_at <= polled_by + dt.timedelta(seconds=30)
    assert a.id in due_tenant_ids(db, now) and b.id not in due_tenant_ids(db, now)
    due = due_tenant_ids(db, polled.next_poll_at)
    assert a.id in due and b.id in due
    assert due.index(a.id) < due.index(b.id)  # never polled comes first
    inactive = make_shop(active=False)
    assert inactive.id not in due_tenant_ids(db, now)


@pytest.mark.parametrize("rows_in_window", [0, 1])
def test_nothing_new_costs_one_request(db, vendors, standins, connected_shop, rows_in_window):
    shop = connected_shop()
    for _ in range(rows_in_window):
        new_order(standins, shop, with_customer=False)
    poll_cycle(db, vendors, tenant_ids=[shop.id])
    before = order_requests(standins, shop)
    (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
    assert (result.requests, result.stored) == (1, 0)
    assert order_requests(standins, shop) - before == 1


def test_config_defaults_fit_the_cadence():
    config = poll.PollConfig()
    assert config.shop_budget_s <= config.cycle_budget_s < 30
