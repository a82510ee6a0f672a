"""A shop's lead figures from the tables (lead_stats): time to first touch from the
estimate's creation and from our first sight, the 30-second SLA with quiet-hour
deferrals apart, and the funnel counts. Built row by row, checked without Dagster."""
from __future__ import annotations

import datetime as dt

from lead_orchestrator.store.lead_stats import first_touch_latencies, lead_figures, missed_first_touches, shop_stats
from tests.health_support import UTC, add_event, add_lead


def test_figures_measure_from_the_estimates_creation_and_count_deferrals_apart(db, make_shop):
    shop = make_shop()
    now = dt.datetime.now(UTC).replace(microsecond=0)
    t = now - dt.timedelta(hours=2)
    add_lead(db, shop, created=t, first_seen=t + dt.timedelta(seconds=1), sent_after_s=4, delivered=True)
    # The poll found it 40 s after the estimate was written: our part took 1 s, the customer waited 41.
    poll = add_lead(db, shop, created=t, first_seen=t + dt.timedelta(seconds=40), source="poll", sent_after_s=41)
    add_lead(db, shop, created=t, first_seen=t, deferred=True, sent_after_s=9 * 3600)  # quiet hours
    add_lead(db, shop, created=t, first_seen=t, sent_after_s=10, status="stopped", reason="replied", delivered=True)
    add_lead(db, shop, created=t, first_seen=t, sent_after_s=12, status="converted", reason="authorized")
    add_lead(db, shop, created=t, first_seen=t, sent_after_s=20, status="stopped", reason="opted_out")
    add_lead(db, shop, created=t, first_seen=t, sent_after_s=25, bounced=True, status="stopped",
             reason="email_bounced")
    add_lead(db, shop, created=t, first_seen=t, status="disqualified", reason="no_contact")  # not a lead
    add_lead(db, shop, created=t, first_seen=t, first_step_status="skipped")  # no usable contact: not owed
    untouched = add_lead(db, shop, created=now - dt.timedelta(seconds=90), first_seen=now - dt.timedelta(seconds=89))
    add_lead(db, shop, created=now - dt.timedelta(seconds=5), first_seen=now - dt.timedelta(seconds=4))  # too young

    with db.tenant_tx(shop.id) as conn:
        f = lead_figures(conn, now)
        stats = shop_stats(conn, now)
        missed = missed_first_touches(conn, now, first_seen_from=t - dt.timedelta(minutes=1))
        latencies = first_touch_latencies(conn, first_seen_from=t - dt.timedelta(minutes=1), first_seen_to=now)

    assert (f.leads_total, f.active, f.touched) == (10, 6, 7)
    assert (f.delivered, f.replied, f.converted, f.opted_out, f.bounced) == (2, 1, 1, 1, 1)
    assert (f.deferred_quiet_hours, f.poll_found) == (1, 1)
    # Eligible: the six touched without deferral, and the one untouched for 90 s; the 5-s-old
    # one is not due yet, the skipped one was not owed, the deferred one is counted apart.
    assert (f.sla_eligible, f.sla_met) == (7, 5)
    assert f.share_under_sla == 5 / 7
    assert sorted(latencies) == [4, 10, 12, 20, 25, 41]
    assert f.first_touch_p50_s == 16.0  # median of 4, 10, 12, 20, 25, 41
    assert f.first_sight_to_touch_p50_s == 11.0  # poll: 1 s after first sight; webhook one: 3 s
    assert [m.lead_id for m in missed] == [poll, untouched]
    assert missed[0].source == "poll" and missed[1].first_sent_at is None
    assert stats.figures == f and stats.disqualified == 1 and stats.events_parked == 0


def test_figures_of_named_leads_and_of_a_day_only(db, make_shop):
    shop = make_shop()
    now = dt.datetime.now(UTC)
    day_start = now - dt.timedelta(days=1)
    inside = add_lead(db, shop, created=day_start + dt.timedelta(hours=1), first_seen=day_start + dt.timedelta(hours=1),
                      sent_after_s=3)
    add_lead(db, shop, created=day_start - dt.timedelta(hours=1), first_seen=day_start - dt.timedelta(hours=1),
             sent_after_s=50)
    with db.tenant_tx(shop.id) as conn:
        named = lead_figures(conn, now, lead_ids=[inside])
        day = lead_figures(conn, now, first_seen_from=day_start, first_seen_to=now)
        everything = lead_figures(conn, now)
    assert (named.leads_total, named.first_touch_p50_s) == (1, 3.0)
    assert day == named
    assert everything.leads_total == 2 and everything.sla_met == 1


def test_stuck_events_and_unknown_sends_are_counted(db, make_shop):
    shop = make_shop()
    now = dt.datetime.now(UTC)
    add_event(db, shop, status="parked", received_at=now, error="401")
    add_event(db, shop, status="dead", received_at=now, error="gave up")
    add_event(db, shop, status="dead", received_at=now, error="gave up")
    add_event(db, shop, status="done", received_at=now)
    add_lead(db, shop, created=now, first_seen=now, first_step_status="unknown", channels=("sms",))
    with db.tenant_tx(shop.id) as conn:
        stats = shop_stats(conn, now)
    assert (stats.events_parked, stats.events_dead, stats.unknown_sends) == (1, 2, 1)


def test_figures_are_one_shops_only(db, make_shop):
    mine, other = make_shop(), make_shop()
    now = dt.datetime.now(UTC)
    add_lead(db, other, created=now, first_seen=now, sent_after_s=2)
    with db.tenant_tx(mine.id) as conn:
        assert lead_figures(conn, now).leads_total == 0
