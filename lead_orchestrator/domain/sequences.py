"""A shop's follow-up sequence: steps with an offset from the lead's creation, a
channel and a template name. Shops override it in `settings.sequence`."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lead_orchestrator.domain.templates import DEFAULT_TEMPLATES, MessageTemplate, TemplateError, validate_template

CHANNELS = ("sms", "email")


@dataclass(frozen=True)
class Step:
    step: int
    offset: dt.timedelta
    channel: str
    template: str

    def as_dict(self) -> dict:
        return {"step": self.step, "offset_minutes": int(self.offset.total_seconds() // 60),
                "channel": self.channel, "template": self.template}


# First touch at once (SMS + email), SMS after 1 hour, email after 1 day, SMS after 3 days.
DEFAULT_SEQUENCE: tuple[Step, ...] = (
    Step(0, dt.timedelta(0), "sms", "first_sms"),
    Step(0, dt.timedelta(0), "email", "first_email"),
    Step(1, dt.timedelta(hours=1), "sms", "followup_sms"),
    Step(2, dt.timedelta(days=1), "email", "followup_email"),
    Step(3, dt.timedelta(days=3), "sms", "last_sms"),
)


def sequence_for(settings: dict) -> tuple[Step, ...]:
    raw = settings.get("sequence")
    if not raw:
        return DEFAULT_SEQUENCE
    return tuple(Step(int(s["step"]), dt.timedelta(minutes=int(s["offset_minutes"])), s["channel"], s["template"])
                 for s in raw)


def template_for(settings: dict, name: str) -> MessageTemplate:
    custom = (settings.get("templates") or {}).get(name)
    if custom:
        return MessageTemplate(body=custom["body"], subject=custom.get("subject"))
    return DEFAULT_TEMPLATES[name]


def validate_sequence(raw: list[dict], templates: dict[str, dict]) -> None:
    """Checks a sequence (and the shop's custom templates) before it is saved; raises
    ValueError naming the first problem. A template that uses a merge field we do not
    provide is refused here, not discovered when a customer's message fails to render."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("a sequence is a non-empty list of steps")
    for name, tpl in templates.items():
        if not isinstance(tpl, dict) or not isinstance(tpl.get("body"), str) or not tpl["body"].strip():
            raise ValueError(f"template {name!r} needs a non-empty body")
        for part in ("subject", "body"):
            if tpl.get(part) is not None:
                try:
                    validate_template(tpl[part])
                except TemplateError as exc:
                    raise ValueError(f"template {name!r} {part}: {exc}") from None
    known = set(DEFAULT_TEMPLATES) | set(templates)
    seen: set[tuple[int, str]] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError(f"each step is an object, not {item!r}")
        missing = {"step", "offset_minutes", "channel", "template"} - set(item)
        if missing:
            raise ValueError(f"step {item.get('step')}: missing {', '.join(sorted(missing))}")
        try:
            number, offset = int(item["step"]), int(item["offset_minutes"])
        except (TypeError, ValueError):
            raise ValueError(f"step {item.get('step')}: step and offset_minutes must be whole numbers") from None
        if number < 0:
            raise ValueError(f"step {number}: step numbers start at 0")
        if item["channel"] not in CHANNELS:
            raise ValueError(f"step {number}: channel must be one of {CHANNELS}")
        if offset < 0:
            raise ValueError(f"step {number}: offset_minutes must be >= 0")
        if item["template"] not in known:
            raise ValueError(f"step {number}: unknown template {item['template']!r}")
        key = (number, item["channel"])
        if key in seen:
            raise ValueError(f"step {number} has two {item['channel']} messages")
        seen.add(key)
