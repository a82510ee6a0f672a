"""Which estimates become leads, and through which channels: a table of cases over the
domain's typed objects (tests/test_shopmonkey_adapter.py runs the same cases from
ShopMonkey's JSON through its mapping)."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from lead_orchestrator.domain.estimates import Customer, Email, Estimate, EstimateStatus, Phone, PhoneKind
from lead_orchestrator.domain.qualification import closing_reason, qualify

NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone.utc)
CREATED = dt.datetime(2026, 11, 25, 17, 0, tzinfo=dt.timezone.utc)

MOBILE = Phone("+15125550143", PhoneKind.MOBILE, primary=True, sms_consent=True)
EMAIL = Email("dana@example.com", primary=True, consent=True)


def customer(phones=(MOBILE,), emails=(EMAIL,), preferred=None, unusable=(), crm="shopmonkey") -> Customer:
    return Customer(crm=crm, id="c1", first_name="Dana", last_name=None, company_name=None, phones=tuple(phones),
                    emails=tuple(emails), marketing_opt_in=None, unusable=tuple(unusable),
                    preferred_channel=preferred)


def estimate(the_customer: Customer | None = None, **overrides) -> Estimate:
    base = Estimate(crm="shopmonkey", id="o1", number="100", shop_ref="", status=EstimateStatus.ESTIMATE,
                    created_at=CREATED, updated_at=CREATED, total_cents=None, customer_id="c1", vehicle_id=None,
                    customer=the_customer if the_customer is not None else customer(), crm_status="Estimate")
    return dataclasses.replace(base, **overrides)


MOBILE_NO_OPT_IN = [dataclasses.replace(MOBILE, sms_consent=False)]
LANDLINE = [dataclasses.replace(MOBILE, kind=PhoneKind.LANDLINE)]
UNSUBSCRIBED = [dataclasses.replace(EMAIL, consent=False)]
NO_CUSTOMER = dataclasses.replace(estimate(), customer=None, customer_id=None)


@pytest.mark.parametrize("the_estimate, qualified, reason, channels", [
    (estimate(), True, "qualified", ("sms", "email")),
    (estimate(status=EstimateStatus.IN_PROGRESS, crm_status="RepairOrder"), False, "became_repair_order", ()),
    (estimate(status=EstimateStatus.INVOICED, crm_status="Invoice"), False, "invoiced", ()),
    (estimate(approved=True), False, "authorized", ()),
    (estimate(status=EstimateStatus.INVOICED), False, "invoiced", ()),
    (estimate(status=EstimateStatus.PAID), False, "paid", ()),
    (estimate(status=EstimateStatus.ARCHIVED), False, "archived", ()),
    (estimate(status=EstimateStatus.DELETED), False, "deleted", ()),
    (estimate(appointment_at=dt.datetime(2026, 11, 27, 15, tzinfo=dt.timezone.utc)), False, "appointment_booked", ()),
    (estimate(created_at=dt.datetime(2026, 11, 10, 17, tzinfo=dt.timezone.utc)), False, "too_old", ()),
    (estimate(created_at=None), False, "no_created_date", ()),
    (NO_CUSTOMER, False, "no_customer", ()),
    (estimate(customer(phones=[], emails=[])), False, "no_contact", ()),
    (estimate(customer(phones=MOBILE_NO_OPT_IN, emails=[])), False, "no_contact", ()),
    (estimate(customer(phones=LANDLINE, emails=UNSUBSCRIBED)), False, "no_contact", ()),
    (estimate(customer(phones=MOBILE_NO_OPT_IN)), True, "qualified", ("email",)),
    (estimate(customer(emails=UNSUBSCRIBED)), True, "qualified", ("sms",)),
    (estimate(customer(preferred="sms")), True, "qualified", ("sms",)),
    (estimate(customer(preferred="email")), True, "qualified", ("email",)),
    (estimate(customer(preferred=None)), True, "qualified", ("sms", "email")),
    # The preferred channel is unreachable: use the other one rather than stay silent.
    (estimate(customer(phones=[], preferred="sms")), True, "qualified", ("email",)),
    # A number the CRM holds but that does not parse was dropped by the adapter.
    (estimate(customer(phones=[], emails=[], unusable=["phone:invalid_number(mobile)"])), False, "no_contact", ()),
    # Tekmetric: no consent field at all (None) is not a no; our own ledger decides later.
    (estimate(customer(phones=[dataclasses.replace(MOBILE, sms_consent=None)],
                       emails=[dataclasses.replace(EMAIL, consent=None)], crm="tekmetric"), crm="tekmetric"),
     True, "qualified", ("sms", "email")),
    # Tekmetric "Saved for Later": the customer has not answered, so still a lead.
    (estimate(status=EstimateStatus.PUT_ASIDE, crm_status=None), True, "qualified", ("sms", "email")),
    (estimate(status=EstimateStatus.UNKNOWN, crm_status="Draft"), False, "status:Draft", ()),
    (estimate(status=EstimateStatus.UNKNOWN, crm_status=None), False, "status:unknown", ()),
    (estimate(status=EstimateStatus.COMPLETED), False, "completed", ()),
    (estimate(declined=True), False, "declined", ()),
])
def test_qualification_table(the_estimate, qualified, reason, channels):
    result = qualify(the_estimate, now=NOW, max_age_days=7)
    assert (result.qualified, result.reason, result.reach.channels) == (qualified, reason, channels)


@pytest.mark.parametrize("the_customer, notes", [
    (customer(phones=[], emails=[]), ("sms:no_phone", "email:no_email")),
    (customer(phones=LANDLINE, emails=UNSUBSCRIBED), ("sms:not_mobile(landline)", "email:unsubscribed")),
    (customer(phones=MOBILE_NO_OPT_IN), ("sms:no_opt_in",)),
    (customer(phones=[], emails=[], unusable=["phone:invalid_number(mobile)", "email:invalid_address"]),
     ("sms:invalid_number", "email:invalid_address")),
    (customer(preferred="email"), ("sms:prefers_email",)),
    # Several numbers and none marked primary: no guess.
    (customer(phones=[dataclasses.replace(MOBILE, primary=False),
                      Phone("+15125550177", PhoneKind.MOBILE, primary=False, sms_consent=None)]),
     ("sms:no_primary",)),
])
def test_why_a_channel_is_left_out(the_customer, notes):
    assert qualify(estimate(the_customer), now=NOW, max_age_days=7).reach.notes == notes


def test_a_phone_of_unknown_kind_is_texted_and_the_primary_is_the_one_used():
    second = Phone("+15125550177", PhoneKind.UNKNOWN, primary=True, sms_consent=None)
    result = qualify(estimate(customer(phones=[dataclasses.replace(MOBILE, primary=False), second])),
                     now=NOW, max_age_days=7)
    assert result.reach.phone == "+15125550177"


def test_max_age_is_per_shop():
    old = estimate(created_at=dt.datetime(2026, 11, 1, 17, tzinfo=dt.timezone.utc))
    assert not qualify(old, now=NOW, max_age_days=7).qualified
    assert qualify(old, now=NOW, max_age_days=30).qualified


def test_closing_reason_of_an_open_estimate_is_none():
    assert closing_reason(estimate()) is None


def test_a_final_status_beats_an_approval_and_an_approval_beats_work_started():
    assert closing_reason(estimate(status=EstimateStatus.DELETED, approved=True)) == "deleted"
    assert closing_reason(estimate(status=EstimateStatus.PAID, approved=True)) == "paid"
    assert closing_reason(estimate(status=EstimateStatus.IN_PROGRESS, approved=True)) == "authorized"
    assert closing_reason(estimate(status=EstimateStatus.IN_PROGRESS, declined=True)) == "became_repair_order"
