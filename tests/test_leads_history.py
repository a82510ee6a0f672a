"""The `leads` history in real Dagster: each point carries the shop's cumulative figures
from the tables, what changed since its previous point and the batch's own figures; the
touch-point job records the shops whose figures moved (a reply, a conversion); points
are runless, so deleting runs never removes them."""
from __future__ import annotations

import datetime as dt

from dagster import AssetKey, AssetRecordsFilter

from lead_orchestrator.services.ingest import EventResult
from orchestrator_dagster.definitions import defs
from orchestrator_dagster.history import LeadsHistory
from orchestrator_dagster.schedules import window_for_tick
from tests.health_support import UTC, add_lead


def points(instance, slug):
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("leads"), asset_partitions=[slug]),
                                              limit=20).records
    return [r for r in records]  # newest first


def values(record) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_a_point_has_cumulative_figures_changes_and_the_batch(dagster_instance, db, make_shop):
    shop = make_shop()
    now = dt.datetime.now(UTC)
    old = add_lead(db, shop, created=now - dt.timedelta(days=2), first_seen=now - dt.timedelta(days=2),
                   sent_after_s=3, status="converted", reason="authorized")
    new = add_lead(db, shop, created=now - dt.timedelta(seconds=70), first_seen=now - dt.timedelta(seconds=30),
                   source="poll", sent_after_s=41)
    history = LeadsHistory(db, dagster_instance)
    results = [EventResult(shop.id, shop.slug, 1, "poll", "new_lead", lead_id=new),
               EventResult(shop.id, shop.slug, 2, "webhook", "updated", lead_id=old),
               EventResult(shop.id, shop.slug, 3, "webhook", "parked")]
    assert history.record_results(results, "dispatcher") == 1

    [point] = points(dagster_instance, shop.slug)
    assert point.run_id == ""  # runless: outlives any run
    v = values(point)
    assert (v["leads_total"], v["leads_touched"], v["leads_converted"], v["leads_poll_found"]) == (2, 2, 1, 1)
    assert v["first_touch_p50_s"] == 22.0 and v["first_touch_share_under_30s"] == 0.5
    assert (v["batch_events"], v["batch_new"], v["batch_updated"], v["batch_parked"]) == (3, 1, 1, 1)
    assert v["batch_sources"] == {"poll": 1, "webhook": 2} and sorted(v["batch_lead_ids"]) == sorted([new, old])
    # The batch's new lead: 41 s after the estimate's creation, 1 s after our first sight of it.
    assert (v["batch_first_touch_p50_s"], v["batch_first_sight_to_touch_p50_s"], v["batch_poll_found"]) == (41, 1, 1)
    assert v["changed_leads_total"] == 2  # the first point: everything is new
    assert v["recorded_by"] == "dispatcher"

    with db.tenant_tx(shop.id) as conn:
        conn.execute("UPDATE leads SET status = 'stopped', status_reason = 'replied' WHERE id = %s", (new,))
    history.record_results([EventResult(shop.id, shop.slug, 4, "webhook", "ignored")], "dispatcher")
    latest = values(points(dagster_instance, shop.slug)[0])
    assert latest["leads_replied"] == 1 and latest["changed_leads_replied"] == 1
    assert "changed_leads_total" not in latest
    assert points(dagster_instance, shop.slug)[0].asset_materialization.description.endswith(
        "dispatcher: leads_active -1, leads_replied +1")


def test_the_touch_point_run_records_shops_whose_figures_moved(dagster_instance, db, connected_shop):
    shop = connected_shop()
    now = dt.datetime.now(UTC)
    lead = add_lead(db, shop, created=now - dt.timedelta(hours=1), first_seen=now - dt.timedelta(hours=1),
                    sent_after_s=2, delivered=True)
    job = defs.get_job_def("touchpoints_job")

    def run():
        result = job.execute_in_process(instance=dagster_instance,
                                        partition_key=window_for_tick(dt.datetime.now(UTC)))
        assert result.success
        return result.run_id

    def recorded_by(run_id):
        return [p for p in points(dagster_instance, shop.slug)
                if values(p)["recorded_by"] == f"touch-point run {run_id[:8]}"]

    # Another run over every shop (the session's daemon, another test) may record a point
    # for this shop too: what matters is what each of our runs recorded.
    first_run = run()
    assert len(recorded_by(first_run)) == 1

    second_run = run()  # nothing moved: no new point
    assert recorded_by(second_run) == []

    # The customer answered (through the receiver): the next run records it.
    with db.tenant_tx(shop.id) as conn:
        conn.execute("UPDATE leads SET status = 'converted', status_reason = 'appointment_booked' WHERE id = %s",
                     (lead,))
    run()
    newest = values(points(dagster_instance, shop.slug)[0])
    assert newest["leads_converted"] == 1 and newest["changed_leads_converted"] == 1
