"""The ShopMonkey webhook endpoint over real HTTP: what is accepted is committed
before the answer; every rejection has its status and changes nothing."""
from __future__ import annotations

import datetime as dt
import json
import uuid

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import table_counts


def order_body(order_id=None, updated="2026-11-20T15:02:11.000Z", operation="INSERT") -> bytes:
    return json.dumps({
        "apiVersion": "3", "operation": operation, "table": "order",
        "data": {"id": order_id or uuid.uuid4().hex[:24], "number": "10482", "status": "Estimate",
                 "updatedDate": updated, "createdDate": updated},
    }).encode()


def signed_headers(secret: str, body: bytes, *, msg_id=None, when=None) -> dict[str, str]:
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    when = when or dt.datetime.now(dt.timezone.utc)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature,
            "webhook-version": "3", "user-agent": "Shopmonkey (+https://shopmonkey.io)"}


def post(receiver, slug, body, headers):
    return httpx.post(f"{receiver.url}/webhooks/shopmonkey/{slug}", content=body, headers=headers, timeout=10)


def test_signed_webhook_is_stored_before_the_answer(receiver, make_shop, admin):
    shop = make_shop()
    body = order_body()
    response = post(receiver, shop.slug, body, signed_headers(shop.webhook_secret.get_secret_value(), body))
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    row = admin.execute("SELECT tenant_id, status, source FROM inbox_events WHERE id = %s", (event_id,)).fetchone()
    assert row == {"tenant_id": shop.id, "status": "pending", "source": "webhook"}


def test_same_delivery_twice_is_stored_once(receiver, make_shop, admin):
    shop = make_shop()
    secret = shop.webhook_secret.get_secret_value()
    body = order_body()
    headers = signed_headers(secret, body)
    first = post(receiver, shop.slug, body, headers)
    again_same_id = post(receiver, shop.slug, body, headers)
    again_new_id = post(receiver, shop.slug, body, signed_headers(secret, body))
    assert (first.status_code, again_same_id.status_code, again_new_id.status_code) == (202, 200, 200)
    assert again_new_id.json()["status"] == "duplicate"
    n = admin.execute("SELECT count(*) AS n FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()["n"]
    assert n == 1


def test_raw_secret_form_is_accepted(receiver, make_shop):
    shop = make_shop(webhook_secret="plain-shared-secret-not-base64!")
    body = order_body()
    raw = Webhook(b"plain-shared-secret-not-base64!")
    msg_id, now = "msg_raw", dt.datetime.now(dt.timezone.utc)
    headers = {"content-type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": raw.sign(msg_id, now, body.decode())}
    assert post(receiver, shop.slug, body, headers).status_code == 202


def _cases(secret_of, other_secret):
    body = order_body()
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=6)
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=6)
    good = lambda b=body: signed_headers(secret_of(), b)  # noqa: E731
    no_sig = {k: v for k, v in good().items() if k != "webhook-signature"}
    return [
        ("missing signature", None, body, no_sig, 401),
        ("wrong secret", None, body, signed_headers(other_secret, body), 401),
        ("stale timestamp", None, body, signed_headers(secret_of(), body, when=old), 401),
        ("future timestamp", None, body, signed_headers(secret_of(), body, when=future), 401),
        ("garbage signature", None, body, {**good(), "webhook-signature": "v1"}, 401),
        ("tampered body", None, body.replace(b"10482", b"99999"), good(), 401),
        ("unknown shop", "no-such-shop", body, good(), 404),
        ("too large", None, b"{" + b" " * 300_000 + b"}", good(), 413),
        ("wrong content type", None, body, {**good(), "content-type": "text/plain"}, 415),
        ("not json", None, b"{not json", good(b"{not json"), 400),
        ("invalid utf-8", None, b'{"a": "\xff"}', {**good(), }, 400),
        ("wrong shape", None, b'{"operation": "UPSERT"}', good(b'{"operation": "UPSERT"}'), 422),
        ("id with quotes", None, json.dumps({"operation": "INSERT", "table": "order", "data": {"id": "1' OR '1'='1"}}).encode(),
         good(json.dumps({"operation": "INSERT", "table": "order", "data": {"id": "1' OR '1'='1"}}).encode()), 422),
    ]


def test_rejections_have_their_status_and_change_nothing(receiver, make_shop, admin):
    shop = make_shop()
    other = make_shop()
    secret = shop.webhook_secret.get_secret_value()
    before = table_counts(admin)
    for name, slug, body, headers, expected in _cases(lambda: secret, other.webhook_secret.get_secret_value()):
        response = post(receiver, slug or shop.slug, body, headers)
        assert response.status_code == expected, f"{name}: {response.status_code} {response.text}"
        error = response.json()["error"]
        assert error["code"] and error["message"], name
    assert table_counts(admin) == before


def test_shop_a_secret_cannot_post_into_shop_b(receiver, make_shop, admin):
    a, b = make_shop(), make_shop()
    body = order_body()
    response = post(receiver, b.slug, body, signed_headers(a.webhook_secret.get_secret_value(), body))
    assert response.status_code == 401
    assert admin.execute("SELECT count(*) AS n FROM inbox_events WHERE tenant_id = %s", (b.id,)).fetchone()["n"] == 0


def test_database_down_answers_503(settings, make_shop):
    """With the database unreachable the event cannot be stored: 503, which ShopMonkey retries."""
    from lead_orchestrator.store.db import Database
    from tests.support import ThreadedServer
    from webhook_receiver.main import create_app

    dead = Database("postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1)
    dead.pool.timeout = 1
    dead.open(wait=False)
    shop = make_shop()
    body = order_body()
    with ThreadedServer(create_app(settings, dead)) as server:
        response = post(server, shop.slug, body, signed_headers(shop.webhook_secret.get_secret_value(), body))
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
    dead.close()
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert ready.status_code == 503


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health(receiver, path):
    assert httpx.get(receiver.url + path, timeout=5).status_code == 200


def test_metrics_are_prometheus_text(receiver):
    response = httpx.get(receiver.url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert "lead_webhooks_total" in response.text


def test_answers_are_the_json_they_always_were(receiver, make_shop):
    """The answers are written out on the hot route (stored_answer.py): byte for byte what
    JSONResponse rendered, with the same content type."""
    shop = make_shop()
    secret = shop.webhook_secret.get_secret_value()
    body = order_body()
    first = post(receiver, shop.slug, body, signed_headers(secret, body))
    again = post(receiver, shop.slug, body, signed_headers(secret, body))
    expected = json.dumps({"status": "accepted", "event_id": first.json()["event_id"]}, separators=(",", ":"))
    assert (first.status_code, first.content.decode()) == (202, expected)
    assert (again.status_code, again.content) == (200, b'{"status":"duplicate","event_id":null}')
    for answer in (first, again):
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["content-length"] == str(len(answer.content))


@pytest.mark.parametrize("order, status", [(("wrong", "right"), 202), (("right", "wrong"), 401)])
def test_a_repeated_signature_header_is_read_as_the_library_reads_it(receiver, make_shop, order, status):
    """Only the signature's headers are handed to standardwebhooks, picked as it picks them
    from all of a request's headers: the last of each name counts."""
    shop = make_shop()
    secret = shop.webhook_secret.get_secret_value()
    body = order_body()
    headers = signed_headers(secret, body)
    signatures = {"right": headers.pop("webhook-signature"), "wrong": signed_headers(secret, b"{}")["webhook-signature"]}
    sent = list(headers.items()) + [("webhook-signature", signatures[name]) for name in order]
    response = post(receiver, shop.slug, body, sent)
    assert response.status_code == status, response.text
