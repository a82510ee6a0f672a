"""A delivery callback for an `unknown` touch confirms it `sent`, and says so on the lead's
timeline, only if the touch was still `unknown` when the callback's update ran: a
reconciler that settled it meanwhile (here: `failed`) keeps its word, and the timeline
does not claim a send the row does not have."""
from __future__ import annotations

import datetime as dt
import threading

from lead_orchestrator.services.delivery import apply_sms_status
from lead_orchestrator.store.touches import fail_unknown
from tests.support import wait_for
from tests.touchpoint_support import UTC, events_of, insert_lead, unique_phone

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=UTC)


def _unknown_first_sms(admin, lead_id: int) -> int:
    touch_id = admin.execute("SELECT id FROM touches WHERE lead_id = %s AND step = 0 AND channel = 'sms'",
                             (lead_id,)).fetchone()["id"]
    admin.execute("UPDATE touches SET status = 'sending', reserved_at = %s WHERE id = %s", (T0, touch_id))
    admin.execute("UPDATE touches SET status = 'unknown', resolve_after = %s WHERE id = %s", (T0, touch_id))
    return touch_id


def test_a_callback_racing_a_reconciler_that_failed_the_touch_does_not_log_it_sent(db, make_shop, admin):
    shop = make_shop()
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone())
    touch_id = _unknown_first_sms(admin, lead["id"])
    done = threading.Event()

    def callback():
        with db.tenant_tx(shop.id) as conn:  # reads the touch as `unknown`, then waits for its row lock
            apply_sms_status(conn, touch_id=touch_id, message_sid="SM" + "0" * 32, status="delivered",
                             error_code=None, to=None, at=T0 + dt.timedelta(minutes=1))
        done.set()

    with db.tenant_tx(shop.id) as reconciler:
        fail_unknown(reconciler, touch_id, "never_taken")  # holds the row until it commits
        thread = threading.Thread(target=callback)
        thread.start()
        wait_for(lambda: admin.execute(
            """SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                  AND query LIKE 'UPDATE touches SET delivery_status%'""").fetchone(),
                 message="the callback waiting for the touch's lock")
    thread.join(timeout=30)
    assert done.is_set()

    row = admin.execute("SELECT status, delivery_status FROM touches WHERE id = %s", (touch_id,)).fetchone()
    assert (row["status"], row["delivery_status"]) == ("failed", "delivered")
    assert "touch_sent" not in [e["kind"] for e in events_of(admin, lead["id"])]


def test_a_callback_for_an_unknown_touch_confirms_it_sent(db, make_shop, admin):
    shop = make_shop()
    lead = insert_lead(db, shop, first_seen=T0, phone=unique_phone())
    touch_id = _unknown_first_sms(admin, lead["id"])
    with db.tenant_tx(shop.id) as conn:
        touch = apply_sms_status(conn, touch_id=touch_id, message_sid="SM" + "1" * 32, status="sent",
                                 error_code=None, to=None, at=T0 + dt.timedelta(minutes=1))
    assert touch.id == touch_id
    row = admin.execute("SELECT status, reason, sent_at FROM touches WHERE id = %s", (touch_id,)).fetchone()
    assert (row["status"], row["reason"], row["sent_at"]) == ("sent", "confirmed_by_provider", T0)
    sent = [e for e in events_of(admin, lead["id"]) if e["kind"] == "touch_sent"]
    assert [e["detail"]["reason"] for e in sent] == ["confirmed_by_provider"]
