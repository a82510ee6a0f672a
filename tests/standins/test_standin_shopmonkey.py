"""The ShopMonkey stand-in: API envelopes and quirks, auth, limits, signed webhooks."""
from __future__ import annotations

import json
import time

import httpx
import pytest

KEY = "shop-a-key"
OTHER = "shop-b-key"


@pytest.fixture
def sm(servers):
    servers.shopmonkey.add_shop(KEY)
    servers.shopmonkey.add_shop(OTHER)
    with httpx.Client(base_url=servers.shopmonkey_url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=5, trust_env=False) as client:
        yield client


def make_orders(servers, n: int, key: str = KEY) -> list[dict]:
    return [servers.shopmonkey.create_order(key, emit_webhook=False)["order"] for _ in range(n)]


def list_orders(sm, **params) -> dict:
    query = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in params.items()}
    r = sm.get("/v3/order", params=query)
    assert r.status_code == 200, r.text
    return r.json()


def test_one_object_envelopes(servers, sm):
    created = servers.shopmonkey.create_order(KEY, customer={"firstName": "Sam"}, emit_webhook=False)
    order = sm.get(f"/v3/order/{created['order']['id']}").json()
    assert order["success"] is True and order["data"] == created["order"]
    o = order["data"]
    assert len(o["id"]) == 24 and o["number"].isdigit() and o["status"] == "Estimate"
    assert o["createdDate"].endswith("Z") and len(o["createdDate"]) == len("2026-10-01T15:02:11.000Z")
    assert o["generatedCustomerName"] == "Sam Lopez"
    customer = sm.get(f"/v3/customer/{o['customerId']}").json()["data"]
    assert customer["email"] is None and customer["phoneNumbers"][0]["number"].startswith("+1")
    assert customer["emails"][0]["primary"] is True
    assert sm.get(f"/v3/vehicle/{o['vehicleId']}").json()["data"]["year"] == 2018
    statuses = sm.get("/v3/workflow_status").json()
    assert statuses["meta"] == {"total": 5, "hasMore": False}
    assert statuses["data"][0]["id"] == o["workflowStatusId"]


def test_unknown_and_foreign_ids_answer_404_envelope(servers, sm):
    foreign = make_orders(servers, 1, key=OTHER)[0]
    for path in (f"/v3/order/{foreign['id']}", "/v3/order/0123456789abcdef01234567", f"/v3/customer/{foreign['customerId']}"):
        r = sm.get(path)
        assert r.status_code == 404
        assert r.json()["success"] is False and set(r.json()) == {"success", "code", "message", "documentation_url"}


def test_paging_250_orders_with_skip_and_the_silent_cap(servers, sm):
    ids = [o["id"] for o in make_orders(servers, 250)]
    pages = [list_orders(sm, limit=100, skip=skip) for skip in (0, 100, 200)]
    assert [len(p["data"]) for p in pages] == [100, 100, 50]
    assert [p["meta"] for p in pages] == [{"total": 250, "hasMore": True}, {"total": 250, "hasMore": True},
                                          {"total": 250, "hasMore": False}]
    assert [o["id"] for p in pages for o in p["data"]] == ids
    assert len(list_orders(sm, limit=500)["data"]) == 100  # capped, no error
    assert len(list_orders(sm)["data"]) == 100  # default
    first = [o["id"] for o in pages[0]["data"]]
    assert [o["id"] for o in list_orders(sm, offset=100)["data"]] == first  # ignored
    assert [o["id"] for o in list_orders(sm, page=2)["data"]] == first  # ignored
    assert make_orders(servers, 1, key=OTHER) and list_orders(sm)["meta"]["total"] == 250  # per shop


def test_where_operators_and_silently_ignored_clauses(servers, sm):
    orders = make_orders(servers, 5)
    servers.shopmonkey.update_order(orders[0]["id"], {"status": "Invoice"}, emit_webhook=False)
    cutoff = servers.shopmonkey.get_order(orders[0]["id"])["updatedDate"]
    later = make_orders(servers, 2)

    def ids(**params):
        return {o["id"] for o in list_orders(sm, **params)["data"]}

    everything = {o["id"] for o in orders + later}
    assert ids(where={"updatedDate": {"gte": cutoff}}) == {orders[0]["id"]} | {o["id"] for o in later}
    assert ids(where={"updatedDate": {"gt": cutoff.replace("Z", "+00:00")}}) == {o["id"] for o in later}
    assert ids(where={"status": {"equals": "Invoice"}}) == {orders[0]["id"]}
    assert ids(where={"status": {"not": "Estimate"}}) == {orders[0]["id"]}
    assert ids(where={"id": {"in": [orders[1]["id"], orders[2]["id"]]}}) == {orders[1]["id"], orders[2]["id"]}
    assert ids(where={"OR": [{"id": orders[1]["id"]}, {"status": "Invoice"}]}) == {orders[0]["id"], orders[1]["id"]}
    assert ids(where={"AND": [{"status": "Estimate"}, {"id": {"in": [orders[0]["id"], orders[3]["id"]]}}]}) == {orders[3]["id"]}
    # The trap: what ShopMonkey does not understand matches everything, with a 200.
    assert ids(where={"status": {"eq": "Invoice"}}) == everything
    assert ids(where={"updatedDate": {"$gte": cutoff}}) == everything
    assert ids(where={"and": [{"status": "Invoice"}]}) == everything
    assert ids(where={"colour": "red"}) == everything


def test_orderby_lowercase_only(servers, sm):
    orders = make_orders(servers, 3)
    servers.shopmonkey.update_order(orders[0]["id"], {"complaint": "noise"}, emit_webhook=False)
    created_order = [o["id"] for o in orders]
    newest_first = [orders[0]["id"], orders[2]["id"], orders[1]["id"]]
    assert [o["id"] for o in list_orders(sm, orderby={"updatedDate": "desc"})["data"]] == newest_first
    assert [o["id"] for o in list_orders(sm, orderby={"updatedDate": "asc"})["data"]] == newest_first[::-1]
    assert [o["id"] for o in list_orders(sm, orderBy={"updatedDate": "desc"})["data"]] == created_order


def test_auth_failures_answer_401_envelope(servers, sm):
    assert sm.get("/v3/order", headers={"Authorization": ""}).status_code == 401
    assert sm.get("/v3/order", headers={"Authorization": "Bearer nope"}).status_code == 401
    servers.shopmonkey.revoke_key(KEY)
    r = sm.get("/v3/order")
    assert r.status_code == 401 and r.json()["success"] is False and r.json()["code"] == "UNAUTHORIZED"


def test_rate_limit_answers_429_with_retry_after(servers, sm):
    servers.shopmonkey.set_rate_limit(3, window_seconds=30)
    assert [sm.get("/v3/workflow_status").status_code for _ in range(3)] == [200, 200, 200]
    r = sm.get("/v3/workflow_status")
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 30
    assert r.json()["success"] is False
    other = sm.get("/v3/workflow_status", headers={"Authorization": f"Bearer {OTHER}"})
    assert other.status_code == 200  # limits are per key


def test_a_revoked_key_can_be_restored_over_http(servers, sm):
    base = servers.shopmonkey_url
    assert httpx.post(f"{base}/_standin/shops/{KEY}/revoke").status_code == 200
    assert sm.get("/v3/workflow_status").status_code == 401
    assert httpx.post(f"{base}/_standin/shops/{KEY}/restore").json() == {"restored": KEY}
    assert sm.get("/v3/workflow_status").status_code == 200
    assert httpx.post(f"{base}/_standin/shops/unknown/restore").status_code == 404


def test_a_rate_limit_for_one_key_leaves_the_others_alone(servers, sm):
    limited = httpx.post(f"{servers.shopmonkey_url}/_standin/rate-limit",
                         json={"requests": 2, "window_seconds": 30, "api_key": KEY})
    assert limited.status_code == 200
    assert [sm.get("/v3/workflow_status").status_code for _ in range(3)] == [200, 200, 429]
    other = {"Authorization": f"Bearer {OTHER}"}
    assert [sm.get("/v3/workflow_status", headers=other).status_code for _ in range(5)] == [200] * 5
    servers.shopmonkey.set_rate_limit(None, api_key=KEY)
    assert sm.get("/v3/workflow_status").status_code == 200


def test_an_order_edited_between_two_pages_slips_past_offset_paging(servers, sm):
    orders = make_orders(servers, 150)
    first = orders[0]["id"]
    armed = httpx.post(f"{servers.shopmonkey_url}/_standin/page-edits",
                       json={"api_key": KEY, "order_id": first, "fields": {"complaint": "moved"}})
    assert armed.status_code == 200
    asc = {"updatedDate": "asc"}
    page1 = list_orders(sm, orderby=asc, limit=100, skip=0)["data"]
    assert servers.shopmonkey.get_order(first)["complaint"] != "moved"  # not before the second page
    page2 = list_orders(sm, orderby=asc, limit=100, skip=100)["data"]
    seen = {o["id"] for o in page1 + page2}
    # The edited order moved to the end; the row that slid onto page 1 was never returned.
    assert page2[-1]["id"] == first and page2[-1]["complaint"] == "moved"
    assert set(o["id"] for o in orders) - seen == {orders[100]["id"]}
    assert httpx.get(f"{servers.shopmonkey_url}/_standin/page-edits").json()[0]["fired"] is True
    list_orders(sm, orderby=asc, limit=100, skip=0)  # fires once only
    assert servers.shopmonkey.get_order(first)["updatedDate"] == page2[-1]["updatedDate"]
    assert httpx.post(f"{servers.shopmonkey_url}/_standin/page-edits",
                      json={"api_key": OTHER, "order_id": first, "fields": {}}).status_code == 404


def test_injected_failures_and_hangs(servers, sm):
    servers.shopmonkey.inject_failures(1, 503)
    servers.shopmonkey.inject_failures(1, 504)
    assert [sm.get("/v3/workflow_status").status_code for _ in range(3)] == [503, 504, 200]
    servers.shopmonkey.inject_failures(1, None, hang_seconds=0.3)
    started = time.monotonic()
    assert sm.get("/v3/workflow_status").status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        servers.shopmonkey.inject_failures(1, None, hang_seconds=1.0)
        sm.get("/v3/workflow_status", timeout=0.2)


def test_request_counter_per_key_and_path(servers, sm):
    order = make_orders(servers, 1)[0]
    sm.get("/v3/order")
    sm.get(f"/v3/order/{order['id']}")
    sm.get("/v3/order", headers={"Authorization": "Bearer nope"})
    counts = httpx.get(f"{servers.shopmonkey_url}/_standin/requests").json()
    assert counts["total"] == 3 and counts["by_key"] == {KEY: 2, "nope": 1}
    assert counts["by_path"] == {"/v3/order": 2, f"/v3/order/{order['id']}": 1}
    assert httpx.delete(f"{servers.shopmonkey_url}/_standin/requests").json()["total"] == 0


def test_control_endpoints_over_http(servers, receiver):
    base = servers.shopmonkey_url
    shop = httpx.post(f"{base}/_standin/shops", json={"api_key": "http-shop", "webhook_url": f"{receiver.url}/hook"}).json()
    assert shop["webhook_secret"].startswith("whsec_")
    made = httpx.post(f"{base}/_standin/orders", json={"api_key": "http-shop", "wait_webhook": True}).json()
    assert made["delivery"]["final_status"] == 200 and made["delivery"]["operation"] == "INSERT"
    order_id = made["order"]["id"]
    patched = httpx.patch(f"{base}/_standin/orders/{order_id}", json={"fields": {"authorized": True}, "wait_webhook": True}).json()
    assert patched["diff"] == ["authorized"] and patched["delivery"]["final_status"] == 200
    deleted = httpx.delete(f"{base}/_standin/orders/{order_id}", params={"emit_webhook": False}).json()
    assert deleted["order"]["deleted"] is True and deleted["delivery"] is None
    again = httpx.post(f"{base}/_standin/orders/{order_id}/webhook", json={"operation": "DELETE"}).json()
    assert again["final_status"] == 200 and again["operation"] == "DELETE"
    assert httpx.post(f"{base}/_standin/shops", json={"api_key": "x", "webhook_secret": "plain"}).status_code == 400
    assert len(httpx.get(f"{base}/_outbox.json").json()) == 3
    assert "DELETE" in httpx.get(f"{base}/_outbox").text
