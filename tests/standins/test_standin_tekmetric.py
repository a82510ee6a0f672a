"""The Tekmetric stand-in over HTTP: OAuth token, Spring pages and their 100 cap, the
repeatable status filter, the deleted-orders trap, 401/403/429 bodies, the per-app
budget, webhooks that drop, delay and duplicate, and the control API."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from standins.contracts import validator
from standins.servers import StandinServers
from tests.support import wait_for

APP, SECRET = "partner-app", "partner-secret"
SHOP, OTHER, OUTSIDE = 7, 8, 9  # OUTSIDE exists but is not connected to APP


@pytest.fixture(autouse=True)
def _fresh_tekmetric(servers):
    servers.tekmetric.reset()
    yield


@pytest.fixture
def tm(servers):
    state = servers.tekmetric
    state.add_app(APP, SECRET)
    state.add_shop(SHOP, client_id=APP)
    state.add_shop(OTHER, client_id=APP)
    state.add_app("someone-else", "x")
    state.add_shop(OUTSIDE, client_id="someone-else")
    return state


def basic(client_id: str = APP, secret: str = SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def token_request(url: str, *, auth: str | None = None, body: str = "grant_type=client_credentials",
                  content_type: str = "application/x-www-form-urlencoded;charset=UTF-8") -> httpx.Response:
    return httpx.post(f"{url}/api/v1/oauth/token", content=body, trust_env=False,
                      headers={"Authorization": auth or basic(), "Content-Type": content_type})


@pytest.fixture
def api(servers, tm):
    token = token_request(servers.tekmetric_url).json()["access_token"]
    with httpx.Client(base_url=f"{servers.tekmetric_url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                      timeout=5, trust_env=False) as client:
        yield client


def orders(state, n: int, shop: int = SHOP, **kwargs) -> list[dict]:
    return [state.create_order(shop, emit_webhook=False, **kwargs)["order"] for _ in range(n)]


def listing(api, **params) -> dict:
    r = api.get("/repair-orders", params={"shop": SHOP, **params})
    assert r.status_code == 200, r.text
    return r.json()


def ids(page: dict) -> list[int]:
    return [o["id"] for o in page["content"]]


# --- token ----------------------------------------------------------------------------

def test_token_by_basic_auth_and_form_body_lists_the_shops_in_scope(servers, tm):
    first = token_request(servers.tekmetric_url)
    assert first.status_code == 200
    validator("tekmetric_token").validate(first.json())
    assert first.json()["token_type"] == "bearer" and first.json()["scope"] == "7 8"
    assert "expires_in" not in first.json()
    assert token_request(servers.tekmetric_url).json()["access_token"] == first.json()["access_token"]


@pytest.mark.parametrize("kwargs, status, error", [
    ({"auth": basic(secret="wrong")}, 401, "invalid_client"),
    ({"auth": basic(client_id="nobody")}, 401, "invalid_client"),
    ({"auth": "Bearer abc"}, 401, "invalid_client"),
    ({"body": "grant_type=password"}, 400, "unsupported_grant_type"),
    ({"content_type": "application/json", "body": '{"grant_type": "client_credentials"}'}, 400, "invalid_request"),
])
def test_token_errors_are_oauth_bodies(servers, tm, kwargs, status, error):
    r = token_request(servers.tekmetric_url, **kwargs)
    assert r.status_code == status
    assert r.json()["error"] == error and r.json()["error_description"]


def test_revoked_token_is_401_with_an_empty_body_and_a_new_one_is_issued(servers, tm, api):
    old = api.headers["Authorization"]
    servers.tekmetric.revoke_token(APP)
    r = api.get("/repair-orders", params={"shop": SHOP})
    assert (r.status_code, r.content) == (401, b"")
    new = token_request(servers.tekmetric_url).json()["access_token"]
    assert f"Bearer {new}" != old
    assert api.get("/repair-orders", params={"shop": SHOP}, headers={"Authorization": f"Bearer {new}"}).status_code == 200
    servers.tekmetric.revoke_token(APP, refuse_credentials=True)
    assert token_request(servers.tekmetric_url).json()["error"] == "invalid_client"


def test_missing_or_unknown_bearer_is_401_empty(servers, tm):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": basic()}):
        r = httpx.get(f"{servers.tekmetric_url}/api/v1/repair-orders", params={"shop": SHOP}, headers=headers,
                      trust_env=False)
        assert (r.status_code, r.content) == (401, b"")


# --- scope ----------------------------------------------------------------------------

ACCESS_DENIED = {"type": "ERROR", "message": "Access Denied", "data": None, "details": {}}


def test_a_shop_outside_the_token_scope_is_403_access_denied(tm, api):
    foreign = orders(tm, 1, shop=OUTSIDE)[0]
    for path, params in (("/repair-orders", {"shop": OUTSIDE}), (f"/repair-orders/{foreign['id']}", {}),
                         (f"/customers/{foreign['customerId']}", {}), (f"/vehicles/{foreign['vehicleId']}", {})):
        r = api.get(path, params=params)
        assert (r.status_code, r.json()) == (403, ACCESS_DENIED), path
    r = api.get("/repair-orders/999999999")
    assert r.status_code == 404 and r.json()["type"] == "ERROR"
    assert api.get("/repair-orders").status_code == 400  # no shop


def test_partner_drops_a_shop_with_delete_scope(tm, api):
    assert listing(api)["totalElements"] == 0
    assert api.delete(f"/shops/{SHOP}/scope").status_code == 200
    assert api.get("/repair-orders", params={"shop": SHOP}).status_code == 403
    assert api.get("/repair-orders", params={"shop": OTHER}).status_code == 200


# --- records and pages ----------------------------------------------------------------

def test_records_follow_the_projects_contract(tm, api):
    created = tm.create_order(SHOP, emit_webhook=False)
    order = api.get(f"/repair-orders/{created['order']['id']}").json()
    assert order == created["order"]
    validator("tekmetric_repair_order").validate(order)
    assert order["repairOrderStatus"] == {"id": 1, "code": "ESTIMATE", "name": "Estimate"}
    assert order["totalSales"] == sum(j["subtotal"] for j in order["jobs"]) == 61850  # cents
    assert all(j["authorized"] is None for j in order["jobs"])
    customer = api.get(f"/customers/{order['customerId']}").json()
    validator("tekmetric_customer").validate(customer)
    assert re.fullmatch(r"303-555-\d{4}", customer["phone"][0]["number"])  # as typed, not E.164
    assert isinstance(customer["email"], str) and customer["okForMarketing"] is False
    validator("tekmetric_vehicle").validate(api.get(f"/vehicles/{order['vehicleId']}").json())


def test_pages_until_last_and_the_silent_100_cap(tm, api):
    made = [o["id"] for o in orders(tm, 250)]
    pages = [listing(api, page=n, size=100) for n in range(3)]
    for page in pages:
        validator("tekmetric_page").validate(page)
    assert [len(p["content"]) for p in pages] == [100, 100, 50]
    assert [(p["last"], p["first"], p["number"], p["totalPages"], p["totalElements"]) for p in pages] == [
        (False, True, 0, 3, 250), (False, False, 1, 3, 250), (True, False, 2, 3, 250)]
    assert [i for p in pages for i in ids(p)] == made
    capped = listing(api, size=500)
    assert (capped["size"], len(capped["content"]), capped["totalPages"]) == (100, 100, 3)
    assert len(listing(api)["content"]) == 20  # the default
    beyond = listing(api, page=9, size=100)
    assert beyond["content"] == [] and beyond["last"] is True and beyond["empty"] is True


def test_repeatable_status_filter(tm, api):
    made = {status: orders(tm, 1, order={"repairOrderStatus": status})[0]["id"] for status in range(1, 7)}
    assert ids(listing(api, repairOrderStatusId=[1, 4])) == [made[1], made[4]]
    r = api.get("/repair-orders?shop=7&repairOrderStatusId=2&repairOrderStatusId=3")
    assert ids(r.json()) == [made[2], made[3]]
    assert ids(listing(api, repairOrderStatusId="5,6")) == [made[5], made[6]]
    assert len(listing(api)["content"]) == 6


def test_updated_and_created_windows_and_sorting(tm, api):
    old = orders(tm, 3)
    cutoff = old[-1]["updatedDate"]
    tm.update_order(old[0]["id"], {"milesIn": 1}, emit_webhook=False)
    new = orders(tm, 2)
    assert ids(listing(api, updatedDateStart=cutoff)) == [old[0]["id"], old[2]["id"]] + [o["id"] for o in new]
    assert ids(listing(api, start=new[0]["createdDate"])) == [o["id"] for o in new]
    assert ids(listing(api, end=old[1]["createdDate"])) == [old[0]["id"], old[1]["id"]]
    newest_first = listing(api, sort="createdDate", sortDirection="DESC")
    assert ids(newest_first) == [o["id"] for o in reversed(old + new)]
    assert newest_first["sort"]["sorted"] is True
    assert api.get("/repair-orders", params={"shop": SHOP, "updatedDateStart": "yesterday"}).status_code == 400


def test_deleted_orders_trap(tm, api):
    kept, gone = orders(tm, 2)
    since = kept["createdDate"]
    deleted = tm.delete_order(gone["id"], emit_webhook=False)["order"]
    assert deleted["repairOrderStatus"]["id"] == 7 and deleted["deletedDate"]
    assert deleted["updatedDate"] == gone["updatedDate"]  # deletion does not move updatedDate here
    assert ids(listing(api, updatedDateStart=since)) == [kept["id"]]  # deleted ones left out
    # With a deletedDate filter, only deleted orders, even combined with an updated window.
    assert ids(listing(api, updatedDateStart=since, deletedDateStart=since)) == [gone["id"]]
    assert ids(listing(api, deletedDateStart=since)) == [gone["id"]]
    assert ids(listing(api, deletedDateStart=deleted["deletedDate"][:10] + "T23:59:59Z")) == []
    assert api.get(f"/repair-orders/{gone['id']}").json()["repairOrderStatus"]["name"] == "Deleted"


# --- budget and injected faults -------------------------------------------------------

def test_per_app_budget_429_with_an_empty_body(servers, tm, api):
    servers.tekmetric.set_budget(5, 60)
    answers = [api.get("/repair-orders", params={"shop": SHOP if i % 2 else OTHER}) for i in range(7)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 2  # shared by the app's shops
    assert answers[-1].content == b"" and "retry-after" not in answers[-1].headers
    counts = servers.tekmetric.request_counts()
    assert counts["rate_limited"] == 2 and counts["peak_in_window"][APP] == 5
    assert counts["budget"] == {"requests": 5, "window_seconds": 60.0}
    # Another app has its own budget.
    other = token_request(servers.tekmetric_url, auth=basic("someone-else", "x")).json()["access_token"]
    r = httpx.get(f"{servers.tekmetric_url}/api/v1/repair-orders", params={"shop": OUTSIDE}, trust_env=False,
                  headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 200


def test_budget_window_slides(servers, tm, api):
    servers.tekmetric.set_budget(2, 0.5)
    assert [api.get("/repair-orders", params={"shop": SHOP}).status_code for _ in range(3)] == [200, 200, 429]
    wait_for(lambda: api.get("/repair-orders", params={"shop": SHOP}).status_code == 200, timeout=5,
             message="the window to slide")


def test_default_budget_is_600_a_minute(servers, tm):
    assert servers.tekmetric.budget() == {"requests": 600, "window_seconds": 60.0}


def test_injected_throttle_and_failures(servers, tm, api):
    control = f"{servers.tekmetric_url}/_standin"
    httpx.post(f"{control}/throttle", json={"count": 1}, trust_env=False)
    httpx.post(f"{control}/fail", json={"count": 1, "status": 503}, trust_env=False)
    first, second, third = (api.get("/repair-orders", params={"shop": SHOP}) for _ in range(3))
    assert (first.status_code, first.content) == (429, b"")
    assert second.status_code == 503 and second.json()["type"] == "ERROR"
    assert third.status_code == 200


# --- webhooks -------------------------------------------------------------------------

@pytest.fixture
def hooked(tm, receiver):
    url = f"{receiver.url}/hook?token=shop-secret-token"
    tm.add_shop(SHOP, webhook_url=url)
    return tm


def bodies(calls: list[dict]) -> list[dict]:
    return [json.loads(c["body"]) for c in calls]


def test_webhook_envelope_goes_to_the_registered_url_with_its_token(hooked, receiver):
    created = hooked.create_order(SHOP)
    (call,) = receiver.wait_for_count(1)
    assert call["path"] == "/hook?token=shop-secret-token"
    body = json.loads(call["body"])
    validator("tekmetric_webhook").validate(body)
    assert body == {"event": f"Repair Order #{created['order']['repairOrderNumber']} created",
                    "data": created["order"]}
    assert not any(k.lower().startswith(("x-", "webhook-")) for k in call["headers"])  # no signature
    (delivery,) = created["deliveries"]
    assert delivery.wait().status == 200
    assert "shop-secret-token" not in json.dumps(hooked.deliveries.items())  # the record hides the token


def test_webhook_sentences_follow_the_change(hooked, receiver):
    order = hooked.create_order(SHOP, emit_webhook=False)["order"]
    n = order["repairOrderNumber"]
    hooked.update_order(order["id"], {"repairOrderStatus": 4}, wait_webhook=True)
    hooked.answer_jobs(order["id"], True, [order["jobs"][0]["id"]], wait_webhook=True)
    hooked.answer_jobs(order["id"], False, [order["jobs"][1]["id"]], wait_webhook=True)
    hooked.update_order(order["id"], {"repairOrderStatus": 3}, wait_webhook=True)
    hooked.delete_order(order["id"], wait_webhook=True)
    events = [b["event"] for b in bodies(receiver.wait_for_count(5))]
    assert events == [f"Repair Order #{n} status updated",
                      f"Repair Order #{n}: customer approved 1 job(s) and declined 0 job(s)",
                      f"Repair Order #{n}: customer approved 1 job(s) and declined 1 job(s)",
                      f"Repair Order #{n} completed", f"Repair Order #{n} deleted"]
    last = hooked.get_order(order["id"])
    assert [j["authorized"] for j in last["jobs"]] == [True, False] and all(j["authorizedDate"] for j in last["jobs"])


def test_webhooks_dropped_duplicated_and_delayed(hooked, receiver):
    hooked.webhooks.set_faults(drop_next=1, duplicate_next=1)
    dropped = hooked.create_order(SHOP)
    assert [d.dropped for d in dropped["deliveries"]] == [True]
    doubled = hooked.create_order(SHOP, wait_webhook=True)
    calls = receiver.wait_for_count(2)
    assert len(doubled["deliveries"]) == 2 and bodies(calls)[0] == bodies(calls)[1]
    assert bodies(calls)[0]["data"]["id"] == doubled["order"]["id"]

    hooked.webhooks.set_faults(delay_seconds=1.0)
    started = time.monotonic()
    late = hooked.create_order(SHOP)
    assert len(receiver.requests) == 2  # not yet
    calls = receiver.wait_for_count(3)
    assert calls[-1]["at"] - started >= 1.0 and late["deliveries"][0].delay == 1.0
    recorded = hooked.deliveries.items()
    assert [(d["dropped"], d["copy"]) for d in recorded] == [(True, 1), (False, 1), (False, 2), (False, 1)]


def test_webhook_rates_are_seeded(hooked, receiver):
    hooked.webhooks.set_faults(drop_rate=0.5, duplicate_rate=0.5, seed=42)
    first = [len([d for d in hooked.create_order(SHOP)["deliveries"] if not d.dropped]) for _ in range(20)]
    hooked.webhooks.set_faults(seed=42)
    again = [len([d for d in hooked.create_order(SHOP)["deliveries"] if not d.dropped]) for _ in range(20)]
    assert first == again and {0, 1, 2} <= set(first)
    receiver.wait_for_count(sum(first) * 2)
    with pytest.raises(ValueError):
        hooked.webhooks.set_faults(drop_rate=2)


def test_nested_webhooks_and_shop_id_zero(hooked, receiver):
    hooked.add_shop(SHOP, webhook_style="nested", webhook_shop_id_zero=True)
    created = hooked.create_order(SHOP, wait_webhook=True)
    body = bodies(receiver.wait_for_count(1))[0]
    validator("tekmetric_webhook").validate(body)
    assert body["data"]["repairOrder"]["id"] == created["order"]["id"]
    assert body["data"]["repairOrder"]["shopId"] == 0
    assert hooked.get_order(created["order"]["id"])["shopId"] == SHOP  # only the delivery says 0


def test_a_shop_without_a_webhook_url_never_delivers(tm, receiver):
    assert tm.create_order(SHOP)["deliveries"] == []
    with pytest.raises(ValueError):
        tm.send_webhook(tm.create_order(SHOP)["order"]["id"])


# --- control API over HTTP ------------------------------------------------------------

def test_control_api(servers, receiver):
    c = httpx.Client(base_url=f"{servers.tekmetric_url}/_standin", trust_env=False, timeout=10)
    assert c.post("/apps", json={"client_id": APP, "client_secret": SECRET}).status_code == 200
    shop = c.post("/shops", json={"client_id": APP, "webhook_url": f"{receiver.url}/h?token=t0k"}).json()
    assert shop["webhook_url"].endswith("/h?token=***")
    created = c.post("/orders", json={"shop_id": shop["shop_id"], "wait_webhook": True,
                                      "customer": {"firstName": "Sam"}}).json()
    order = created["order"]
    assert created["customer"]["firstName"] == "Sam" and created["deliveries"][0]["status"] == 200
    patched = c.patch(f"/orders/{order['id']}", json={"fields": {"repairOrderStatus": 2}, "emit_webhook": False})
    assert patched.json()["order"]["repairOrderStatus"]["code"] == "WORKINPROGRESS"
    answered = c.post(f"/orders/{order['id']}/jobs", json={"authorized": False, "emit_webhook": False}).json()
    assert {j["authorized"] for j in answered["order"]["jobs"]} == {False}
    assert c.post(f"/orders/{order['id']}/webhook", json={"event": "Repair Order #1 posted"}).json()[0]["status"] == 200
    assert c.delete(f"/orders/{order['id']}", params={"emit_webhook": False}).json()["order"]["deletedDate"]
    assert c.post("/webhooks", json={"delay_seconds": 1.5}).json()["delay_seconds"] == 1.5
    assert c.get("/webhooks").json()["delay_seconds"] == 1.5
    assert c.post("/budget", json={"requests": 10, "window_seconds": 1}).json() == {"requests": 10,
                                                                                   "window_seconds": 1.0}
    assert c.post(f"/shops/{shop['shop_id']}/disconnect").status_code == 200
    assert c.post("/apps/nobody/revoke").status_code == 404
    assert c.post(f"/apps/{APP}/revoke", json={"refuse_credentials": True}).json()["credentials_refused"] is True
    assert c.patch("/orders/1", json={"fields": {}}).status_code == 404
    assert c.patch(f"/orders/{order['id']}", json={"fields": {"repairOrderStatus": 9}}).status_code == 400
    assert len(c.get("/deliveries").json()) == 2
    assert len(httpx.get(f"{servers.tekmetric_url}/_outbox.json", trust_env=False).json()) == 2
    assert c.get("/requests").json()["total"] == 0  # control calls are not API requests
    assert c.post("/reset").json() == {"reset": True} and servers.tekmetric.apps == {}
    c.close()


# --- running it -----------------------------------------------------------------------

def test_servers_without_tekmetric_and_python_dash_m_opt_in():
    with StandinServers(tekmetric_port=None) as s:
        with pytest.raises(RuntimeError):
            s.tekmetric_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "standins", "--shopmonkey-port", "0", "--twilio-port", "0", "--sendgrid-port", "0",
         "--tekmetric-port", "0", "--tekmetric-app", f"{APP}:{SECRET}", "--tekmetric-shop", "42"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        urls = dict(re.findall(r"^(\w+)\s+(http://\S+)", "".join(lines), re.M))
        assert set(urls) == {"ShopMonkey", "Twilio", "SendGrid", "Tekmetric"}, lines
        assert token_request(urls["Tekmetric"]).json()["scope"] == "42"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.stdout.close()
