"""Email content and the unsubscribe that goes with it: every email carries the shop's
postal address, an unsubscribe link and RFC 8058 one-click headers; following them
takes effect at once."""
from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest

from lead_orchestrator.services.touch_sweep import send_due_touches
from lead_orchestrator.services.shop_clients import unsubscribe_token
from tests.conftest import emails_to
from tests.touchpoint_support import (UTC, RecordingVendors, SimClock, insert_lead, lead_row, settle_sms_callbacks,
                                      tenant_counts, touches_of, unique_email, unique_phone)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def first_email(db, vendors, connected_shop, standins, admin):
    shop = connected_shop(postal_address="77 Gear St, Tulsa, OK 74103")
    email = unique_email()
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone(), email=email)
    clock = SimClock(T0)
    recording = RecordingVendors(vendors, clock)
    send_due_touches(db, recording, now=T0, due_before=T0, tenant_ids=[shop.id])
    (mail,) = emails_to(standins, email)
    settle_sms_callbacks(admin, lead["id"])
    return shop, lead, email, mail, clock, recording


def unsubscribe_link(mail: dict) -> str:
    header = mail["headers"]["List-Unsubscribe"]
    match = re.fullmatch(r"<(https?://\S+)>", header)
    assert match, header
    return match.group(1)


def test_email_carries_postal_address_and_one_click_unsubscribe(first_email):
    shop, lead, email, mail, _, _ = first_email
    assert shop.postal_address in mail["text"] and shop.name in mail["text"]
    link = unsubscribe_link(mail)
    assert f"Unsubscribe: {link}" in mail["text"]
    assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["from"] == shop.sendgrid_sender
    assert mail["custom_args"]["tenant"] == shop.slug


def test_one_click_post_opts_out_and_no_email_follows(db, first_email, admin):
    shop, lead, email, mail, clock, recording = first_email
    response = httpx.post(unsubscribe_link(mail), content=b"List-Unsubscribe=One-Click", timeout=10,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and "unsubscribed" in response.text
    contact = admin.execute("SELECT opted_out, change_source FROM contacts WHERE tenant_id = %s AND address = %s",
                            (shop.id, email)).fetchone()
    assert contact == {"opted_out": True, "change_source": "list_unsubscribe"}
    row = lead_row(admin, lead["id"])
    assert (row["status"], row["status_reason"]) == ("stopped", "unsubscribed")
    for days in (1, 2, 4):
        clock.set(T0 + dt.timedelta(days=days))
        send_due_touches(db, recording, now=clock(), due_before=clock(), tenant_ids=[shop.id])
    assert [c.at for c in recording.calls] == [T0, T0]  # the first SMS and email, nothing after
    # A later estimate of the same customer gets texts, never email.
    clock.set(T0 + dt.timedelta(days=5))
    later = insert_lead(db, shop, first_seen=clock(), phone=unique_phone(), email=email.upper())
    send_due_touches(db, recording, now=clock(), due_before=clock(), tenant_ids=[shop.id])
    touches = touches_of(admin, later["id"])
    assert (touches[(0, "email")]["status"], touches[(0, "email")]["reason"]) == ("skipped", "opted_out")
    assert touches[(0, "sms")]["status"] == "sent"


def test_the_link_page_asks_first_and_never_unsubscribes_on_get(first_email, admin):
    shop, lead, email, mail, _, _ = first_email
    before = tenant_counts(admin, shop.id)
    page = httpx.get(unsubscribe_link(mail), timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<form method='post'>" in page.text and shop.name in page.text and email in page.text
    assert tenant_counts(admin, shop.id) == before
    # The page's button posts the form to the same address.
    assert httpx.post(unsubscribe_link(mail), data={"List-Unsubscribe": "One-Click"}, timeout=10).status_code == 200
    assert lead_row(admin, lead["id"])["status_reason"] == "unsubscribed"


@pytest.mark.parametrize("token_kind", ["garbage", "other_secret", "tampered"])
def test_a_bad_link_is_refused_and_changes_nothing(receiver, first_email, admin, token_kind):
    shop, lead, email, mail, _, _ = first_email
    good = unsubscribe_link(mail).rsplit("/", 1)[1]
    token = {"garbage": "not-a-token", "other_secret": unsubscribe_token("another-secret", shop.id, email),
             "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB")}[token_kind]
    before = tenant_counts(admin, shop.id)
    for method in ("GET", "POST"):
        response = httpx.request(method, f"{receiver.url}/unsubscribe/{token}", timeout=10)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_link"
    assert tenant_counts(admin, shop.id) == before
    assert lead_row(admin, lead["id"])["status"] == "active"


def test_an_oversized_unsubscribe_post_is_refused(first_email, admin):
    shop, lead, email, mail, _, _ = first_email
    response = httpx.post(unsubscribe_link(mail), content=b"x" * 10_000, timeout=10)
    assert response.status_code == 413
    assert lead_row(admin, lead["id"])["status"] == "active"
