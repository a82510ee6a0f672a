"""End to end through the real Dagster daemon: a signed webhook over HTTP becomes a
lead, and the first SMS and email reach the Twilio and SendGrid stand-ins."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import emails_to, sms_to
from tests.support import wait_for
from tests.test_receiver_shopmonkey import post, signed_headers

pytestmark = pytest.mark.daemon

FIRST_TOUCH_DEADLINE_S = 30.0


def _lead_count(admin, shop) -> int:
    return admin.execute("SELECT count(*) AS n FROM leads WHERE tenant_id = %s", (shop.id,)).fetchone()["n"]


def _inbox_settled(admin, shop) -> bool:
    row = admin.execute("SELECT count(*) FILTER (WHERE status IN ('pending', 'processing')) AS open, count(*) AS n "
                        "FROM inbox_events WHERE tenant_id = %s", (shop.id,)).fetchone()
    return row["n"] > 0 and row["open"] == 0


def test_webhook_to_first_sms_and_email_through_the_daemon(dagster_daemon, connected_shop, standins, admin):
    shop = connected_shop()
    key = shop.shopmonkey_api_key.get_secret_value()
    started = time.monotonic()
    created = standins.shopmonkey.create_order(key, wait_webhook=True)
    assert created["delivery"].as_dict()["final_status"] == 202, created["delivery"].as_dict()
    phone = created["customer"]["phoneNumbers"][0]["number"]
    email = created["customer"]["emails"][0]["email"]

    wait_for(lambda: sms_to(standins, phone) and emails_to(standins, email), timeout=FIRST_TOUCH_DEADLINE_S,
             message="first SMS and email at the stand-ins", interval=0.05)
    latency = time.monotonic() - started
    print(f"\nwebhook -> first SMS and email through the daemon: {latency:.2f}s")
    assert latency < FIRST_TOUCH_DEADLINE_S

    lead = admin.execute("SELECT status, source, phone_e164, email FROM leads WHERE tenant_id = %s AND order_id = %s",
                         (shop.id, created["order"]["id"])).fetchone()
    assert lead == {"status": "active", "source": "webhook", "phone_e164": phone, "email": email}
    sms = sms_to(standins, phone)[0]
    assert "STOP" in sms["body"] and shop.name in sms["body"]


def test_redelivered_webhook_gives_one_lead_one_sms_one_email(dagster_daemon, connected_shop, standins, admin,
                                                              receiver):
    shop = connected_shop()
    key = shop.shopmonkey_api_key.get_secret_value()
    created = standins.shopmonkey.create_order(key, wait_webhook=True)
    order_id = created["order"]["id"]
    phone = created["customer"]["phoneNumbers"][0]["number"]
    email = created["customer"]["emails"][0]["email"]
    # The same change delivered again: once more with a new webhook-id, once replaying the first one.
    again = standins.shopmonkey.send_webhook(order_id, "INSERT", wait=True).as_dict()
    assert again["final_status"] == 200, again
    body = json.dumps(created["delivery"].body).encode()
    headers = signed_headers(shop.webhook_secret.get_secret_value(), body, msg_id="msg_fixed_replay")
    assert post(receiver, shop.slug, body, headers).status_code == 200  # same change: duplicate
    assert post(receiver, shop.slug, body, headers).status_code == 200  # same webhook-id again

    wait_for(lambda: sms_to(standins, phone) and emails_to(standins, email), timeout=FIRST_TOUCH_DEADLINE_S,
             message="first touches")
    wait_for(lambda: _inbox_settled(admin, shop), timeout=FIRST_TOUCH_DEADLINE_S, message="inbox processed")
    assert _lead_count(admin, shop) == 1
    assert len(sms_to(standins, phone)) == 1
    assert len(emails_to(standins, email)) == 1
