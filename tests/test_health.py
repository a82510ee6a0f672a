"""Per-shop health (lead_orchestrator/services/health.py): the rules on constructed figures, pass
and fail, and the figures read from constructed rows. No Dagster here."""
from __future__ import annotations

import datetime as dt

from lead_orchestrator.services import health
from lead_orchestrator.services.health import (ERROR, WARN, EventsInState, ShopHealth, all_shops_health, evaluate,
                                      shop_health)
from lead_orchestrator.store.lead_stats import LeadFigures, MissedLead
from tests.health_support import UTC, add_event, add_lead, set_poll_state

NOW = dt.datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def outcome(healths, name):
    return next(o for o in evaluate(healths, NOW) if o.name == name)


def test_a_healthy_shop_passes_every_check():
    ok = ShopHealth(1, "fine", sla=LeadFigures(leads_total=20, sla_eligible=20, sla_met=20))
    outcomes = evaluate([ok], NOW)
    assert [o.name for o in outcomes] == list(health.CHECK_NAMES)
    assert all(o.passed for o in outcomes)
    assert outcomes[0].description == "all 1 shops pass"


def test_first_touch_sla_fails_below_target_and_names_the_misses():
    missed = (MissedLead(7, NOW - dt.timedelta(minutes=40), None, "webhook"),
              MissedLead(9, NOW - dt.timedelta(minutes=20), NOW - dt.timedelta(minutes=19), "poll"))
    slow = ShopHealth(2, "slow", sla=LeadFigures(sla_eligible=10, sla_met=8, deferred_quiet_hours=3), sla_missed=missed)
    at_target = ShopHealth(3, "enough", sla=LeadFigures(sla_eligible=20, sla_met=19))
    idle = ShopHealth(4, "idle")  # no lead in the last hour: nothing to judge
    result = outcome([slow, at_target, idle], "first_touch_sla")
    assert not result.passed and result.severity == ERROR
    [problem] = result.problems
    assert problem.slug == "slow" and problem.since == NOW - dt.timedelta(minutes=40)
    assert "8 of 10 leads" in problem.reason and "(80%, target 95%)" in problem.reason
    assert "1 not touched at all" in problem.reason and "1 of the misses found by the poll" in problem.reason
    assert "3 deferred for quiet hours (not counted)" in problem.reason and "lead ids 7, 9" in problem.reason
    assert result.description.startswith("1 of 3 shops failing: slow: ")


def test_stuck_events_name_parked_and_dead_with_their_reasons():
    since = NOW - dt.timedelta(hours=3)
    shop = ShopHealth(5, "locked-out", parked=EventsInState(4, since, "ShopMonkey refused the API key (401)"),
                      dead=EventsInState(1, NOW - dt.timedelta(hours=1), "lead too old"))
    result = outcome([shop, ShopHealth(6, "fine")], "stuck_events")
    [problem] = result.problems
    assert problem.severity == ERROR and problem.since == since
    assert "4 events parked" in problem.reason and "401" in problem.reason and "1 events dead" in problem.reason


def test_oldest_pending_event_warns_after_a_minute_and_errs_after_five():
    def waited(seconds):
        shop = ShopHealth(7, "s", pending=3, oldest_pending_at=NOW - dt.timedelta(seconds=seconds))
        return outcome([shop], "oldest_pending_event")

    assert waited(45).passed
    assert waited(90).severity == WARN and "oldest for 90 s" in waited(90).problems[0].reason
    assert waited(400).severity == ERROR and "7 min" in waited(400).problems[0].reason


def test_crm_poll_errs_on_a_refused_key_and_warns_on_failing_calls():
    refused = ShopHealth(8, "revoked", poll_health="unauthorized", poll_error="401 Unauthorized",
                         poll_failing_since=NOW - dt.timedelta(hours=2))
    failing = ShopHealth(9, "flaky", poll_health="failing", poll_error="503",
                         poll_last_success_at=NOW - dt.timedelta(minutes=5))
    result = outcome([refused, failing], "crm_poll")
    assert result.severity == ERROR
    assert [(p.slug, p.severity) for p in result.problems] == [("flaky", WARN), ("revoked", ERROR)]
    assert "refuses the shop's API key (401 Unauthorized); never succeeded" in result.problems[1].reason
    assert outcome([failing], "crm_poll").severity == WARN


def test_unknown_sends_warn():
    shop = ShopHealth(10, "ambiguous", unknown_sends=2, unknown_since=NOW - dt.timedelta(days=1))
    result = outcome([shop], "unknown_sends")
    assert result.severity == WARN and "2 sends with an unknown outcome" in result.problems[0].reason


def test_figures_of_a_failing_shop_read_from_its_rows(db, make_shop):
    sick, well = make_shop(), make_shop()
    now = dt.datetime.now(UTC)
    add_lead(db, sick, created=now - dt.timedelta(minutes=30), first_seen=now - dt.timedelta(minutes=29),
             source="poll", sent_after_s=75)
    add_lead(db, sick, created=now - dt.timedelta(minutes=10), first_seen=now - dt.timedelta(minutes=10),
             sent_after_s=2)
    add_lead(db, sick, created=now - dt.timedelta(hours=3), first_seen=now - dt.timedelta(hours=3))  # outside the hour
    add_event(db, sick, status="parked", received_at=now - dt.timedelta(hours=2), error="refused key 401")
    add_event(db, sick, status="dead", received_at=now - dt.timedelta(days=9))  # died long ago: not counted
    add_event(db, sick, status="pending", received_at=now - dt.timedelta(minutes=6))
    add_event(db, sick, status="done", received_at=now - dt.timedelta(minutes=8))
    set_poll_state(db, sick, health="unauthorized", error="401", last_success=now - dt.timedelta(hours=5))
    add_lead(db, sick, created=now, first_seen=now, first_step_status="unknown", channels=("sms",))
    add_lead(db, well, created=now - dt.timedelta(minutes=3), first_seen=now - dt.timedelta(minutes=3),
             sent_after_s=1)

    with db.tenant_tx(sick.id) as conn:
        h = shop_health(conn, sick.id, now)
    assert h.slug == sick.slug
    assert (h.sla.sla_eligible, h.sla.sla_met, h.sla.poll_found) == (2, 1, 1)
    assert [m.source for m in h.sla_missed] == ["poll"]
    assert (h.parked.count, h.parked.error, h.dead.count) == (1, "refused key 401", 0)
    assert h.pending == 1 and h.oldest_pending_at == now - dt.timedelta(minutes=6)
    assert (h.poll_health, h.poll_failing_since) == ("unauthorized", now - dt.timedelta(hours=5))
    assert h.unknown_sends == 1

    healths = {x.slug: x for x in all_shops_health(db, now)}
    by_check = {o.name: {p.slug: p for p in o.problems} for o in evaluate(list(healths.values()), now)}
    for name in health.CHECK_NAMES:
        assert sick.slug in by_check[name], name
        assert well.slug not in by_check[name], name
    assert by_check["oldest_pending_event"][sick.slug].severity == ERROR
