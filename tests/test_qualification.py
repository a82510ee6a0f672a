"""Which orders become leads, and through which channels: a table of cases."""
from __future__ import annotations

import datetime as dt

import pytest

from lead_orchestrator.domain.qualification import closing_reason, qualify

NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone.utc)


def order(**overrides):
    base = {"id": "o1", "number": "100", "status": "Estimate", "customerId": "c1", "authorized": False,
            "invoiced": False, "paid": False, "archived": False, "deleted": False, "appointmentDates": [],
            "createdDate": "2026-11-25T17:00:00.000Z", "updatedDate": "2026-11-25T17:00:00.000Z"}
    return {**base, **overrides}


def customer(phones=None, emails=None, preferred=None):
    return {
        "id": "c1", "firstName": "Dana", "preferredContactMethod": preferred,
        "phoneNumbers": phones if phones is not None else [
            {"id": "p1", "number": "+15125550143", "primary": True, "type": "Mobile", "optIn": True}],
        "emails": emails if emails is not None else [
            {"id": "e1", "email": "dana@example.com", "primary": True, "subscribed": True}],
    }


MOBILE_NO_OPT_IN = [{"id": "p1", "number": "+15125550143", "primary": True, "type": "Mobile", "optIn": False}]
LANDLINE = [{"id": "p1", "number": "+15125550143", "primary": True, "type": "Landline", "optIn": True}]
UNSUBSCRIBED = [{"id": "e1", "email": "dana@example.com", "primary": True, "subscribed": False}]
TWO_PHONES = [
    {"id": "p1", "number": "+15125550143", "primary": True, "type": "Mobile", "optIn": True},
    {"id": "p2", "number": "+15125550177", "primary": False, "type": "Mobile", "optIn": True},
]


@pytest.mark.parametrize("the_order, the_customer, qualified, reason, channels", [
    (order(), customer(), True, "qualified", ("sms", "email")),
    (order(status="RepairOrder"), customer(), False, "became_repair_order", ()),
    (order(status="Invoice"), customer(), False, "invoiced", ()),
    (order(authorized=True), customer(), False, "authorized", ()),
    (order(invoiced=True), customer(), False, "invoiced", ()),
    (order(paid=True), customer(), False, "paid", ()),
    (order(archived=True), customer(), False, "archived", ()),
    (order(deleted=True), customer(), False, "deleted", ()),
    (order(appointmentDates=["2026-11-27T15:00:00.000Z"]), customer(), False, "appointment_booked", ()),
    (order(createdDate="2026-11-10T17:00:00.000Z"), customer(), False, "too_old", ()),
    (order(createdDate=None), customer(), False, "no_created_date", ()),
    (order(customerId=None), None, False, "no_customer", ()),
    (order(), customer(phones=[], emails=[]), False, "no_contact", ()),
    (order(), customer(phones=MOBILE_NO_OPT_IN, emails=[]), False, "no_contact", ()),
    (order(), customer(phones=LANDLINE, emails=UNSUBSCRIBED), False, "no_contact", ()),
    (order(), customer(phones=MOBILE_NO_OPT_IN), True, "qualified", ("email",)),
    (order(), customer(emails=UNSUBSCRIBED), True, "qualified", ("sms",)),
    (order(), customer(preferred="SMS"), True, "qualified", ("sms",)),
    (order(), customer(preferred="Email"), True, "qualified", ("email",)),
    (order(), customer(preferred="All"), True, "qualified", ("sms", "email")),
    # The preferred channel is unreachable: use the other one rather than stay silent.
    (order(), customer(phones=[], preferred="SMS"), True, "qualified", ("email",)),
    (order(), customer(phones=[{"id": "p1", "number": "not a number", "primary": True, "type": "Mobile",
                                "optIn": True}], emails=[]), False, "no_contact", ()),
])
def test_qualification_table(the_order, the_customer, qualified, reason, channels):
    result = qualify(the_order, the_customer, now=NOW, max_age_days=7)
    assert (result.qualified, result.reason, result.reach.channels) == (qualified, reason, channels)


def test_order_overrides_pick_the_contact():
    result = qualify(order(phoneNumberId="p2"), customer(phones=TWO_PHONES), now=NOW, max_age_days=7)
    assert result.reach.phone == "+15125550177"


def test_max_age_is_per_shop():
    old = order(createdDate="2026-11-01T17:00:00.000Z")
    assert not qualify(old, customer(), now=NOW, max_age_days=7).qualified
    assert qualify(old, customer(), now=NOW, max_age_days=30).qualified


def test_closing_reason_of_an_open_estimate_is_none():
    assert closing_reason(order()) is None
