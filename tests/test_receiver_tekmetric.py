"""POST /webhooks/tekmetric/{token} over real HTTP: the URL token is the only credential
(wrong, missing, rotated or an inactive shop's → 401, nothing stored), the body is read by
the Tekmetric adapter as a hint and stored once per change (duplicates and the nested
shape give one event), and the receiver's guards apply to the route."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from lead_orchestrator import redaction
from lead_orchestrator.crm.tekmetric.webhooks import new_webhook_token
from lead_orchestrator.store.shops import ShopChanges, update_shop
from tests.support import session_box, wait_for
from tests.tekmetric_support import webhook_url
from tests.test_receiver_guards import app_with, assert_error_body  # noqa: F401 (fixture)


@pytest.fixture
def tekmetric(connected_shop):
    shop = connected_shop(crm="tekmetric")
    return shop


def url_of(standins, shop) -> str:
    return standins.tekmetric.shops[shop.credentials.shop_id].webhook_url


def events(admin, shop) -> list[dict]:
    return admin.execute("SELECT source, dedup_key, operation, table_name, object_id, payload FROM inbox_events "
                         "WHERE tenant_id = %s ORDER BY id", (shop.id,)).fetchall()


def all_events(admin) -> int:
    return admin.execute("SELECT count(*) AS n FROM inbox_events").fetchone()["n"]


def order_body(standins, shop, event: str = "Repair Order #1001 created", **fields) -> dict:
    made = standins.tekmetric.create_order(shop.credentials.shop_id, order=fields or None, emit_webhook=False)
    return {"event": event, "data": made["order"]}


def test_a_wrong_or_missing_url_token_is_401_and_nothing_is_stored(receiver, standins, admin, tekmetric,
                                                                   connected_shop):
    body = order_body(standins, tekmetric)
    good = url_of(standins, tekmetric)
    token = good.rsplit("/", 1)[1]
    other = connected_shop(crm="tekmetric")
    before = all_events(admin)
    refused = [
        webhook_url(receiver.url, new_webhook_token()),  # well formed, names no shop
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # one character off
        webhook_url(receiver.url, token.upper()),
        webhook_url(receiver.url, "short"),
        f"{receiver.url}/webhooks/tekmetric",  # no token at all
        f"{receiver.url}/webhooks/tekmetric/",
        f"{receiver.url}/webhooks/tekmetric?token={token}",  # the token, not where it belongs
    ]
    for url in refused:
        error = assert_error_body(httpx.post(url, json=body, timeout=10), 401)
        assert error["code"] == "invalid_token"
    # Another shop's valid URL with this shop's order: authentic, but not this shop's order.
    answer = httpx.post(url_of(standins, other), json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    # An inactive shop's URL stops working.
    update_shop(admin, other.slug, ShopChanges(active=False), session_box())
    assert httpx.post(url_of(standins, other), json=body, timeout=10).status_code == 401
    assert all_events(admin) == before


def test_an_order_webhook_is_stored_once_per_change(receiver, standins, admin, tekmetric):
    body = order_body(standins, tekmetric)
    url = url_of(standins, tekmetric)
    first = httpx.post(url, json=body, timeout=10)
    assert first.status_code == 202 and first.json()["status"] == "accepted", first.text
    order = body["data"]
    again = httpx.post(url, json=body, timeout=10)  # a duplicate delivery
    nested = httpx.post(url, json={"event": "Repair Order #1001 updated", "data": {"repairOrder": order}}, timeout=10)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert (nested.status_code, nested.json()["status"]) == (200, "duplicate")  # the same version of the order
    stored = events(admin, tekmetric)
    assert len(stored) == 1
    assert stored[0]["object_id"] == str(order["id"]) and stored[0]["source"] == "webhook"
    key = stored[0]["dedup_key"]
    assert key.startswith("tekmetric:") and f":{order['id']}:" in key
    # A new version of the order is a new event.
    changed = standins.tekmetric.update_order(order["id"], {"totalSales": 99900}, emit_webhook=False)["order"]
    assert httpx.post(url, json={"event": "Repair Order #1001 updated", "data": changed}, timeout=10).status_code == 202
    assert len(events(admin, tekmetric)) == 2


def test_the_stand_ins_duplicated_and_delayed_deliveries_are_stored_once(standins, admin, tekmetric):
    standins.tekmetric.webhooks.set_faults(duplicate_next=1, delay_seconds=0.3)
    try:
        made = standins.tekmetric.create_order(tekmetric.credentials.shop_id, wait_webhook=True)
    finally:
        standins.tekmetric.webhooks.reset()
    statuses = sorted(d.status for d in made["deliveries"])
    assert statuses == [200, 202], [d.as_dict() for d in made["deliveries"]]
    assert [e["object_id"] for e in events(admin, tekmetric)] == [str(made["order"]["id"])]


def test_bodies_that_are_not_tekmetrics_envelope_are_400_and_nothing_is_stored(standins, admin, tekmetric):
    url = url_of(standins, tekmetric)
    for content in (b"not json", b"[]", b'{"event": "x"}', json.dumps({"event": "Repair Order #1 created",
                                                                       "data": {"repairOrderNumber": 1}}).encode()):
        response = httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 400, (content, response.text)
    inspection = httpx.post(url, json={"event": "Inspection completed", "data": {"id": 3}}, timeout=10)
    assert (inspection.status_code, inspection.json()["status"]) == (200, "ignored")
    assert events(admin, tekmetric) == []


def test_the_token_is_kept_out_of_the_logs_once_it_is_seen(standins, tekmetric):
    from uvicorn.logging import AccessFormatter

    url = url_of(standins, tekmetric)
    token = url.rsplit("/", 1)[1]
    path = url.removeprefix(url.split("/webhooks/")[0])
    assert httpx.post(url, json={"event": "Inspection completed", "data": {"id": 3}}, timeout=10).status_code == 200
    assert token not in redaction.redact(f"POST {url} 200")
    # The access log line of `./dev run`'s receiver: masked, and still formatted (uvicorn's
    # formatter unpacks the record's arguments).
    redaction.install()
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:40000", "POST", path, "1.1", 202), None)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == f'127.0.0.1:40000 - "POST /webhooks/tekmetric/{redaction.MASK} HTTP/1.1" 202 Accepted'


def test_the_guards_apply_to_the_tekmetric_route(app_with, standins, admin, tekmetric):  # noqa: F811
    server = app_with(webhook_rate_limit="3/minute", max_webhook_body_bytes=2048)
    token = url_of(standins, tekmetric).rsplit("/", 1)[1]
    url = webhook_url(server.url, token)
    too_big = {"event": "Inspection completed", "data": {"id": 3, "notes": "x" * 4096}}
    assert_error_body(httpx.post(url, json=too_big, timeout=10), 413)
    answers = [httpx.post(url, json={"event": "Inspection completed", "data": {"id": 3}}, timeout=10).status_code
               for _ in range(5)]
    assert 429 in answers and answers[0] == 200
    assert events(admin, tekmetric) == []


def test_the_route_is_documented(receiver):
    document = wait_for(lambda: httpx.get(receiver.url + "/openapi.json", timeout=10).json(), message="openapi")
    route = document["paths"]["/webhooks/tekmetric/{token}"]["post"]
    assert {"202", "200", "401", "400", "413", "429", "503"} <= set(route["responses"])
    assert "event" in json.dumps(route["requestBody"])
    about = httpx.get(receiver.url + "/", timeout=10).json()["about"]
    assert "Tekmetric" in about


def test_the_route_answers_as_its_fastapi_twin_at_the_token_length_limit(receiver, admin):
    """The route is served ahead of FastAPI (hot_route.py) for tokens the FastAPI route
    accepts; a longer one is still FastAPI's to refuse, with its 422, and nothing is stored."""
    before = all_events(admin)
    body = {"event": "Repair Order #1 created", "data": {"id": 1}}
    longest = httpx.post(f"{receiver.url}/webhooks/tekmetric/{'A' * 256}", json=body, timeout=10)
    too_long = httpx.post(f"{receiver.url}/webhooks/tekmetric/{'A' * 257}", json=body, timeout=10)
    assert assert_error_body(longest, 401)["code"] == "invalid_token"
    error = assert_error_body(too_long, 422)
    assert error["code"] == "invalid_request" and "256" in error["message"]
    assert all_events(admin) == before
