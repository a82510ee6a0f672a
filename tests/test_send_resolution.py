"""The rule for an unknown send once the vendor has been asked (no I/O): confirm what the
vendor has, owe again only on proof it never took it and only once, and never while in
doubt."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lead_orchestrator.messaging.send_outcomes import ABSENT, ERROR, FOUND, SIMILAR, UNAVAILABLE, Lookup
from lead_orchestrator.messaging.send_resolution import (ASK_AGAIN, CONFIRM, FAIL, GIVE_UP, GIVE_UP_AFTER, LONGEST_WAIT, REPLAN,
                                               resolve, wait_before_asking)

T0 = dt.datetime(2027, 3, 2, 15, 0, tzinfo=dt.timezone.utc)
SETTLE = dt.timedelta(hours=2)


def decide(lookup, *, after, attempts=1, replanned=False, lead_status="active", later_step_out=None):
    return resolve(lookup, now=T0 + after, reserved_at=T0, settle=SETTLE, attempts=attempts, replanned=replanned,
                   lead_status=lead_status, later_step_out=later_step_out)


def test_found_is_confirmed_with_the_vendors_id_at_any_time():
    d = decide(Lookup(FOUND, message_id="SM1"), after=dt.timedelta(seconds=5))
    assert (d.action, d.message_id, d.reason) == (CONFIRM, "SM1", "confirmed_by_provider")


def test_absent_before_the_vendor_settles_is_doubt():
    d = decide(Lookup(ABSENT), after=dt.timedelta(minutes=1), attempts=1)
    assert d.action == ASK_AGAIN and d.ask_at == T0 + dt.timedelta(minutes=1, seconds=30)


def test_the_last_question_is_asked_when_the_vendor_has_settled():
    d = decide(Lookup(ABSENT), after=SETTLE - dt.timedelta(minutes=1), attempts=9)
    assert d.action == ASK_AGAIN and d.ask_at == T0 + SETTLE


def test_absent_after_settling_is_owed_again_once():
    assert decide(Lookup(ABSENT), after=SETTLE).action == REPLAN
    d = decide(Lookup(ABSENT), after=SETTLE, replanned=True)
    assert (d.action, d.reason) == (FAIL, "not_accepted_by_provider:already_replanned")


def test_absent_after_settling_for_an_ended_lead_is_failed_not_owed():
    d = decide(Lookup(ABSENT), after=SETTLE, lead_status="stopped")
    assert (d.action, d.reason) == (FAIL, "not_accepted_by_provider:lead_stopped")


def test_a_lost_step_is_not_sent_after_a_later_step_of_its_channel():
    d = decide(Lookup(ABSENT), after=SETTLE, later_step_out=1)
    assert (d.action, d.reason) == (FAIL, "not_accepted_by_provider:step_1_went_out_since")


def test_a_similar_message_is_never_proof_of_absence():
    assert decide(Lookup(SIMILAR, message_id="SM9"), after=dt.timedelta(minutes=1)).action == ASK_AGAIN
    d = decide(Lookup(SIMILAR, message_id="SM9"), after=SETTLE * 10)
    assert (d.action, d.reason) == (GIVE_UP, "unresolved:similar_message_at_provider:SM9")


def test_a_vendor_that_cannot_tell_ends_the_questions_at_once():
    d = decide(Lookup(UNAVAILABLE, detail="email_activity_unavailable"), after=dt.timedelta(seconds=1))
    assert (d.action, d.reason) == (GIVE_UP, "unresolved:email_activity_unavailable")


def test_a_vendor_that_does_not_answer_is_asked_again_for_days_then_left_unknown():
    assert decide(Lookup(ERROR), after=SETTLE * 3, attempts=4).action == ASK_AGAIN
    d = decide(Lookup(ERROR), after=GIVE_UP_AFTER, attempts=40)
    assert (d.action, d.reason) == (GIVE_UP, "unresolved:provider_unreachable")


def test_waits_double_up_to_the_longest():
    assert [wait_before_asking(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert wait_before_asking(50) == LONGEST_WAIT


@given(verdict=st.sampled_from([FOUND, ABSENT, SIMILAR, UNAVAILABLE, ERROR]),
       minutes=st.integers(0, 60 * 24 * 10), attempts=st.integers(1, 100), replanned=st.booleans(),
       lead_status=st.sampled_from(["active", "stopped", "completed", "converted"]),
       later=st.sampled_from([None, 1, 3]))
def test_nothing_is_owed_again_without_proof_and_never_twice(verdict, minutes, attempts, replanned, lead_status,
                                                            later):
    d = decide(Lookup(verdict, message_id="X"), after=dt.timedelta(minutes=minutes), attempts=attempts,
               replanned=replanned, lead_status=lead_status, later_step_out=later)
    if d.action == REPLAN:
        assert verdict == ABSENT and minutes * 60 >= SETTLE.total_seconds()
        assert not replanned and lead_status == "active" and later is None
    if d.action == ASK_AGAIN:
        assert d.ask_at > T0 + dt.timedelta(minutes=minutes)


@pytest.mark.parametrize("verdict", [FOUND, ABSENT, SIMILAR, UNAVAILABLE, ERROR])
def test_every_verdict_has_a_decision(verdict):
    assert decide(Lookup(verdict), after=SETTLE).action in (CONFIRM, REPLAN, FAIL, ASK_AGAIN, GIVE_UP)
