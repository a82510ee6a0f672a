"""ShopMonkey stand-in webhooks: Standard Webhooks signature and the delivery client's retries."""
from __future__ import annotations

import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

KEY = "hook-shop"
SECRET = "whsec_c3RhbmQtaW4gd2ViaG9vayBzZWNyZXQ="


@pytest.fixture
def shop(servers, receiver):
    servers.shopmonkey.add_shop(KEY, f"{receiver.url}/hook", SECRET)
    return servers.shopmonkey


def test_insert_webhook_is_signed_with_the_documented_headers(shop, receiver):
    created = shop.create_order(KEY)
    (call,) = receiver.wait_for_count(1)
    body = Webhook(SECRET).verify(call["body"], call["headers"])
    assert body == {"apiVersion": "3", "operation": "INSERT", "table": "order", "data": created["order"]}
    h = call["headers"]
    assert h["User-Agent"] == "Shopmonkey (+https://shopmonkey.io)" and h["Content-Type"] == "application/json"
    assert (h["X-Attempt"], h["webhook-version"]) == ("1", "3") and h["X-Request-Id"]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(call["body"], call["headers"])
    assert created["delivery"].wait().final_status == 200


def test_update_and_delete_webhooks(shop, receiver):
    order = shop.create_order(KEY, emit_webhook=False)["order"]
    assert receiver.requests.items() == []  # a dropped webhook: only polling finds this order
    shop.update_order(order["id"], {"status": "RepairOrder", "authorized": True}, wait_webhook=True)
    shop.delete_order(order["id"], wait_webhook=True)
    bodies = [json.loads(c["body"]) for c in receiver.wait_for_count(2)]
    assert [(b["operation"], b.get("diff")) for b in bodies] == [("UPDATE", ["status", "authorized"]), ("DELETE", None)]
    assert bodies[1]["data"]["deleted"] is True
    assert bodies[0]["data"]["updatedDate"] < bodies[1]["data"]["updatedDate"]


def test_retries_on_503_then_succeeds(shop, receiver):
    receiver.respond("/hook", 503, 503)
    order = shop.create_order(KEY, emit_webhook=False)["order"]
    delivery = shop.send_webhook(order["id"])  # synchronous: returns after the last attempt
    assert [a["status"] for a in delivery.attempts] == [503, 503, 200] and delivery.ok
    calls = receiver.requests.items()
    assert [c["headers"]["X-Attempt"] for c in calls] == ["1", "2", "3"]
    assert len({c["headers"]["X-Request-Id"] for c in calls}) == 1
    assert len({c["headers"]["webhook-id"] for c in calls}) == 3  # per attempt: dedupe on content
    assert calls[2]["at"] - calls[0]["at"] >= 0.05 + 0.1  # backoff 50 ms, then 100 ms


def test_no_retry_on_500_or_other_4xx(shop, receiver):
    receiver.respond("/hook", 500, 400)
    order = shop.create_order(KEY, emit_webhook=False)["order"]
    assert [a["status"] for a in shop.send_webhook(order["id"]).attempts] == [500]
    assert [a["status"] for a in shop.send_webhook(order["id"]).attempts] == [400]


def test_gives_up_after_four_attempts_and_honours_retry_after(shop, receiver):
    receiver.respond("/hook", 429, headers={"Retry-After": "1"})
    receiver.respond("/hook", 502, 504, 408)
    order = shop.create_order(KEY, emit_webhook=False)["order"]
    delivery = shop.send_webhook(order["id"])
    assert [a["status"] for a in delivery.attempts] == [429, 502, 504, 408] and not delivery.ok
    calls = receiver.requests.items()
    assert calls[1]["at"] - calls[0]["at"] >= 0.95


def test_connection_errors_are_retried(servers, receiver):
    receiver.close()  # nothing listens there any more
    servers.shopmonkey.add_shop(KEY, f"{receiver.url}/hook", SECRET)
    order = servers.shopmonkey.create_order(KEY, emit_webhook=False)["order"]
    delivery = servers.shopmonkey.send_webhook(order["id"])
    assert len(delivery.attempts) == 4 and delivery.final_status is None and "Connect" in delivery.error


def test_sending_does_not_block_the_api(shop, receiver):
    receiver.respond("/hook", 200, delay=0.5)
    started = time.monotonic()
    created = shop.create_order(KEY)
    assert time.monotonic() - started < 0.3
    assert created["delivery"].wait(5).final_status == 200
    shop.deliveries.wait_for(lambda items: items and items[-1]["done"])
