"""End to end through the real Dagster daemon, for each CRM with the same test body: a
webhook over HTTP becomes a lead, the first SMS and email reach the Twilio and SendGrid
stand-ins, and the customer's approval in the CRM stops the follow-ups."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import emails_to, sms_to
from tests.crm_drivers import DRIVERS
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


@pytest.mark.parametrize("crm", ["shopmonkey", "tekmetric"])
def test_webhook_to_first_sms_and_email_then_approval_stops_the_follow_ups(dagster_daemon, connected_shop, standins,
                                                                           admin, crm):
    shop = connected_shop(crm=crm)
    driver = DRIVERS[crm](standins, shop)
    started = time.monotonic()
    made = driver.create_estimate()
    assert made.delivered == (202,), made

    wait_for(lambda: sms_to(standins, made.phone) and emails_to(standins, made.email),
             timeout=FIRST_TOUCH_DEADLINE_S, message="first SMS and email at the stand-ins", interval=0.05)
    latency = time.monotonic() - started
    print(f"\n{crm}: webhook -> first SMS and email through the daemon: {latency:.2f}s")
    assert latency < FIRST_TOUCH_DEADLINE_S

    lead = admin.execute("SELECT id, status, source, phone_e164, email FROM leads WHERE tenant_id = %s "
                         "AND order_id = %s", (shop.id, made.order_id)).fetchone()
    assert {k: lead[k] for k in ("status", "source", "phone_e164", "email")} == {
        "status": "active", "source": "webhook", "phone_e164": made.phone, "email": made.email}
    sms = sms_to(standins, made.phone)[0]
    assert "STOP" in sms["body"] and shop.name in sms["body"]

    # The customer approves: the lead ends, and its follow-ups will never go out. (No
    # first-touch promise here: a run the sensor starts may wait longer on a loaded machine.)
    driver.approve(made.order_id)
    wait_for(lambda: _lead_status(admin, lead["id"]) == ("converted", "authorized"), timeout=90,
             message="the lead to end on the approval")
    follow_ups = admin.execute("SELECT status FROM touches WHERE lead_id = %s AND step > 0", (lead["id"],)).fetchall()
    assert follow_ups and {t["status"] for t in follow_ups} == {"cancelled"}
    assert len(sms_to(standins, made.phone)) == 1 and len(emails_to(standins, made.email)) == 1


def _lead_status(admin, lead_id: int) -> tuple[str, str | None]:
    row = admin.execute("SELECT status, status_reason FROM leads WHERE id = %s", (lead_id,)).fetchone()
    return row["status"], row["status_reason"]


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
