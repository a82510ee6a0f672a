"""The receiver's guards over real HTTP: per-shop rate limit, body cap for any route,
JSON that PostgreSQL could not store, one error body for every failure (500 too),
/metrics kept off the public, and loopback-only defaults."""
from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import time
import uuid

import httpx
import pytest
from fastapi import Request
from pydantic import SecretStr

from tests.conftest import table_counts
from tests.support import ThreadedServer, wait_for
from tests.test_receiver_shopmonkey import order_body, post, signed_headers


@pytest.fixture
def app_with(settings, db):
    """A receiver of its own, with some settings changed, over real HTTP."""
    from webhook_receiver.main import create_app

    servers = []

    def start(**changes):
        server = ThreadedServer(create_app(settings.model_copy(update=changes), db)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def assert_error_body(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] and error["message"]
    return error


def inbox_count(admin, shop) -> int:
    return admin.execute("SELECT count(*) AS n FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()["n"]


def room_in_window(window: int, needed: float) -> None:
    """The limit is a sliding window *counter*: fixed windows aligned on the clock, the
    previous one weighted by how much of it is still in view. Past a window's edge that
    weight shrinks as time goes on and lets more requests in, so a test of the exact
    count waits until `needed` seconds are left before the next edge."""
    wait_for(lambda: window - time.time() % window > needed, timeout=window + 1, interval=0.01,
             message="room before the rate limit's next window edge")


def test_rate_limit_answers_429_with_retry_after_and_loses_nothing(app_with, make_shop, admin):
    server = app_with(webhook_rate_limit="5 per 2 seconds")
    a, b = make_shop(), make_shop()
    secret = a.webhook_secret.get_secret_value()
    bodies = [order_body() for _ in range(8)]
    room_in_window(2, needed=1.7)
    answers = [post(server, a.slug, body, signed_headers(secret, body)) for body in bodies]
    statuses = [r.status_code for r in answers]
    assert statuses.count(202) == 5 and statuses.count(429) == 3, statuses
    for r in answers:
        if r.status_code == 429:
            assert_error_body(r, 429)
            # The rest of this window, then a fifth of the next: by then this window's 5
            # weigh 4, and one more fits.
            assert 1 <= int(r.headers["retry-after"]) <= 3
    assert inbox_count(admin, a) == 5  # everything answered 202 is stored, nothing else
    # Another shop has its own window.
    other = order_body()
    assert post(server, b.slug, other, signed_headers(b.webhook_secret.get_secret_value(), other)).status_code == 202
    # The sender retries after Retry-After: every refused event gets in.
    refused = [body for body, r in zip(bodies, answers) if r.status_code == 429]
    for body in refused:
        wait_for(lambda body=body: post(server, a.slug, body, signed_headers(secret, body)).status_code == 202,
                 timeout=10, interval=0.25, message="a refused delivery accepted on retry")
    assert inbox_count(admin, a) == 8


def test_rate_limit_applies_to_every_webhook_route(app_with):
    server = app_with(webhook_rate_limit="2 per 10 seconds")
    room_in_window(10, needed=3)
    statuses = [httpx.post(f"{server.url}/webhooks/twilio/some-shop/status", timeout=5).status_code for _ in range(3)]
    assert statuses[:2] == [404, 404] and statuses[2] == 429


def _chunks():
    for _ in range(40):
        yield b" " * 16_384  # 640 KiB in all, chunked, no Content-Length


def test_body_cap_holds_without_a_content_length(receiver, make_shop, admin):
    shop = make_shop()
    before = table_counts(admin, shop.id)
    response = httpx.post(f"{receiver.url}/webhooks/shopmonkey/{shop.slug}", content=_chunks(),
                          headers={"content-type": "application/json"}, timeout=10)
    assert assert_error_body(response, 413)["code"] == "body_too_large"
    assert table_counts(admin, shop.id) == before


def test_body_cap_applies_to_routes_added_later(app_with):
    """A route that reads its body its own way (as a future vendor route might)."""
    server = app_with()
    seen = []

    async def vendor_events(request: Request):
        seen.append(len(await request.body()))
        return {"ok": True}

    server._server.config.app.add_api_route("/webhooks/othervendor/{tenant}/events", vendor_events, methods=["POST"])
    url = f"{server.url}/webhooks/othervendor/some-shop/events"
    assert httpx.post(url, content=b"[]", timeout=10).status_code == 200
    assert_error_body(httpx.post(url, content=_chunks(), timeout=10), 413)
    assert_error_body(httpx.post(url, content=b"x" * 300_000, timeout=10), 413)  # declared length
    assert seen == [2]


def _signed(shop, body: bytes, **kw) -> dict[str, str]:
    return signed_headers(shop.webhook_secret.get_secret_value(), body, **kw)


HOSTILE_BODIES = {
    "nul in a string": ('{"operation":"INSERT","table":"order","data":{"id":"a1","note":"x\\u0000y"}}', 422),
    "nul in a key": ('{"operation":"INSERT","table":"order","data":{"id":"a2","x\\u0000":1}}', 422),
    "lone surrogate": ('{"operation":"INSERT","table":"order","data":{"id":"a3","note":"\\ud800"}}', 422),
    "huge number": ('{"operation":"INSERT","table":"order","data":{"id":"a4","total":1e999}}', 422),
    "NaN": ('{"operation":"INSERT","table":"order","data":{"id":"a5","total":NaN}}', 400),
    "deep nesting": ('{"operation":"INSERT","table":"order","data":{"id":"a6","x":' + "[" * 200 + "]" * 200 + "}}", 422),
    "very deep nesting": ("[" * 100_000 + "]" * 100_000, 422),
    "top-level array": ('[{"operation":"INSERT"}]', 422),
    "template injection": ('{"operation":"INSERT","table":"order","data":{"id":"{{7*7}}"}}', 422),
    "sql injection in table": ('{"operation":"INSERT","table":"order; DROP TABLE leads","data":{"id":"a7"}}', 422),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_signed_but_unstorable_json_is_a_4xx_and_changes_nothing(name, receiver, make_shop, admin):
    shop = make_shop()
    text, expected = HOSTILE_BODIES[name]
    body = text.encode()
    before = table_counts(admin, shop.id)
    response = post(receiver, shop.slug, body, _signed(shop, body))
    assert_error_body(response, expected)
    assert table_counts(admin, shop.id) == before


def test_bad_webhook_ids_are_refused(receiver, make_shop, admin):
    shop = make_shop()
    before = table_counts(admin, shop.id)
    for msg_id in ("m" * 5000, "msg with spaces", "msg_\u00e9t\u00e9"):
        body = order_body()
        headers = _signed(shop, body, msg_id=msg_id)
        response = httpx.post(f"{receiver.url}/webhooks/shopmonkey/{shop.slug}", content=body,
                              headers={k: v.encode() for k, v in headers.items()}, timeout=10)
        assert_error_body(response, 400)
    assert table_counts(admin, shop.id) == before


@pytest.mark.parametrize("slug", ["%00", "UPPER", "a", "x" * 64, "..%2f..%2fetc", "%27%20OR%201%3D1"])
def test_odd_slugs_are_unknown_shops(receiver, slug):
    body = order_body()
    response = httpx.post(f"{receiver.url}/webhooks/shopmonkey/{slug}", content=body,
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code in (404, 422), response.text
    assert_error_body(response, response.status_code)


def test_replayed_delivery_after_the_window_is_refused(receiver, make_shop, admin):
    shop = make_shop()
    body = order_body()
    sent_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5, seconds=30)
    headers = _signed(shop, body, msg_id="msg_captured", when=sent_at)
    assert assert_error_body(post(receiver, shop.slug, body, headers), 401)["code"] == "bad_signature"
    assert inbox_count(admin, shop) == 0


def test_unknown_routes_and_methods_use_the_error_body(receiver):
    assert_error_body(httpx.get(f"{receiver.url}/nope", timeout=5), 404)
    assert_error_body(httpx.get(f"{receiver.url}/webhooks/shopmonkey/some-shop", timeout=5), 405)


def test_an_unexpected_error_is_a_500_with_the_error_body_and_no_secret(app_with, make_shop, caplog):
    shop = make_shop()
    secret = shop.sendgrid_api_key.get_secret_value()
    server = app_with()

    def boom():
        raise RuntimeError(f"vendor said: bad key {secret}")

    server._server.config.app.add_api_route("/_boom", boom)
    with caplog.at_level(logging.ERROR):
        response = httpx.get(f"{server.url}/_boom", timeout=5)
    error = assert_error_body(response, 500)
    assert error["code"] == "internal_error" and secret not in response.text
    assert "RuntimeError" in caplog.text and secret not in caplog.text


def test_an_unexpected_error_on_the_hot_route_is_the_same_500(app_with, make_shop, admin, caplog, monkeypatch):
    """The ShopMonkey route is served ahead of FastAPI's stack (hot_route.py); an error
    there answers as everywhere else, and nothing is stored."""
    shop = make_shop()
    secret = shop.webhook_secret.get_secret_value()
    server = app_with()
    app = server._server.config.app

    async def boom(tenant_id, event):
        raise RuntimeError(f"writer broke near {secret}")

    monkeypatch.setattr(app.state.inbox_writer, "store", boom)
    body = order_body()
    with caplog.at_level(logging.ERROR):
        response = post(server, shop.slug, body, signed_headers(secret, body))
    error = assert_error_body(response, 500)
    assert error["code"] == "internal_error" and secret not in response.text
    assert "RuntimeError" in caplog.text and secret not in caplog.text
    assert inbox_count(admin, shop) == 0


def test_metrics_answer_loopback_only_unless_a_token_is_set(app_with):
    open_server = app_with()
    assert httpx.get(f"{open_server.url}/metrics", timeout=5).status_code == 200
    # Through a proxy on the same host, uvicorn reports the real (public) client.
    proxied = httpx.get(f"{open_server.url}/metrics", headers={"x-forwarded-for": "203.0.113.7"}, timeout=5)
    assert_error_body(proxied, 403)

    token = "metrics-" + uuid.uuid4().hex
    guarded = app_with(metrics_token=SecretStr(token))
    assert_error_body(httpx.get(f"{guarded.url}/metrics", timeout=5), 401)
    assert_error_body(httpx.get(f"{guarded.url}/metrics", headers={"authorization": "Bearer wrong"}, timeout=5), 401)
    ok = httpx.get(f"{guarded.url}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=5)
    assert ok.status_code == 200 and "lead_webhooks_total" in ok.text


def test_services_not_for_the_public_bind_to_loopback_by_default(standins):
    from lead_orchestrator.runtime import stack
    from lead_orchestrator.settings import Settings
    from standins.__main__ import _parser

    assert Settings(_env_file=None).receiver_host == "127.0.0.1"
    assert _parser().parse_args([]).host == "127.0.0.1"
    assert standins.shopmonkey_url.startswith("http://127.0.0.1:")
    source = inspect.getsource(stack.app_children)
    assert '"-h", "127.0.0.1"' in source  # the Dagster webserver
    assert "0.0.0.0" not in inspect.getsource(stack)


def test_openapi_documents_the_error_body(receiver):
    schema = httpx.get(f"{receiver.url}/openapi.json", timeout=5).json()
    responses = schema["paths"]["/webhooks/shopmonkey/{tenant}"]["post"]["responses"]
    for status in ("401", "413", "415", "422", "429", "503"):
        assert "ErrorBody" in json.dumps(responses[status]), status
