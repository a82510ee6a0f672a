"""Tekmetric shops through the real stack: the stand-in's webhooks over HTTP to the
receiver, the inbox, the ingest path (the dispatcher, or an ingest run) fetching the
repair order, customer and vehicle from the stand-in, Twilio and SendGrid stand-ins.

Duplicate and late webhooks make one lead, one SMS, one email; every status that ends an
estimate ends the lead with its reason, Saved for Later does not; a phone as typed in
Tekmetric is normalised; `okForMarketing` is not SMS consent either way, our opt-out
ledger is; the poll finds estimates and deletions whose webhooks were lost; quiet hours
defer; `why`, `preview` and the Dagster history and checks work for the shop; a refused
partner app parks events until `crm-app set` releases them."""
from __future__ import annotations

import datetime as dt
import os

import psycopg
import pytest
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, build_sensor_context

from lead_orchestrator.domain.contact_points import normalize_phone
from lead_orchestrator.services.ingest import claim_events, process_claimed_events
from lead_orchestrator.store.crm_apps import set_crm_app
# Imported before any test sets the Dagster environment, as in a whole-suite run: the
# code location must read TEKMETRIC_BASE_URL when it runs, not when it is imported.
from orchestrator_dagster.definitions import defs
from tests.conftest import emails_to, sms_to
from tests.support import session_box, wait_for
from tests.tekmetric_support import APP_CLIENT_ID, APP_SECRET, configure_app
from tests.test_cli_touchpoints import cli  # noqa: F401 - the CLI fixture
from tests.test_dispatcher import running_dispatcher  # noqa: F401 - the fast path, as a fixture

UTC = dt.timezone.utc


@pytest.fixture
def shop(connected_shop):
    return connected_shop(crm="tekmetric")


def process_all(db, vendors):
    return process_claimed_events(db, vendors, claim_events(db, "tekmetric-test", 500))


def create(standins, shop, **kwargs) -> dict:
    made = standins.tekmetric.create_order(shop.credentials.shop_id, wait_webhook=True, **kwargs)
    assert [d.status for d in made["deliveries"]] == [202], [d.as_dict() for d in made["deliveries"]]
    return made


def phone_of(made: dict) -> str:
    return normalize_phone(made["customer"]["phone"][0]["number"])


def lead_of(admin, shop, order_id) -> dict | None:
    return admin.execute("SELECT * FROM leads WHERE tenant_id = %s AND order_id = %s",
                         (shop.id, str(order_id))).fetchone()


def touches_of(admin, lead_id) -> list[dict]:
    return admin.execute("SELECT step, channel, status, reason, to_address FROM touches WHERE lead_id = %s "
                         "ORDER BY step, channel", (lead_id,)).fetchall()


def inbox_settled(admin, shop) -> bool:
    row = admin.execute("SELECT count(*) FILTER (WHERE status IN ('pending', 'processing')) AS open, count(*) AS n "
                        "FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()
    return row["n"] > 0 and row["open"] == 0


def test_duplicate_and_late_webhooks_make_one_lead_one_sms_one_email(running_dispatcher, standins, admin, shop):
    standins.tekmetric.webhooks.set_faults(duplicate_next=1, delay_seconds=1.5)  # ~13 s late in real life
    try:
        made = standins.tekmetric.create_order(shop.credentials.shop_id, wait_webhook=True)
    finally:
        standins.tekmetric.webhooks.reset()
    assert sorted(d.status for d in made["deliveries"]) == [200, 202]
    order_id, phone, email = made["order"]["id"], phone_of(made), made["customer"]["email"]
    wait_for(lambda: sms_to(standins, phone) and emails_to(standins, email), timeout=20, message="first touches")
    # The same change delivered once more after it was processed: still nothing new.
    late = standins.tekmetric.send_webhook(order_id, f"Repair Order #{made['order']['repairOrderNumber']} created")
    assert [d.status for d in late] == [200]
    wait_for(lambda: inbox_settled(admin, shop), timeout=20, message="inbox processed")
    assert admin.execute("SELECT count(*) AS n FROM leads WHERE tenant_id = %s", (shop.id,)).fetchone()["n"] == 1
    assert admin.execute("SELECT count(*) AS n FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()["n"] == 1
    assert len(sms_to(standins, phone)) == 1 and len(emails_to(standins, email)) == 1
    lead = lead_of(admin, shop, order_id)
    assert (lead["status"], lead["source"], lead["phone_e164"], lead["email"]) == ("active", "webhook", phone, email)
    assert lead["vehicle_name"] == "2018 Toyota Camry" and lead["total_cents"] == made["order"]["totalSales"]


@pytest.mark.parametrize("status,reason,lead_status", [
    (2, "became_repair_order", "converted"),
    (3, "completed", "converted"),
    (5, "invoiced", "converted"),
    (6, "invoiced", "converted"),
    (7, "deleted", "closed"),
])
def test_a_status_past_estimate_ends_the_lead_with_its_reason(db, vendors, standins, admin, shop, status, reason,
                                                              lead_status):
    made = create(standins, shop)
    process_all(db, vendors)
    lead = lead_of(admin, shop, made["order"]["id"])
    assert lead["status"] == "active"
    if status == 7:
        standins.tekmetric.delete_order(made["order"]["id"], wait_webhook=True)
    else:
        standins.tekmetric.update_order(made["order"]["id"], {"repairOrderStatus": status}, wait_webhook=True)
    process_all(db, vendors)
    ended = lead_of(admin, shop, made["order"]["id"])
    assert (ended["status"], ended["status_reason"]) == (lead_status, reason)
    follow_ups = [t for t in touches_of(admin, lead["id"]) if t["step"] > 0]
    assert follow_ups and all(t["status"] == "cancelled" for t in follow_ups)


def test_saved_for_later_stays_a_lead_and_an_answer_on_a_job_ends_it(db, vendors, standins, admin, shop):
    made = create(standins, shop)
    process_all(db, vendors)
    standins.tekmetric.update_order(made["order"]["id"], {"repairOrderStatus": 4}, wait_webhook=True)
    process_all(db, vendors)
    lead = lead_of(admin, shop, made["order"]["id"])
    assert lead["status"] == "active"  # "let me think about it": who the follow-ups are for
    assert {t["status"] for t in touches_of(admin, lead["id"]) if t["step"] > 0} == {"scheduled"}

    declined = create(standins, shop)
    process_all(db, vendors)
    standins.tekmetric.answer_jobs(made["order"]["id"], True, wait_webhook=True)
    standins.tekmetric.answer_jobs(declined["order"]["id"], False, wait_webhook=True)
    process_all(db, vendors)
    assert lead_of(admin, shop, made["order"]["id"])["status_reason"] == "authorized"
    assert lead_of(admin, shop, declined["order"]["id"])["status_reason"] == "declined"


def test_a_phone_as_typed_in_tekmetric_is_normalised(db, vendors, standins, admin, shop):
    made = create(standins, shop, customer={"phone": [{"id": 1, "number": "303-555-0100", "type": "Cell",
                                                       "primary": True}]})
    process_all(db, vendors)
    lead = lead_of(admin, shop, made["order"]["id"])
    assert lead["phone_e164"] == "+13035550100"
    sent = [t for t in touches_of(admin, lead["id"]) if t["step"] == 0 and t["channel"] == "sms"]
    assert [(t["status"], t["to_address"]) for t in sent] == [("sent", "+13035550100")]


@pytest.mark.parametrize("ok_for_marketing", [False, True])
def test_ok_for_marketing_is_not_sms_consent_and_our_opt_out_ledger_is(db, vendors, standins, admin, shop, receiver,
                                                                       ok_for_marketing):
    from tests.test_receiver_twilio import inbound, post_twilio

    made = create(standins, shop, customer={"okForMarketing": ok_for_marketing})
    process_all(db, vendors)
    phone, email = phone_of(made), made["customer"]["email"]
    lead = lead_of(admin, shop, made["order"]["id"])
    assert lead["status"] == "active" and lead["phone_e164"] == phone
    assert len(sms_to(standins, phone)) == 1 and len(emails_to(standins, email)) == 1  # false is no refusal

    # STOP: the customer's own word, whatever Tekmetric's flag says.
    assert post_twilio(receiver, shop, "inbound", inbound(shop, phone, "STOP")).status_code == 200
    assert lead_of(admin, shop, made["order"]["id"])["status"] == "stopped"
    again = create(standins, shop, customer={"okForMarketing": True, "phone": made["customer"]["phone"],
                                             "email": email})
    process_all(db, vendors)
    assert lead_of(admin, shop, again["order"]["id"]) is not None
    assert len(sms_to(standins, phone)) == 1  # opted out: no text for the new estimate either
    assert len(emails_to(standins, email)) == 2  # email was not opted out


def test_the_poll_finds_what_the_webhooks_lost(db, vendors, standins, admin, shop):
    from lead_orchestrator.services.poll import poll_cycle

    standins.tekmetric.webhooks.set_faults(drop_next=2)  # some shops never get their webhooks
    try:
        made = standins.tekmetric.create_order(shop.credentials.shop_id, wait_webhook=True)
        assert [d.dropped for d in made["deliveries"]] == [True]
        first = poll_cycle(db, vendors, tenant_ids=[shop.id])
        assert first.with_outcome("ok") and first.stored == 1
        process_all(db, vendors)
        lead = lead_of(admin, shop, made["order"]["id"])
        assert (lead["status"], lead["source"]) == ("active", "poll")
        assert len(sms_to(standins, phone_of(made))) == 1
        # Deleted, and that webhook lost too: the poll's own deletion query sees it.
        standins.tekmetric.delete_order(made["order"]["id"], wait_webhook=True)
        poll_cycle(db, vendors, tenant_ids=[shop.id])
        process_all(db, vendors)
    finally:
        standins.tekmetric.webhooks.reset()
    assert (lead_of(admin, shop, made["order"]["id"])["status_reason"]) == "deleted"


def test_quiet_hours_defer_the_first_touch(db, vendors, standins, admin, connected_shop):
    now = dt.datetime.now(UTC)
    opens = (now + dt.timedelta(hours=3)).time().replace(second=0, microsecond=0)
    closes = (now + dt.timedelta(hours=4)).time().replace(second=0, microsecond=0)
    if closes < opens:  # the window would wrap past midnight: take one that cannot contain now
        opens, closes = dt.time(1, 0), dt.time(2, 0)
    shop = connected_shop(crm="tekmetric", time_zone="UTC", send_window_start=opens, send_window_end=closes)
    made = create(standins, shop)
    process_all(db, vendors)
    assert sms_to(standins, phone_of(made)) == []
    first = [t for t in touches_of(admin, lead_of(admin, shop, made["order"]["id"])["id"]) if t["step"] == 0]
    assert {(t["status"], t["reason"]) for t in first} == {("deferred", "quiet_hours")}


def test_why_and_preview_for_a_tekmetric_shop(db, vendors, standins, shop, cli):  # noqa: F811
    made = create(standins, shop, customer={"firstName": "Rosa", "lastName": "Quill"})
    process_all(db, vendors)
    standins.tekmetric.answer_jobs(made["order"]["id"], True, wait_webhook=True)
    process_all(db, vendors)
    out = cli("why", shop.slug, made["order"]["id"]).output
    assert f"order {made['order']['id']} (estimate #{made['order']['repairOrderNumber']})" in out, out
    assert "Rosa Quill" in out and "authorized" in out
    preview = cli("preview", shop.slug, "--at", "2027-03-02T10:00")
    assert preview.exit_code == 0 and preview.output.count("== step") >= 1


def test_the_dagster_history_and_checks_see_the_tekmetric_shop(dagster_instance, database_url, db, vendors, standins,
                                                                admin, shop):
    from orchestrator_dagster.checks import health_checks_sensor
    from orchestrator_dagster.resources import DatabaseResource

    # The partner app's credentials are refused: the estimate's event parks, and the
    # health check names the shop and why.
    standins.tekmetric.revoke_token(APP_CLIENT_ID, refuse_credentials=True)
    try:
        made = create(standins, shop)
        process_all(db, vendors)
        parked = admin.execute("SELECT status, error FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()
        assert parked["status"] == "parked", parked
        database = DatabaseResource(database_url=database_url, encryption_keys=os.environ["LEAD_ENCRYPTION_KEY"])
        context = build_sensor_context(instance=dagster_instance, resources={"database": database})
        health_checks_sensor.evaluate_tick(context)
        key = AssetCheckKey(AssetKey("leads"), "stuck_events")
        stuck = dagster_instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        problems = {p["shop"]: p for p in stuck.evaluation.metadata["problems"].value}
        assert "parked" in problems[shop.slug]["reason"]
    finally:
        configure_app(standins, database_url)  # the stand-in accepts the app again
    # The app's credentials stored again (as after fixing them): what waited is released,
    # and an ingest run makes the lead and records it in the shop's partition.
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        assert set_crm_app(conn, "tekmetric", APP_CLIENT_ID, APP_SECRET, session_box()) >= 1
    granted = "SELECT coalesce(sum(granted), 0) AS n FROM crm_app_budget"
    before = admin.execute(granted).fetchone()["n"]
    result = defs.get_job_def("ingest_job").execute_in_process(instance=dagster_instance)
    assert result.success
    assert lead_of(admin, shop, made["order"]["id"])["status"] == "active"
    # The run's Tekmetric requests were spent from the app's budget every process shares.
    assert admin.execute(granted).fetchone()["n"] > before
    [record] = dagster_instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("leads"), asset_partitions=[shop.slug]), limit=5).records
    assert record.asset_materialization.metadata["batch_new"].value == 1
