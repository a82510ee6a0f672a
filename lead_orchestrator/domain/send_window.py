"""When a message may go out: the shop's daily send window (quiet hours outside it),
closed weekdays and public holidays, all in the shop's time zone.

`next_allowed_moment` never returns a time earlier than asked: a step that falls in
quiet hours is deferred to the next opening, never dropped and never sent early.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays


@dataclass(frozen=True)
class SendWindow:
    time_zone: str = "America/Chicago"
    start: dt.time = dt.time(8, 0)
    end: dt.time = dt.time(21, 0)
    closed_weekdays: frozenset[int] = field(default_factory=frozenset)  # Monday=0 … Sunday=6
    holiday_country: str | None = "US"
    holiday_subdiv: str | None = None

    @classmethod
    def for_shop(cls, shop) -> "SendWindow":
        s = shop.settings or {}
        return cls(
            time_zone=shop.time_zone,
            start=shop.send_window_start,
            end=shop.send_window_end,
            closed_weekdays=frozenset(s.get("closed_weekdays", ())),
            holiday_country=s.get("holiday_country", "US"),
            holiday_subdiv=s.get("holiday_subdiv"),
        )

    def is_open_day(self, day: dt.date) -> bool:
        if day.weekday() in self.closed_weekdays:
            return False
        return not (self.holiday_country and day in _holidays(self.holiday_country, self.holiday_subdiv, day.year))

    def allows(self, moment: dt.datetime) -> bool:
        local = moment.astimezone(ZoneInfo(self.time_zone))
        return self.is_open_day(local.date()) and self.start <= local.time() < self.end

    def next_allowed_moment(self, moment: dt.datetime) -> dt.datetime:
        """`moment` itself if allowed, else the next opening of the window (UTC)."""
        tz = ZoneInfo(self.time_zone)
        local = moment.astimezone(tz)
        for offset in range(0, 370):
            day = local.date() + dt.timedelta(days=offset)
            if not self.is_open_day(day):
                continue
            opens = dt.datetime.combine(day, self.start, tzinfo=tz)
            closes = dt.datetime.combine(day, self.end, tzinfo=tz)
            if offset == 0 and opens <= local < closes:
                return moment
            if local < opens:
                return opens.astimezone(dt.timezone.utc)
        raise ValueError("no open day within a year: check the shop's closed days")


@lru_cache(maxsize=64)
def _holidays(country: str, subdiv: str | None, year: int):
    return holidays.country_holidays(country, subdiv=subdiv, years=year)
