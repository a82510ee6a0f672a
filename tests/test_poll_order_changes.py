"""Order changes end a lead's sequence, whether a webhook (UPDATE/DELETE) or the poll
brings them: approved, invoiced, paid, archived, deleted or booked estimates get no
further touches, and the lead records why and when it ended."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.support import session_box
from lead_orchestrator.services.poll import poll_cycle
from lead_orchestrator.store.shops import load_shop
from lead_orchestrator.services.touches import due_touch_ids, send_touch
from tests.conftest import emails_to, sms_to
from tests.test_poll import ingest_until, leads_of, new_order

CHANGES = {
    "authorized": ({"authorized": True, "authorizedDate": "2026-11-25T16:00:00.000Z"}, "converted", "authorized"),
    "invoiced": ({"invoiced": True, "status": "Invoice"}, "converted", "invoiced"),
    "paid": ({"paid": True}, "converted", "paid"),
    "archived": ({"archived": True}, "closed", "archived"),
    "appointment": ({"appointmentDates": ["2026-12-01T15:00:00.000Z"]}, "converted", "appointment_booked"),
    "deleted": (None, "closed", "deleted"),
}


def _change(standins, order_id: str, change: str, *, webhook: bool) -> None:
    fields = CHANGES[change][0]
    if fields is None:
        standins.shopmonkey.delete_order(order_id, emit_webhook=webhook, wait_webhook=webhook)
    else:
        standins.shopmonkey.update_order(order_id, fields, emit_webhook=webhook, wait_webhook=webhook)


@pytest.mark.parametrize("path", ["webhook", "poll"])
@pytest.mark.parametrize("change", ["authorized", "deleted", "appointment"])
def test_order_change_after_the_first_touch_ends_the_sequence(change, path, db, vendors, standins, connected_shop,
                                                               admin):
    shop = connected_shop()
    order = new_order(standins, shop, emit_webhook=True, wait_webhook=True)
    ingest_until(db, vendors, lambda: sms_to(standins, order["phone"]) and emails_to(standins, order["email"]),
                 message="first touches")
    (lead,) = leads_of(admin, shop)
    assert lead["status"] == "active"

    _change(standins, order["id"], change, webhook=path == "webhook")
    if path == "poll":
        (result,) = poll_cycle(db, vendors, tenant_ids=[shop.id]).shops
        assert result.stored == 1
    _, status, reason = CHANGES[change]
    ingest_until(db, vendors, lambda: leads_of(admin, shop)[0]["status"] == status, message=f"lead {status}")

    (ended,) = leads_of(admin, shop)
    assert (ended["status"], ended["status_reason"]) == (status, reason)
    assert ended["ended_at"] is not None and ended["ended_at"] >= lead["created_at"]
    logged = admin.execute("SELECT detail FROM lead_events WHERE lead_id = %s AND kind = %s",
                           (lead["id"], f"lead_{status}")).fetchone()
    assert logged["detail"]["reason"] == reason and logged["detail"]["touches_cancelled"] == 3
    touches = admin.execute("SELECT step, channel, status, reason FROM touches WHERE lead_id = %s "
                            "ORDER BY step, channel", (lead["id"],)).fetchall()
    assert [(t["step"], t["status"]) for t in touches] == [(0, "sent"), (0, "sent"), (1, "cancelled"),
                                                          (2, "cancelled"), (3, "cancelled")]
    assert {t["reason"] for t in touches if t["status"] == "cancelled"} == {f"lead_{status}:{reason}"}

    # Days later nothing is owed, and even a forced attempt at each follow-up sends nothing.
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5)
    with db.tenant_tx(shop.id) as conn:
        assert due_touch_ids(conn, later, lead_id=lead["id"]) == []
        shop_row = load_shop(conn, shop.id, session_box())
        ids = [r["id"] for r in conn.execute("SELECT id FROM touches WHERE lead_id = %s", (lead["id"],)).fetchall()]
    assert {send_touch(db, shop_row, touch_id, vendors, now=later).reason for touch_id in ids} == {"not_pending"}
    assert len(sms_to(standins, order["phone"])) == 1
    assert len(emails_to(standins, order["email"])) == 1


@pytest.mark.parametrize("change", ["invoiced", "paid", "archived"])
def test_polled_closing_changes_are_recorded_with_their_reason(change, db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    order = new_order(standins, shop)
    poll_cycle(db, vendors, tenant_ids=[shop.id])
    ingest_until(db, vendors, lambda: sms_to(standins, order["phone"]), message="first SMS")
    _change(standins, order["id"], change, webhook=False)
    poll_cycle(db, vendors, tenant_ids=[shop.id])
    _, status, reason = CHANGES[change]
    ingest_until(db, vendors, lambda: leads_of(admin, shop)[0]["status"] == status, message=f"lead {status}")
    (lead,) = leads_of(admin, shop)
    assert lead["status_reason"] == reason and lead["ended_at"] is not None


def test_an_estimate_already_approved_when_first_seen_is_never_texted(db, vendors, standins, connected_shop, admin):
    shop = connected_shop()
    order = new_order(standins, shop, order={"authorized": True})
    poll_cycle(db, vendors, tenant_ids=[shop.id])
    ingest_until(db, vendors, lambda: leads_of(admin, shop), message="the order recorded")
    (lead,) = leads_of(admin, shop)
    assert (lead["status"], lead["status_reason"]) == ("disqualified", "authorized")
    assert not sms_to(standins, order["phone"]) and not emails_to(standins, order["email"])
