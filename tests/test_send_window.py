"""Quiet hours, closed weekdays and public holidays in the shop's time zone (pure)."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lead_orchestrator.domain.send_window import SendWindow

CHI = ZoneInfo("America/Chicago")
UTC = dt.timezone.utc


def local(y, m, d, hh, mm=0, tz=CHI) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, tzinfo=tz)


def test_default_window_is_8_to_21_shop_time():
    w = SendWindow("America/Chicago")
    assert not w.allows(local(2027, 3, 2, 7, 59))
    assert w.allows(local(2027, 3, 2, 8, 0))
    assert w.allows(local(2027, 3, 2, 20, 59))
    assert not w.allows(local(2027, 3, 2, 21, 0))
    # The same instant is night in New York and evening in Los Angeles.
    instant = dt.datetime(2027, 3, 3, 4, 30, tzinfo=UTC)
    assert not SendWindow("America/New_York").allows(instant)
    assert SendWindow("America/Los_Angeles").allows(instant)


def test_a_step_in_quiet_hours_waits_for_the_next_opening():
    w = SendWindow("America/Chicago", holiday_country=None)
    assert w.next_allowed_moment(local(2027, 3, 2, 21, 30)) == local(2027, 3, 3, 8, 0)
    assert w.next_allowed_moment(local(2027, 3, 3, 2, 0)) == local(2027, 3, 3, 8, 0)
    moment = local(2027, 3, 3, 12, 34)
    assert w.next_allowed_moment(moment) is moment


def test_closed_weekdays_and_stricter_hours():
    w = SendWindow("America/Chicago", start=dt.time(9, 30), end=dt.time(18, 0),
                   closed_weekdays=frozenset({5, 6}), holiday_country=None)
    friday_evening = local(2027, 3, 5, 18, 0)
    assert w.next_allowed_moment(friday_evening) == local(2027, 3, 8, 9, 30)  # Monday
    assert w.next_allowed_moment(local(2027, 3, 6, 11, 0)) == local(2027, 3, 8, 9, 30)


def test_public_holidays_per_country_and_state():
    thanksgiving_morning = local(2027, 11, 25, 10, 0)
    assert SendWindow("America/Chicago").next_allowed_moment(thanksgiving_morning) == local(2027, 11, 26, 8, 0)
    assert SendWindow("America/Chicago", holiday_country=None).allows(thanksgiving_morning)
    # Texas observes Texas Independence Day (March 2); the federal calendar does not.
    march_2 = local(2027, 3, 2, 10, 0)
    assert SendWindow("America/Chicago").allows(march_2)
    assert not SendWindow("America/Chicago", holiday_subdiv="TX").allows(march_2)


def test_daylight_saving_changes_move_the_opening_in_utc():
    w = SendWindow("America/Chicago", holiday_country=None)
    saturday_night = local(2027, 3, 13, 23, 0)  # clocks go forward at 2:00 on Sunday the 14th
    opens = w.next_allowed_moment(saturday_night)
    assert opens == dt.datetime(2027, 3, 14, 13, 0, tzinfo=UTC)  # 08:00 CDT
    assert w.next_allowed_moment(local(2027, 3, 12, 23, 0)) == dt.datetime(2027, 3, 13, 14, 0, tzinfo=UTC)  # CST


def test_a_shop_closed_every_day_is_a_configuration_error():
    with pytest.raises(ValueError):
        SendWindow("America/Chicago", closed_weekdays=frozenset(range(7))).next_allowed_moment(local(2027, 3, 2, 9))


zones = st.sampled_from(["America/Chicago", "America/New_York", "America/Los_Angeles", "America/Phoenix",
                         "Pacific/Honolulu"])
moments = st.datetimes(min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2030, 12, 31), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(zone=zones, moment=moments, start=st.integers(6 * 4, 11 * 4), length=st.integers(4, 13 * 4),
       closed=st.frozensets(st.integers(0, 6), max_size=3), holidays=st.sampled_from([None, "US"]))
def test_next_allowed_moment_is_never_early_and_is_the_first_opening(zone, moment, start, length, closed, holidays):
    begin = dt.time(start // 4, start % 4 * 15)
    end_minutes = min(start * 15 + length * 15, 23 * 60 + 59)
    w = SendWindow(zone, start=begin, end=dt.time(end_minutes // 60, end_minutes % 60), closed_weekdays=closed,
                   holiday_country=holidays)
    result = w.next_allowed_moment(moment)
    assert result >= moment
    assert w.allows(result)
    if result > moment:
        # Nothing allowed in between: the result is an opening, and the minute before it is not allowed.
        assert result.astimezone(ZoneInfo(zone)).time() == begin
        assert not w.allows(result - dt.timedelta(minutes=1))
        assert not w.allows(moment)
