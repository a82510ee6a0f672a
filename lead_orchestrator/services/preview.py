"""`lead-orchestrator preview SLUG`: a shop's sequence rendered for a sample lead, with
when each step would be due and when it would go out under the shop's send rules.
Rendering goes through the same `compose` the sender uses; send times through
`expected_send_times`, which `why` uses for a real lead's pending touches."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from lead_orchestrator.domain.messages import Message, compose, sample_lead
from lead_orchestrator.domain.send_window import SendWindow
from lead_orchestrator.domain.sequences import Step, sequence_for
from lead_orchestrator.store.shops import Shop


@dataclass(frozen=True)
class PreviewItem:
    step: Step
    due: dt.datetime
    goes_out: dt.datetime
    message: Message


@dataclass(frozen=True)
class PlannedTouch:
    """A touch as far as its send time goes: `went_out` is when a touch that is sending,
    sent or unknown was reserved (the moment spacing counts from)."""
    step: int
    channel: str
    status: str
    due: dt.datetime
    send_after: dt.datetime
    went_out: dt.datetime | None = None


GONE = ("sending", "sent", "unknown")  # as the sender counts them for spacing
PENDING = ("scheduled", "deferred")


def expected_send_times(touches: list[PlannedTouch], window: SendWindow,
                        now: dt.datetime) -> dict[tuple[int, str], dt.datetime | None]:
    """When each touch goes (or went) out, by the sender's rules: not before its
    send_after, inside the send window, and no sooner after an earlier step than the
    sequence spaces them (counted from when that step went out). `preview` and `why`
    both answer with this, so they agree. None: it will not go out (skipped, cancelled,
    failed). Daily limits are not foreseen."""
    times: dict[tuple[int, str], dt.datetime | None] = {}
    gone: list[tuple[PlannedTouch, dt.datetime]] = []
    for touch in sorted(touches, key=lambda t: (t.step, t.channel)):
        when = None
        if touch.status in GONE:
            when = touch.went_out
        elif touch.status in PENDING:
            spaced = [at + (touch.due - earlier.due) for earlier, at in gone if earlier.step < touch.step]
            when = window.next_allowed_moment(max([touch.send_after, now, *spaced]))
        times[(touch.step, touch.channel)] = when
        if when is not None:
            gone.append((touch, when))
    return times


def preview_sequence(shop: Shop, created_at: dt.datetime, unsubscribe_url: str) -> list[PreviewItem]:
    window = SendWindow.for_shop(shop)
    lead = sample_lead()
    steps = sorted(sequence_for(shop.settings or {}), key=lambda s: (s.step, s.channel))
    planned = [PlannedTouch(s.step, s.channel, "scheduled", created_at + s.offset, created_at + s.offset)
               for s in steps]
    times = expected_send_times(planned, window, created_at)
    items: list[PreviewItem] = []
    sms_seen = False
    for step in steps:
        message = compose(shop, step, lead, first_sms=step.channel == "sms" and not sms_seen,
                          unsubscribe_url=unsubscribe_url)
        sms_seen = sms_seen or step.channel == "sms"
        items.append(PreviewItem(step, created_at + step.offset, times[(step.step, step.channel)], message))
    return items


def _offset(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes == 0:
        return "at once"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{mins} min" if mins else ""]
    return " ".join(p for p in parts if p) + " after the estimate"


def format_preview(shop: Shop, created_at: dt.datetime, items: list[PreviewItem]) -> str:
    tz = ZoneInfo(shop.time_zone)
    fmt = "%a %Y-%m-%d %H:%M %Z"
    window = SendWindow.for_shop(shop)
    closed = ", ".join(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][d] for d in sorted(window.closed_weekdays))
    lines = [f"{shop.name} ({shop.slug}): sample lead created {created_at.astimezone(tz).strftime(fmt)}",
             f"Send window {window.start:%H:%M}-{window.end:%H:%M} {shop.time_zone}; closed: {closed or 'no weekday'}; "
             f"holidays: {window.holiday_country or 'none'}{'-' + window.holiday_subdiv if window.holiday_subdiv else ''}",
             ""]
    for item in items:
        when = item.goes_out.astimezone(tz).strftime(fmt)
        late = "" if item.goes_out == item.due else f"  (due {item.due.astimezone(tz).strftime(fmt)}: deferred)"
        lines.append(f"== step {item.step.step} · {item.step.channel.upper()} · {_offset(item.step.offset)} · "
                     f"template {item.step.template}")
        lines.append(f"   goes out {when}{late}")
        if item.message.subject:
            lines.append(f"   Subject: {item.message.subject}")
        for name, value in (item.message.headers or {}).items():
            lines.append(f"   {name}: {value}")
        lines += ["   " + line for line in item.message.body.splitlines()] + [""]
    return "\n".join(lines)
