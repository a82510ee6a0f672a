"""Tekmetric shops in the backup poll: through the CRM port against the Tekmetric stand-in
over HTTP, their cadence planned inside the partner app's budget, the deletion query on
its own window, and one budget shared by every process (PostgreSQL)."""
from __future__ import annotations

import datetime as dt
import functools
import time

import pytest

from tests.support import session_box
from lead_orchestrator.crm.app_budget import AppBudget, app_key
from lead_orchestrator.crm.errors import CrmRateLimited
from lead_orchestrator.crm.tekmetric import TekmetricAdapter, TekmetricClient, partner_app_client, plan_poll
from lead_orchestrator.services.poll import PollConfig, poll_cycle
from lead_orchestrator.store.db import Database
from tests.poll_support import add_shops, poll_db  # noqa: F401 - poll_db is a fixture

UTC = dt.timezone.utc
APP, SECRET = "poll-app", "poll-secret"


@pytest.fixture
def tm(standins):
    state = standins.tekmetric
    state.reset()
    state.add_app(APP, SECRET)
    yield state
    state.reset()


def tekmetric_shops(url: str, tm, count: int, first_id: int = 101) -> dict[int, int]:
    """`count` shops of our own, each a Tekmetric shop of the app: tenant id -> Tekmetric id."""
    shops = {}
    for i, tenant_id in enumerate(add_shops(url, count)):
        tm.add_shop(first_id + i, client_id=APP)
        shops[tenant_id] = first_id + i
    return shops


def adapters(client, shops: dict[int, int]):
    """The poll's crm_for: each of these shops is the app's Tekmetric shop."""
    def crm_for(shop, *, http, pacer):
        return TekmetricAdapter(client, shops[shop.id])
    return crm_for


def events(database, tenant_id: int) -> list[dict]:
    with database.tenant_tx(tenant_id) as conn:
        return conn.execute("SELECT crm, operation, table_name, object_id, dedup_key, payload FROM inbox_events "
                            "WHERE source = 'poll' ORDER BY id").fetchall()


def state(database, tenant_id: int) -> dict:
    with database.tenant_tx(tenant_id) as conn:
        return conn.execute("SELECT * FROM poll_state").fetchone()


def test_tekmetric_shops_are_polled_through_the_port_and_deletions_on_their_own_window(poll_db, vendors, standins,
                                                                                       tm):
    url, database = poll_db
    shops = tekmetric_shops(url, tm, 2)
    (a, tek_a), (b, tek_b) = shops.items()
    kept = tm.create_order(tek_a, emit_webhook=False)["order"]
    gone = tm.create_order(tek_a, emit_webhook=False)["order"]
    tm.delete_order(gone["id"], emit_webhook=False)
    with partner_app_client(database, standins.tekmetric_url, APP, SECRET) as client:
        client.scope()  # the token first, so that each scan counts only its own requests
        crm_for = adapters(client, shops)
        t0 = dt.datetime.now(UTC)
        first = {s.tenant_id: s for s in poll_cycle(database, vendors, now=t0, crm_for=crm_for).shops}
        assert {s.outcome for s in first.values()} == {"ok"}
        # The change query and, on a shop's first poll, the separate deletion query.
        assert first[b].requests == 2 and first[b].deletions_checked
        stored = {(e["operation"], e["object_id"]) for e in events(database, a)}
        assert stored == {("UPDATE", str(kept["id"])), ("DELETE", str(gone["id"]))}
        # Stored as the port's hints, under the keys the shop's webhooks would have.
        assert {e["crm"] for e in events(database, a)} == {"tekmetric"}
        assert all(e["dedup_key"].startswith(f"tekmetric:{e['table_name']}:{e['object_id']}:")
                   for e in events(database, a))
        row = state(database, a)
        assert row["budget_app"] == app_key("tekmetric", APP) and row["cadence_s"] == 30
        assert row["deletions_checked_at"] == t0 and row["busy"]

        # Its next slot: the change query only (deletions every 10th cycle of the plan).
        later = tm.create_order(tek_b, emit_webhook=False)["order"]
        second = {s.tenant_id: s for s in poll_cycle(database, vendors, now=first[b].next_poll_at,
                                                     tenant_ids=[b], crm_for=crm_for).shops}
        assert second[b].requests == 1 and not second[b].deletions_checked
        assert [e["object_id"] for e in events(database, b)] == [str(later["id"])]

        # A deletion made meanwhile is found although the watermark moved well past it
        # first: the deletion query starts where it last ran, not at the watermark.
        tm.delete_order(later["id"], emit_webhook=False)
        stamp = (t0 + dt.timedelta(seconds=200)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        changed = tm.create_order(tek_b, order={"updatedDate": stamp}, emit_webhook=False)["order"]
        (third,) = poll_cycle(database, vendors, now=t0 + dt.timedelta(seconds=210), tenant_ids=[b],
                              crm_for=crm_for).shops
        assert third.requests == 1 and state(database, b)["watermark"] == dt.datetime.fromisoformat(stamp)
        assert str(changed["id"]) in {e["object_id"] for e in events(database, b)}
        (fourth,) = poll_cycle(database, vendors, now=t0 + dt.timedelta(seconds=10 * 30), tenant_ids=[b],
                               crm_for=crm_for).shops
        assert fourth.requests == 2 and fourth.deletions_checked
        assert ("DELETE", str(later["id"])) in {(e["operation"], e["object_id"]) for e in events(database, b)}


def test_a_short_budget_keeps_busy_shops_at_30_seconds_and_spaces_the_quiet_ones(poll_db, vendors, standins, tm):
    url, database = poll_db
    shops = tekmetric_shops(url, tm, 20)
    busy = list(shops)[:2]
    for tenant_id in busy:
        tm.create_order(shops[tenant_id], emit_webhook=False)
    # 30 requests a minute (28 planned), nothing kept back: 12 shops fit at 30 s, not 20.
    planner = functools.partial(plan_poll, reserve_per_minute=0)
    budget = AppBudget(database, app_key("tekmetric", APP), 30, planner=planner, burst=100)
    with TekmetricClient(standins.tekmetric_url, APP, SECRET, limiter=budget) as client:
        crm_for = adapters(client, shops)
        t0 = dt.datetime.now(UTC)
        first = poll_cycle(database, vendors, now=t0, crm_for=crm_for)
        assert len(first.with_outcome("ok")) == 20
        with database.system_tx() as conn:
            counts = conn.execute("SELECT * FROM poll_budget_counts(%s)", (budget.app,)).fetchone()
        assert counts == {"shops": 20, "busy": 2}
        plan = planner(20, busy=2, budget_per_minute=30)
        assert plan.busy_interval_s == 30 < plan.quiet_interval_s

        second = {s.tenant_id: s for s in poll_cycle(database, vendors, now=t0 + dt.timedelta(minutes=1),
                                                     crm_for=crm_for).shops}
    assert len(second) == 20
    for tenant_id, polled in second.items():
        cadence = 30 if tenant_id in busy else plan.quiet_interval_s
        assert polled.cadence_s == cadence and state(database, tenant_id)["cadence_s"] == cadence
        gap = (polled.next_poll_at - (t0 + dt.timedelta(minutes=1))).total_seconds()
        assert 0 < gap <= cadence + 1
    # The quiet shops' slots are spread over their longer cycle, not bunched.
    quiet = sorted(second[t].next_poll_at for t in second if t not in busy)
    assert (quiet[-1] - quiet[0]).total_seconds() > plan.quiet_interval_s / 2


def test_the_app_budget_is_one_for_every_process(poll_db):
    url, database = poll_db
    other = Database(url, max_size=2, name="other-process", box=session_box()).open()
    try:
        # 60 a minute (57 let through: a request every 1.05 s), a burst of 2, never waiting.
        one, two = (AppBudget(db, "tekmetric:shared", 60, burst=2, max_wait_s=0) for db in (database, other))
        started = time.monotonic()
        granted = 0
        for budget in [one, two] * 4:
            try:
                budget.acquire()
                granted += 1
            except CrmRateLimited as exc:
                assert 0 < exc.retry_after <= 1.1
        elapsed = time.monotonic() - started
        # The burst and the one slot due now, plus one per interval that passed: shared.
        assert granted <= 2 + 1 + int(elapsed / (60 / 57))
        assert one.refused + two.refused == 8 - granted > 0
        assert one.max_per_minute == 57 + 2 + 1 <= 60
    finally:
        other.close()


def test_a_429_holds_back_every_process_of_the_app_without_a_request(poll_db, standins, tm):
    url, database = poll_db
    tm.add_shop(7, client_id=APP)
    tm.set_budget(3, 60)  # Tekmetric's own limit, lower than what our budget lets through
    other = Database(url, max_size=2, name="other-process").open()
    try:
        with partner_app_client(database, standins.tekmetric_url, APP, SECRET) as first, \
                partner_app_client(other, standins.tekmetric_url, APP, SECRET) as second:
            first.scope()  # the token request counts against the budget too
            first.get("/repair-orders", {"shop": 7})
            first.get("/repair-orders", {"shop": 7})
            with pytest.raises(CrmRateLimited):
                first.get("/repair-orders", {"shop": 7})  # 429
            sent = tm.request_counts()["total"]
            # Another process of the same app stops before sending anything.
            with pytest.raises(CrmRateLimited, match="holding back"):
                second.get("/repair-orders", {"shop": 7})
            assert tm.request_counts()["total"] == sent and tm.request_counts()["rate_limited"] == 1
    finally:
        other.close()


def test_a_limiter_refusal_moves_the_shop_to_a_later_slot_not_a_failure(poll_db, vendors, standins, tm):
    url, database = poll_db
    shops = tekmetric_shops(url, tm, 6)
    budget = AppBudget(database, app_key("tekmetric", APP), 600, planner=plan_poll, burst=3, max_wait_s=0)
    with TekmetricClient(standins.tekmetric_url, APP, SECRET, limiter=budget) as client:
        now = dt.datetime.now(UTC)
        cycle = poll_cycle(database, vendors, now=now, crm_for=adapters(client, shops),
                           config=PollConfig(concurrency=1))
    limited = cycle.with_outcome("rate_limited")
    assert limited and tm.request_counts()["rate_limited"] == 0
    for shop in limited:
        row = state(database, shop.tenant_id)
        assert row["health"] == "ok" and row["consecutive_errors"] == 0 and row["wait_reason"] == "rate_limited"
        assert now < row["next_poll_at"] <= now + dt.timedelta(seconds=32)
    assert "rate limited (moved to a later slot)" in cycle.summary()


def test_the_registry_builds_the_apps_client_on_the_shared_budget_when_vendors_has_the_database(
        db, vendors, standins, connected_shop, admin):
    """The default path: a Tekmetric shop as `shops add --crm tekmetric` makes it, reached
    through the registry, with the process's Vendors carrying the database."""
    import dataclasses

    from lead_orchestrator.crm.app_budget import AppBudget
    from tests.tekmetric_support import APP_CLIENT_ID

    shop = connected_shop(crm="tekmetric")
    with_db = dataclasses.replace(vendors, db=db, _cache={})
    try:
        assert isinstance(with_db.tekmetric(shop).limiter, AppBudget)
        now = dt.datetime.now(UTC)
        (first,) = poll_cycle(db, with_db, now=now, tenant_ids=[shop.id]).shops
        (second,) = poll_cycle(db, with_db, now=first.next_poll_at, tenant_ids=[shop.id]).shops
    finally:
        with_db.close()
    assert (first.outcome, second.outcome) == ("ok", "ok")
    row = admin.execute("SELECT budget_app, cadence_s FROM poll_state WHERE tenant_id = %s", (shop.id,)).fetchone()
    assert row == {"budget_app": app_key("tekmetric", APP_CLIENT_ID), "cadence_s": 30}
    # Planned: the deletion query on the first poll, not again on the next.
    assert first.deletions_checked and not second.deletions_checked and second.requests == 1
    # Without the database, the app's client counts this process alone, as before.
    assert not isinstance(vendors.tekmetric(shop).limiter, AppBudget)
