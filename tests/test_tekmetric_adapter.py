"""The Tekmetric adapter: mapping to the port's domain objects (pure), the client against
the Tekmetric stand-in over HTTP (token, re-auth, pages, budget), webhook hints, the
request budget planner, and the boundary no Tekmetric JSON key may cross."""
from __future__ import annotations

import datetime as dt
import json
import pathlib
import re
import threading

import httpx
import pytest
from hypothesis import given, strategies as st

from lead_orchestrator.crm.base import (ChangeKind, CrmAdapter, EstimateStatus, InvalidWebhook, PhoneKind,
                                        version_key)
from lead_orchestrator.crm.tekmetric import (TekmetricAdapter, TekmetricClient, new_webhook_token, plan_poll,
                                             shops_served, token_matches, token_sha256)
from lead_orchestrator.crm.tekmetric.budget import BUDGET_PER_MINUTE, SANDBOX_BUDGET_PER_MINUTE, safe_per_minute
from lead_orchestrator.crm.tekmetric.limiter import SlidingWindowLimiter
from lead_orchestrator.crm.tekmetric.client import PAGE_SIZE
from lead_orchestrator.crm.tekmetric.mapping import cents, parse_customer, parse_repair_order, parse_vehicle
from lead_orchestrator.crm.tekmetric.webhooks import parse_webhook
from lead_orchestrator.crm.errors import CrmError, CrmNotFound, CrmRateLimited, CrmUnauthorized, CrmUnavailable

ROOT = pathlib.Path(__file__).resolve().parents[1]
APP, SECRET, SHOP, OTHER = "lead-orchestrator", "s3cret", 7, 8
T0 = "2026-03-02T15:04:05Z"


def order(**fields) -> dict:
    row = {"id": 501, "repairOrderNumber": 1001, "shopId": SHOP, "customerId": 21, "vehicleId": 31,
           "repairOrderStatus": {"id": 1, "code": "ESTIMATE", "name": "Estimate"}, "totalSales": 61850,
           "appointmentStartTime": None, "createdDate": T0, "updatedDate": T0, "deletedDate": None,
           "jobs": [{"id": 1, "name": "Brakes", "authorized": None, "authorizedDate": None},
                    {"id": 2, "name": "Flush", "authorized": None, "authorizedDate": None}]}
    return row | fields


def customer(**fields) -> dict:
    row = {"id": 21, "firstName": "Dana", "lastName": "Lopez", "email": "Dana.Lopez@Example.COM",
           "phone": [{"id": 1, "number": "303-555-0100", "type": "Cell", "primary": True}],
           "okForMarketing": False, "shopId": SHOP}
    return row | fields


# --- mapping: status, answers, money ---------------------------------------------------

@pytest.mark.parametrize("status_id, status, is_open, reason", [
    (1, EstimateStatus.ESTIMATE, True, None),
    (2, EstimateStatus.IN_PROGRESS, False, "became_repair_order"),
    (3, EstimateStatus.COMPLETED, False, "completed"),
    # Saved for Later: the customer has not answered yet, so the lead stays open (see mapping.py).
    (4, EstimateStatus.PUT_ASIDE, True, None),
    (5, EstimateStatus.INVOICED, False, "invoiced"),
    (6, EstimateStatus.AWAITING_PAYMENT, False, "invoiced"),
    (7, EstimateStatus.DELETED, False, "deleted"),
    (99, EstimateStatus.UNKNOWN, False, None),
])
def test_status_mapping(status_id, status, is_open, reason):
    estimate = parse_repair_order(order(repairOrderStatus={"id": status_id, "code": "?", "name": "?"}))
    assert (estimate.status, estimate.is_open, estimate.closing_reason) == (status, is_open, reason)


def test_saved_for_later_still_stops_on_an_answer_and_a_deleted_date_wins():
    put_aside = order(repairOrderStatus={"id": 4})
    answered = put_aside | {"jobs": [{"id": 1, "authorized": False, "authorizedDate": T0}]}
    assert parse_repair_order(answered).closing_reason == "declined"
    gone = parse_repair_order(order(deletedDate="2026-03-02T16:00:00Z"))  # status still 1
    assert gone.status == EstimateStatus.DELETED and gone.closing_reason == "deleted"


def test_jobs_authorized_means_approved_or_declined():
    def with_answers(*answers):
        jobs = [{"id": i, "authorized": a, "authorizedDate": f"2026-03-0{i + 3}T10:00:00Z" if a is not None else None}
                for i, a in enumerate(answers)]
        return parse_repair_order(order(jobs=jobs))

    unanswered = with_answers(None, None)
    assert (unanswered.approved, unanswered.declined, unanswered.answered_at, unanswered.is_open) == (
        False, False, None, True)
    approved = with_answers(True, None)
    assert approved.approved and not approved.declined and approved.closing_reason == "authorized"
    declined = with_answers(False, False)
    assert declined.declined and not declined.approved and declined.closing_reason == "declined"
    both = with_answers(True, False)
    assert both.approved and both.declined and both.closing_reason == "authorized"
    assert both.answered_at == dt.datetime(2026, 3, 4, 10, tzinfo=dt.timezone.utc)
    assert parse_repair_order(order(jobs=None)).is_open


def test_an_appointment_closes_the_lead_as_booked():
    assert parse_repair_order(order(appointmentStartTime="2026-03-05T14:00:00Z")).closing_reason == "appointment_booked"


@pytest.mark.parametrize("value, expected", [(61850, 61850), (0, 0), (100.0, 100), (12.5, None), ("100", None),
                                             (True, None), (None, None)])
def test_money_is_integer_cents(value, expected):
    assert cents(value) == expected
    assert parse_repair_order(order(totalSales=value)).total_cents == expected


def test_dates_are_utc_and_the_version_includes_deletion():
    estimate = parse_repair_order(order(createdDate="2026-03-02T08:00:00-07:00", updatedDate="2026-03-02T15:30:00.250Z"))
    assert estimate.created_at == dt.datetime(2026, 3, 2, 15, tzinfo=dt.timezone.utc)
    assert estimate.updated_at.tzinfo == dt.timezone.utc and estimate.updated_at.microsecond == 250000
    deleted = parse_repair_order(order(deletedDate="2026-03-03T00:00:00Z"))
    # A deletion is a new version even though updatedDate did not move.
    assert deleted.updated_at == deleted.deleted_at != parse_repair_order(order()).updated_at
    assert deleted.dedup_key == "tekmetric:501:2026-03-03T00:00:00.000Z"
    assert (estimate.id, estimate.number, estimate.shop_ref, estimate.customer_id) == ("501", "1001", "7", "21")


@pytest.mark.parametrize("broken", [None, [], {"id": None}, order(createdDate=None), order(updatedDate="soon")])
def test_malformed_orders_are_crm_errors(broken):
    with pytest.raises(CrmError):
        parse_repair_order(broken)


# --- mapping: customer, consent, vehicle -----------------------------------------------

@pytest.mark.parametrize("typed", ["303-555-0100", "(303) 555-0100", "303.555.0100", "3035550100", "1-303-555-0100",
                                   "+1 303 555 0100"])
def test_phones_as_typed_become_e164(typed):
    (phone,) = parse_customer(customer(phone=[{"id": 1, "number": typed, "type": "Cell", "primary": True}])).phones
    assert phone.number == "+13035550100" and phone.kind == PhoneKind.MOBILE and phone.primary


def test_phone_kinds_duplicates_and_unusable_numbers():
    parsed = parse_customer(customer(phone=[
        {"id": 1, "number": "303-555-0100", "type": "Home", "primary": False},
        {"id": 2, "number": "720-555-0101", "type": "Mobile", "primary": True},
        {"id": 3, "number": "555-0102", "type": "Work"},  # no area code
        {"id": 4, "number": "(303) 555-0100", "type": None, "primary": True},  # the home number again
        {"id": 5, "number": "303-555-0103", "type": "Fax"},
    ]))
    assert [(p.number, p.kind, p.primary) for p in parsed.phones] == [
        ("+13035550100", PhoneKind.HOME, True), ("+17205550101", PhoneKind.MOBILE, True),
        ("+13035550103", PhoneKind.OTHER, False)]
    assert parsed.unusable == ("phone:invalid_number(work)",)
    assert "555-0102" not in repr(parsed.unusable)  # reasons carry no address


@pytest.mark.parametrize("ok_for_marketing", [True, False, None])
def test_ok_for_marketing_is_not_sms_consent(ok_for_marketing):
    parsed = parse_customer(customer(okForMarketing=ok_for_marketing))
    assert parsed.marketing_opt_in is ok_for_marketing
    # Tekmetric has no SMS opt-in: consent is unknown here, our own ledger decides.
    assert [p.sms_consent for p in parsed.phones] == [None]
    assert [e.consent for e in parsed.emails] == [None]


def test_emails_and_names():
    parsed = parse_customer(customer(email="a@Shop.COM; not-an-email, b@example.com", firstName=" Dana ",
                                     lastName=None))
    assert [(e.address, e.primary) for e in parsed.emails] == [("a@shop.com", True), ("b@example.com", False)]
    assert parsed.primary_email.address == "a@shop.com" and parsed.unusable == ("email:invalid_address",)
    assert parsed.display_name == "Dana" and parsed.id == "21" and parsed.crm == "tekmetric"
    assert parse_customer(customer(email=["x@example.com"])).emails[0].address == "x@example.com"
    assert parse_customer(customer(email=None, phone=None)).primary_phone is None
    with pytest.raises(CrmError):
        parse_customer({"firstName": "no id"})


def test_vehicle_display_name():
    vehicle = parse_vehicle({"id": 31, "year": 2018, "make": "Toyota", "model": "Camry", "subModel": "SE"})
    assert vehicle.display_name == "2018 Toyota Camry" and vehicle.sub_model == "SE"
    assert parse_vehicle({"id": 32, "year": "", "make": "Ford", "model": None}).display_name == "Ford"


# --- webhooks --------------------------------------------------------------------------

def hook(event: str, data: dict) -> bytes:
    return json.dumps({"event": event, "data": data}).encode()


@pytest.mark.parametrize("event, kind", [
    ("Repair Order #1001 created", ChangeKind.CREATED),
    ("Repair Order #1001 status updated", ChangeKind.UPDATED),
    ("Repair Order #1001 completed", ChangeKind.UPDATED),
    ("Repair Order #1001 posted", ChangeKind.UPDATED),
    ("Repair Order #1001 deleted", ChangeKind.DELETED),
    ("Repair Order #1001: customer approved 1 job(s) and declined 2 job(s)", ChangeKind.ANSWERED),
])
def test_repair_order_webhooks_become_hints(event, kind):
    hint = parse_webhook(hook(event, order()), shop_id="7")
    assert (hint.estimate_id, hint.kind, hint.crm) == ("501", kind, "tekmetric")
    assert hint.dedup_key == parse_repair_order(order()).dedup_key  # the poll's key for the same change
    assert hint.created_at == parse_repair_order(order()).created_at and hint.description == event


def test_webhook_variants():
    nested = parse_webhook(hook("Repair Order #1001 created", {"repairOrder": order(shopId=0)}), shop_id="7")
    assert nested.estimate_id == "501"  # shopId 0 happens, and is not held against it
    deleted = parse_webhook(hook("Repair Order #1001 deleted", order(deletedDate="2026-03-03T00:00:00Z")), shop_id="7")
    assert deleted.dedup_key == parse_repair_order(order(deletedDate="2026-03-03T00:00:00Z")).dedup_key
    payment = parse_webhook(hook("Payment made by Dana Lopez", {"id": 9, "repairOrderId": 501}), shop_id="7")
    assert (payment.estimate_id, payment.kind, payment.updated_at) == ("501", ChangeKind.UPDATED, None)
    assert payment.dedup_key == version_key("tekmetric", "501", None)
    assert parse_webhook(hook("Inspection completed", {"id": 3}), shop_id="7") is None
    assert parse_webhook(hook("Appointment created", {"id": 4, "shopId": 7}), shop_id="7") is None
    assert parse_webhook(hook("Repair Order #1 created", order(shopId=OTHER)), shop_id="7") is None


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"event": "x"}', b'{"event": 1, "data": {}}',
                                  hook("Repair Order #1001 created", {"repairOrderNumber": 1001}),
                                  hook("Repair Order #1 created", order(updatedDate="tomorrow"))])
def test_malformed_webhooks_are_400(body):
    with pytest.raises(InvalidWebhook) as caught:
        parse_webhook(body, shop_id="7")
    assert caught.value.status == 400


def test_url_token_checked_before_the_body_is_read():
    token = new_webhook_token()
    assert len(token) >= 43 and token != new_webhook_token()
    digest = token_sha256(token)
    assert len(digest) == 64 and token not in digest
    assert token_matches(token, digest) and not token_matches(token[:-1] + "x", digest)
    assert not token_matches(token, token)  # the stored value is the digest, never the token
    assert not token_matches(None, digest) and not token_matches("", "") and not token_matches(token, None)
    adapter = TekmetricAdapter(None, SHOP, digest)  # the receiver's adapter: no client needed to read webhooks
    assert isinstance(adapter, CrmAdapter)
    good = hook("Repair Order #1001 created", order())
    assert adapter.parse_webhook(good, {}, url_token=token).estimate_id == "501"
    for wrong in (None, "", token.upper(), token + "x"):
        with pytest.raises(InvalidWebhook) as caught:
            adapter.parse_webhook(b"garbage", {}, url_token=wrong)
        assert caught.value.status == 401
    unset = TekmetricAdapter(TekmetricClient("http://127.0.0.1:9", APP, SECRET), SHOP, None)
    with pytest.raises(InvalidWebhook):
        unset.parse_webhook(good, {}, url_token="")


# --- the budget planner ----------------------------------------------------------------

def test_one_partner_app_serves_204_shops_at_30_seconds():
    assert safe_per_minute(BUDGET_PER_MINUTE) == 570
    assert shops_served(30) == 204
    assert shops_served(30, deleted_every=1) == 112  # a deletion query every cycle
    assert shops_served(30, reserve_per_minute=0, deleted_every=1) == 142
    assert shops_served(60) == 409 and shops_served(300) == 2045
    assert shops_served(30, budget_per_minute=SANDBOX_BUDGET_PER_MINUTE) == 75
    plan = plan_poll(204)
    assert plan.at_target and plan.requests_per_minute <= plan.poll_budget_per_minute == 450
    assert not plan_poll(205).at_target


def test_a_thousand_shops_stay_under_600_a_minute():
    plan = plan_poll(1000)
    assert (plan.busy_interval_s, plan.quiet_interval_s) == (147, 147)
    assert plan.requests_per_minute <= 450 and 450 + 120 < BUDGET_PER_MINUTE
    tiered = plan_poll(1000, busy=100)
    assert (tiered.busy_interval_s, tiered.quiet_interval_s) == (30, 259)
    assert tiered.requests_per_minute <= 450
    crowded = plan_poll(1000, busy=400)  # the busy ones alone would not fit at 30 s
    assert crowded.busy_interval_s == crowded.quiet_interval_s == 147


@given(shops=st.integers(0, 20000), busy_share=st.floats(0, 1), budget=st.integers(60, 2000),
       reserve_share=st.floats(0, 0.9), deleted_every=st.integers(1, 30))
def test_the_plan_never_spends_more_than_the_budget(shops, busy_share, budget, reserve_share, deleted_every):
    reserve = int(budget * reserve_share)
    plan = plan_poll(shops, busy=int(shops * busy_share), budget_per_minute=budget, reserve_per_minute=reserve,
                     deleted_every=deleted_every)
    assert plan.requests_per_minute <= safe_per_minute(budget) - reserve + 1e-6
    assert 30 <= plan.busy_interval_s <= plan.quiet_interval_s


def test_the_limiter_waits_briefly_or_refuses():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 60, max_wait_s=2.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
        clock.now += 19.5
    limiter.acquire()  # 58.5 s after the first: waits 1.5 s for it to leave the window
    assert clock.slept == [1.5] and limiter.in_window() == 3
    with pytest.raises(CrmRateLimited) as refused:
        limiter.acquire()  # the next slot frees in 19.5 s: too long to wait here
    assert refused.value.retry_after == 19.5 and refused.value.status is None and limiter.refused == 1
    clock.now += 18.0
    with pytest.raises(CrmRateLimited):
        limiter.acquire(deadline=clock.now + 1.0)  # would wait 1.5 s, past the caller's deadline
    limiter.acquire()
    assert clock.slept == [1.5, 1.5]
    with pytest.raises(ValueError):
        SlidingWindowLimiter(0)


@pytest.mark.parametrize("kwargs", [{"shops": -1}, {"shops": 3, "busy": 4}, {"shops": 3, "reserve_per_minute": 600},
                                    {"shops": 3, "target_interval_s": 0}])
def test_the_planner_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        plan_poll(**kwargs)


# --- the client and adapter against the stand-in --------------------------------------

@pytest.fixture
def tm(standins):
    state = standins.tekmetric
    state.reset()
    state.add_app(APP, SECRET)
    state.add_shop(SHOP, client_id=APP)
    state.add_shop(OTHER, client_id=APP)
    yield state
    state.reset()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(standins, tm, clock):
    with TekmetricClient(standins.tekmetric_url, APP, SECRET, clock=clock, sleep=clock.sleep,
                         jitter=lambda: 0.5) as c:
        yield c


def api_paths(tm) -> dict[str, int]:
    return tm.request_counts()["by_path"]


def test_token_is_acquired_once_and_reused(tm, client):
    made = tm.create_order(SHOP, emit_webhook=False)
    adapter = TekmetricAdapter(client, SHOP)
    estimate = adapter.fetch_estimate(str(made["order"]["id"]))
    assert estimate.customer.phones[0].number.startswith("+1303555")
    assert estimate.vehicle.display_name == "2018 Toyota Camry" and estimate.total_cents == 61850
    adapter.fetch_estimate(str(made["order"]["id"]))
    assert client.tokens_acquired == 1 and api_paths(tm)["/api/v1/oauth/token"] == 1
    assert client.scope() == {"7", "8"} and client.requests_made == 7


def test_a_revoked_token_is_replaced_once(tm, client):
    made = tm.create_order(SHOP, emit_webhook=False)
    adapter = TekmetricAdapter(client, SHOP)
    adapter.fetch_estimate(str(made["order"]["id"]))
    tm.revoke_token(APP)
    assert adapter.fetch_estimate(str(made["order"]["id"])).id == str(made["order"]["id"])
    assert client.tokens_acquired == 2
    tm.revoke_token(APP, refuse_credentials=True)
    with pytest.raises(CrmUnauthorized, match="credentials") as caught:
        adapter.fetch_estimate(str(made["order"]["id"]))
    assert caught.value.status == 401


def test_wrong_credentials_are_unauthorized(standins, tm):
    with TekmetricClient(standins.tekmetric_url, APP, "wrong") as bad:
        with pytest.raises(CrmUnauthorized, match="invalid_client"):
            bad.get("/repair-orders", {"shop": SHOP})
    with pytest.raises(ValueError):
        TekmetricClient(standins.tekmetric_url, APP, "")


def test_a_disconnected_shop_is_unauthorized_and_another_shops_order_not_found(tm, client):
    theirs = tm.create_order(OTHER, emit_webhook=False)["order"]
    adapter = TekmetricAdapter(client, SHOP)
    with pytest.raises(CrmNotFound):  # readable with the app's token, but not this shop's
        adapter.fetch_estimate(str(theirs["id"]))
    with pytest.raises(CrmNotFound):
        adapter.fetch_estimate("999999999")
    with pytest.raises(CrmNotFound):
        adapter.fetch_estimate("../customers/1")
    tm.disconnect_shop(SHOP)
    with pytest.raises(CrmUnauthorized, match="403") as caught:
        adapter.changes_since(dt.datetime.now(dt.timezone.utc))
    assert caught.value.status == 403


def test_missing_customer_or_vehicle_leaves_the_estimate(tm, client):
    made = tm.create_order(SHOP, with_vehicle=False, emit_webhook=False)
    tm.customers.pop(made["customer"]["id"])
    estimate = TekmetricAdapter(client, SHOP).fetch_estimate(str(made["order"]["id"]))
    assert estimate.customer is None and estimate.vehicle is None and estimate.vehicle_id is None


def test_changes_since_pages_until_last_at_most_100_a_page(tm, client):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    made = [tm.create_order(SHOP, emit_webhook=False)["order"] for _ in range(250)]
    tm.create_order(OTHER, emit_webhook=False)
    scan = TekmetricAdapter(client, SHOP).changes_since(since)
    assert scan.complete and [e.id for e in scan.estimates] == [str(o["id"]) for o in made]
    assert scan.requests == 1 + 3 + 1  # token, three pages of changes, one of deletions
    assert api_paths(tm)["/api/v1/repair-orders"] == 4
    assert scan.read_below == max(e.updated_at for e in scan.estimates)
    assert all(e.customer is None for e in scan.estimates)  # hints: fetched again when handled
    sizes = [len(p["content"]) for p in client.pages("/repair-orders", {"shop": SHOP}, size=500)]
    assert sizes == [100, 100, 50] and PAGE_SIZE == 100


def test_changes_since_reads_deletions_with_their_own_query(tm, client):
    kept, gone = (tm.create_order(SHOP, emit_webhook=False)["order"] for _ in range(2))
    since = dt.datetime.fromisoformat(kept["createdDate"].replace("Z", "+00:00"))
    tm.delete_order(gone["id"], emit_webhook=False)
    scan = TekmetricAdapter(client, SHOP).changes_since(since)
    by_id = {e.id: e for e in scan.estimates}
    assert by_id[str(gone["id"])].status == EstimateStatus.DELETED
    assert by_id[str(gone["id"])].updated_at > since and by_id[str(kept["id"])].is_open
    # The watermark is the newest updatedDate of the change query; deletions never move it.
    assert scan.read_below == by_id[str(kept["id"])].updated_at


def test_a_list_that_shrinks_while_paged_withholds_the_watermark(standins, tm):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    made = [tm.create_order(SHOP, emit_webhook=False)["order"] for _ in range(150)]
    pages_seen = []

    def delete_after_first_page(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/repair-orders") and "updatedDateStart" in str(response.request.url):
            pages_seen.append(response.request.url.params["page"])
            if len(pages_seen) == 1:
                tm.delete_order(made[0]["id"], emit_webhook=False)

    http = httpx.Client(event_hooks={"response": [delete_after_first_page]}, trust_env=False, timeout=10)
    with TekmetricClient(standins.tekmetric_url, APP, SECRET, http=http) as shifting:
        scan = TekmetricAdapter(shifting, SHOP).changes_since(since)
    http.close()
    assert pages_seen == ["0", "1"] and scan.complete
    # Row 101 moved onto page 0 after it was read: it is missed this time, so the
    # watermark stays where it was and the next scan reads the window again.
    assert str(made[100]["id"]) not in {e.id for e in scan.estimates}
    assert scan.read_below is None


def test_an_unreadable_row_is_skipped_not_a_blocked_watermark(tm, client):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    broken, fine = (tm.create_order(SHOP, emit_webhook=False)["order"] for _ in range(2))
    tm.update_order(broken["id"], {"createdDate": "last Tuesday"}, emit_webhook=False)
    scan = TekmetricAdapter(client, SHOP).changes_since(since)
    assert scan.complete and [e.id for e in scan.estimates] == [str(fine["id"])]
    assert len(scan.malformed) == 1 and str(broken["id"]) in scan.malformed[0]
    assert scan.read_below == scan.estimates[0].updated_at


def test_each_scan_counts_its_own_requests_on_a_shared_client(standins, tm):
    other_done = threading.Event()

    def hold_first_scan(response: httpx.Response) -> None:
        if threading.current_thread().name == "scan-a" and not other_done.is_set():
            other_done.wait(10)  # scan B runs entirely inside scan A

    http = httpx.Client(event_hooks={"response": [hold_first_scan]}, trust_env=False, timeout=20)
    with TekmetricClient(standins.tekmetric_url, APP, SECRET, http=http) as shared:
        shared.scope()  # the token first, so that neither scan pays for it
        results = {}
        first = threading.Thread(target=lambda: results.update(a=TekmetricAdapter(shared, SHOP).changes_since(
            dt.datetime.now(dt.timezone.utc))), name="scan-a")
        first.start()
        results["b"] = TekmetricAdapter(shared, OTHER).changes_since(dt.datetime.now(dt.timezone.utc))
        other_done.set()
        first.join(20)
    http.close()
    assert (results["a"].requests, results["b"].requests, shared.requests_made) == (2, 2, 5)


def test_429_is_rate_limited_and_holds_every_request_back(tm, client, clock):
    adapter = TekmetricAdapter(client, SHOP)
    adapter.changes_since(dt.datetime.now(dt.timezone.utc))  # token + 2 queries
    tm.set_budget(1, 60)  # from now: the change query passes, the deletion query is refused
    with pytest.raises(CrmRateLimited) as first:
        adapter.changes_since(dt.datetime.now(dt.timezone.utc))
    assert first.value.status == 429 and first.value.retry_after == 2.5  # 2^1 s + jitter
    sent = tm.request_counts()["total"]
    with pytest.raises(CrmRateLimited) as held:
        TekmetricAdapter(client, OTHER).fetch_estimate("1")  # another shop, same app: held back
    assert held.value.status is None and 0 < held.value.retry_after <= 2.5
    assert tm.request_counts()["total"] == sent and client.rate_limited == 1
    clock.now += 3
    with pytest.raises(CrmRateLimited) as second:
        adapter.changes_since(dt.datetime.now(dt.timezone.utc))
    assert second.value.retry_after == 4.5  # 2^2 s + jitter: backing off further
    tm.set_budget(None)
    clock.now += 5
    assert adapter.changes_since(dt.datetime.now(dt.timezone.utc)).complete
    assert clock.slept == []  # never waited inside the client
    tm.set_budget(None)


def test_the_clients_limiter_refuses_before_tekmetric_would(standins, tm, clock):
    with TekmetricClient(standins.tekmetric_url, APP, SECRET, clock=clock, sleep=clock.sleep,
                         requests_per_minute=3) as limited:
        limited.get("/repair-orders", {"shop": SHOP})  # the token and one list
        limited.get("/repair-orders", {"shop": SHOP})
        with pytest.raises(CrmRateLimited) as caught:
            limited.get("/repair-orders", {"shop": SHOP})
    assert caught.value.status is None and caught.value.retry_after == 60.0
    assert tm.request_counts()["total"] == 3 and tm.request_counts()["rate_limited"] == 0


def test_backoff_is_capped_at_60_seconds(tm, client, clock):
    tm.throttle_next(8)
    waits = []
    for _ in range(8):
        with pytest.raises(CrmRateLimited) as caught:
            client.get("/repair-orders", {"shop": SHOP})
        waits.append(caught.value.retry_after)
        clock.now += caught.value.retry_after
    assert waits == [2.5, 4.5, 8.5, 16.5, 32.5, 60.0, 60.0, 60.0]


def test_a_rate_limited_scan_keeps_what_it_read(tm, client):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    for _ in range(150):
        tm.create_order(SHOP, emit_webhook=False)
    tm.set_budget(2, 60)  # the token and the first page
    scan = TekmetricAdapter(client, SHOP).changes_since(since)
    assert isinstance(scan.error, CrmRateLimited) and len(scan.estimates) == 100 and scan.read_below is None
    tm.set_budget(None)


def test_unavailable_is_retried_then_given_up(tm, client, clock):
    tm.fail_next(1, 503)
    assert client.get("/repair-orders", {"shop": SHOP})["content"] == []
    assert clock.slept == [0.2]
    tm.fail_next(3, 502)
    with pytest.raises(CrmUnavailable) as caught:
        client.get("/repair-orders", {"shop": SHOP})
    assert caught.value.status == 502 and clock.slept == [0.2, 0.2, 0.4]
    tm.fail_next(1, 503)
    with pytest.raises(CrmUnavailable):  # no time left for a retry
        client.get("/repair-orders", {"shop": SHOP}, deadline=clock.now + 0.1)
    with TekmetricClient("http://127.0.0.1:9", APP, SECRET, max_attempts=1) as unreachable:
        with pytest.raises(CrmUnavailable):
            unreachable.get("/repair-orders")


# --- the boundary ----------------------------------------------------------------------

# Keys only Tekmetric's JSON has (spelled as Tekmetric spells them).
TEKMETRIC_KEYS = ("repairOrderStatus", "repairOrderNumber", "okForMarketing", "totalSales", "updatedDateStart",
                  "deletedDateStart", "appointmentStartTime", "subModel", "access_token", "totalPages")
# Where a CRM's JSON may be read: its adapter (and the stand-ins, which play the CRM).
ALLOWED = {"tekmetric": ("lead_orchestrator/crm/tekmetric/", "standins/")}
PRODUCT = ("lead_orchestrator", "orchestrator_dagster", "webhook_receiver")


def test_no_tekmetric_key_outside_its_adapter():
    offenders = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(ALLOWED["tekmetric"]):
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{relative}: {key}" for key in TEKMETRIC_KEYS if re.search(rf"\b{key}\b", text)]
    assert offenders == []
    # And the check can fail: the adapter itself is full of them.
    adapter_text = (ROOT / "lead_orchestrator/crm/tekmetric/mapping.py").read_text(encoding="utf-8")
    assert "okForMarketing" in adapter_text and "repairOrderStatus" in adapter_text


def test_the_port_imports_no_adapter():
    base = (ROOT / "lead_orchestrator/crm/base.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+\S*(tekmetric|shopmonkey)", base, re.M)
