"""CLI commands of the touch-point engine (registered on `lead-orchestrator`):

  sequence show|set|reset SLUG      a shop's follow-up steps (set: --file seq.json)
  templates show|set SLUG           a shop's message templates
  quiet-hours SLUG [options]        send window, closed weekdays, holidays, daily limit
  preview SLUG                      the shop's messages rendered for a sample lead
  templates link SLUG [URL]         the shop's `{{ link }}` merge field (e.g. its booking page)
  why SLUG KEY                      a lead's timeline (by order id, estimate number, phone, email
                                    or name): what was sent, and why not; or an order's inbox events

Everything is validated before it is written: a template that names an unknown merge
field is refused here, never discovered when a customer's message fails to render.
"""
from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg

from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.cli.context import command_box, command_settings
from lead_orchestrator.store.shops import ShopChanges, get_shop, update_shop

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LEGAL_START, LEGAL_END = dt.time(8, 0), dt.time(21, 0)


@contextmanager
def _owner():
    with database_url_for(command_settings()) as (url, _):
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            yield url, conn


def _shop(conn, slug: str):
    shop = get_shop(conn, slug, command_box())
    if shop is None:
        raise click.ClickException(f"no shop named {slug!r}")
    return shop


def _save_settings(conn, slug: str, settings: dict):
    return update_shop(conn, slug, ShopChanges(settings=settings), command_box())


def _templates_using_link(templates: dict) -> list[str]:
    from lead_orchestrator.domain.templates import fields_used

    return sorted(name for name, t in templates.items()
                  if any("link" in fields_used(t.get(part) or "") for part in ("body", "subject")))


def _require_link_if_used(settings: dict, templates: dict) -> None:
    """`{{ link }}` renders the shop's link; without one it would print nothing."""
    using = _templates_using_link(templates)
    if using and not settings.get("link"):
        raise click.ClickException(f"template(s) {', '.join(using)} use {{{{ link }}}} but the shop has no link: "
                                   "set it first with `templates link SLUG URL`")


# --- sequence ---------------------------------------------------------------------------

@click.group(help="Show or change a shop's follow-up sequence.")
def sequence() -> None:
    pass


@sequence.command("show", help="Print the shop's steps (default or custom) and custom templates as JSON.")
@click.argument("slug")
def sequence_show(slug: str) -> None:
    from lead_orchestrator.domain.sequences import sequence_for

    with _owner() as (_, conn):
        shop = _shop(conn, slug)
    custom = "sequence" in (shop.settings or {})
    click.echo(json.dumps({"shop": slug, "custom": custom,
                           "steps": [s.as_dict() for s in sequence_for(shop.settings or {})],
                           "templates": (shop.settings or {}).get("templates", {})}, indent=2))


@sequence.command("set", help="Replace the shop's sequence with the steps in FILE: a JSON list of "
                              "{step, offset_minutes, channel, template}, or {\"steps\": [...], "
                              "\"templates\": {name: {body, subject}}}.")
@click.argument("slug")
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def sequence_set(slug: str, path: Path) -> None:
    from lead_orchestrator.domain.sequences import validate_sequence

    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise click.ClickException(f"{path} is not valid JSON: {exc}") from None
    steps, templates = (raw.get("steps"), raw.get("templates") or {}) if isinstance(raw, dict) else (raw, {})
    with _owner() as (_, conn):
        shop = _shop(conn, slug)
        merged = {**(shop.settings or {}).get("templates", {}), **templates}
        try:
            validate_sequence(steps, merged)
        except ValueError as exc:
            raise click.ClickException(f"sequence refused: {exc}") from None
        _require_link_if_used(shop.settings or {}, templates)
        normalized = [{"step": int(s["step"]), "offset_minutes": int(s["offset_minutes"]),
                       "channel": s["channel"], "template": s["template"]} for s in steps]
        _save_settings(conn, slug, {**(shop.settings or {}), "sequence": normalized, "templates": merged})
    click.echo(f"saved {len(normalized)} step(s) for {slug}; new leads follow it, existing leads keep their "
               "planned steps (a removed step is cancelled when it comes due)")


@sequence.command("reset", help="Go back to the default sequence.")
@click.argument("slug")
def sequence_reset(slug: str) -> None:
    with _owner() as (_, conn):
        shop = _shop(conn, slug)
        _save_settings(conn, slug, {k: v for k, v in (shop.settings or {}).items() if k != "sequence"})
    click.echo(f"{slug} uses the default sequence again")


# --- templates --------------------------------------------------------------------------

@click.group(help="Show or change a shop's message templates (Jinja, sandboxed).")
def templates() -> None:
    pass


@templates.command("show", help="Print every template the shop can use (default or its own), the merge "
                                "fields and the shop's link, as JSON.")
@click.argument("slug")
def templates_show(slug: str) -> None:
    from lead_orchestrator.domain.templates import DEFAULT_TEMPLATES, MERGE_FIELDS

    with _owner() as (_, conn):
        shop = _shop(conn, slug)
    custom = (shop.settings or {}).get("templates", {})
    names = sorted(set(DEFAULT_TEMPLATES) | set(custom))
    out = {name: {**({"subject": DEFAULT_TEMPLATES[name].subject, "body": DEFAULT_TEMPLATES[name].body}
                     if name in DEFAULT_TEMPLATES else {}), **custom.get(name, {}),
                  "source": "shop" if name in custom else "default"} for name in names}
    click.echo(json.dumps({"merge_fields": sorted(MERGE_FIELDS), "link": (shop.settings or {}).get("link"),
                           "templates": out}, indent=2))


@templates.command("set", help="Add or replace template NAME (use it in a sequence step).")
@click.argument("slug")
@click.argument("name")
@click.option("--body", help="Template text, e.g. 'Hi {{ first_name }}, ...'")
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--subject", help="Email subject (email templates).")
def templates_set(slug: str, name: str, body: str | None, body_file: Path | None, subject: str | None) -> None:
    from lead_orchestrator.domain.sequences import validate_sequence

    if (body is None) == (body_file is None):
        raise click.UsageError("give exactly one of --body or --body-file")
    text = body if body is not None else body_file.read_text()
    template = {"body": text, **({"subject": subject} if subject else {})}
    with _owner() as (_, conn):
        shop = _shop(conn, slug)
        merged = {**(shop.settings or {}).get("templates", {}), name: template}
        steps = (shop.settings or {}).get("sequence") or [{"step": 0, "offset_minutes": 0, "channel": "sms",
                                                           "template": name}]
        try:
            validate_sequence(steps, merged)
        except ValueError as exc:
            raise click.ClickException(f"template refused: {exc}") from None
        _require_link_if_used(shop.settings or {}, {name: template})
        _save_settings(conn, slug, {**(shop.settings or {}), "templates": merged})
    click.echo(f"saved template {name!r} for {slug}")


@templates.command("link", help="Show, set or remove the shop's link, the `{{ link }}` merge field (e.g. its "
                                "online booking page): an http(s) URL. A template that uses it cannot be "
                                "saved while the shop has none, and it cannot be removed while one uses it.")
@click.argument("slug")
@click.argument("url", required=False)
@click.option("--remove", is_flag=True, help="Remove the shop's link.")
def templates_link(slug: str, url: str | None, remove: bool) -> None:
    from urllib.parse import urlsplit

    if url and remove:
        raise click.UsageError("give a URL or --remove, not both")
    if url:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url.strip()):
            raise click.BadParameter(f"{url!r} is not an http(s) URL with a host", param_hint="URL")
    with _owner() as (_, conn):
        shop = _shop(conn, slug)
        settings = dict(shop.settings or {})
        if remove:
            if using := _templates_using_link(settings.get("templates", {})):
                raise click.ClickException(f"template(s) {', '.join(using)} use {{{{ link }}}}: change them first")
            settings.pop("link", None)
            _save_settings(conn, slug, settings)
        elif url:
            settings["link"] = url.strip()
            _save_settings(conn, slug, settings)
    click.echo(json.dumps({"shop": slug, "link": settings.get("link")}, indent=2))


# --- send rules ------------------------------------------------------------------------

def _time(value: str | None) -> dt.time | None:
    if value is None:
        return None
    try:
        return dt.time.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time (HH:MM)") from None


def _weekdays(value: str) -> list[int]:
    if value.strip().lower() in ("", "none"):
        return []
    days = [d.strip().lower()[:3] for d in value.split(",")]
    bad = [d for d in days if d not in WEEKDAYS]
    if bad:
        raise click.BadParameter(f"unknown weekday(s) {', '.join(bad)}; use mon,tue,...,sun or none")
    return sorted({WEEKDAYS.index(d) for d in days})


def _holidays(value: str) -> tuple[str | None, str | None]:
    import holidays

    if value.strip().lower() == "none":
        return None, None
    country, _, subdiv = value.strip().upper().partition("-")
    try:
        holidays.country_holidays(country, subdiv=subdiv or None, years=2026)
    except (NotImplementedError, KeyError):
        raise click.BadParameter(f"the holidays library has no calendar {value!r} (e.g. US, US-FL, CA-ON)") from None
    return country, subdiv or None


@click.command("quiet-hours", help="Show or set when a shop's messages may go out (shop time). "
                                   "Outside the window, on closed weekdays and public holidays, steps wait "
                                   "for the next allowed moment: never dropped, never sent early.")
@click.argument("slug")
@click.option("--start", help="Window opens, HH:MM (US rule: not before 08:00).")
@click.option("--end", help="Window closes, HH:MM (US rule: not after 21:00; Florida 20:00).")
@click.option("--closed-days", help="Weekdays without messages, e.g. sun or sat,sun; none to clear.")
@click.option("--holidays", "holiday_calendar", help="Public holiday calendar: US, US-FL, ...; none to disable.")
@click.option("--max-sms-per-24h", type=click.IntRange(0, 100), help="At most N texts per number per 24 h (0: no limit).")
@click.option("--allow-outside-legal-hours", is_flag=True, help="Accept a window wider than 08:00-21:00 (testing only).")
def quiet_hours(slug, start, end, closed_days, holiday_calendar, max_sms_per_24h, allow_outside_legal_hours) -> None:
    with _owner() as (_, conn):
        shop = _shop(conn, slug)
        new_start, new_end = _time(start) or shop.send_window_start, _time(end) or shop.send_window_end
        if new_start >= new_end:
            raise click.BadParameter("the window must open before it closes")
        if (new_start < LEGAL_START or new_end > LEGAL_END) and not allow_outside_legal_hours:
            raise click.ClickException("a window wider than 08:00-21:00 breaks the US quiet-hours rule "
                                       "(47 CFR 64.1200(c)(1)); pass --allow-outside-legal-hours to insist")
        settings = dict(shop.settings or {})
        if closed_days is not None:
            settings["closed_weekdays"] = _weekdays(closed_days)
        if holiday_calendar is not None:
            settings["holiday_country"], settings["holiday_subdiv"] = _holidays(holiday_calendar)
        if max_sms_per_24h is not None:
            settings["max_sms_per_24h"] = max_sms_per_24h or None
        shop = update_shop(conn, slug, ShopChanges(send_window_start=new_start, send_window_end=new_end,
                                                  settings=settings), command_box())
    s = shop.settings or {}
    click.echo(json.dumps({
        "shop": slug, "time_zone": shop.time_zone,
        "window": f"{shop.send_window_start:%H:%M}-{shop.send_window_end:%H:%M}",
        "closed_days": [WEEKDAYS[d] for d in s.get("closed_weekdays", [])],
        "holidays": "-".join(p for p in (s.get("holiday_country", "US"), s.get("holiday_subdiv")) if p) or "none",
        "max_sms_per_24h": s.get("max_sms_per_24h"),
    }, indent=2))


# --- preview and why ----------------------------------------------------------------------

@click.command(help="Render a shop's messages for a sample lead, with when each would go out.")
@click.argument("slug")
@click.option("--at", "created", help="When the sample estimate is created, shop time "
                                      "(YYYY-MM-DDTHH:MM); default now.")
def preview(slug: str, created: str | None) -> None:
    from zoneinfo import ZoneInfo

    from lead_orchestrator.services.preview import format_preview, preview_sequence

    with _owner() as (_, conn):
        shop = _shop(conn, slug)
    if created:
        try:
            moment = dt.datetime.fromisoformat(created)
        except ValueError:
            raise click.BadParameter(f"{created!r} is not YYYY-MM-DDTHH:MM") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(shop.time_zone))
    else:
        moment = dt.datetime.now(dt.timezone.utc)
    link = f"{command_settings().public_base_url}/unsubscribe/<token>"
    click.echo(format_preview(shop, moment, preview_sequence(shop, moment, link)))


@click.command(help="Why did (or didn't) a customer get a message? Prints the timeline of the lead(s) "
                    "named by an order id, estimate number, phone number, email or customer name; for an "
                    "order with no lead, where its inbox events stand (waiting, parked, dead) and what "
                    "happens next.")
@click.argument("slug")
@click.argument("key")
def why(slug: str, key: str) -> None:
    from lead_orchestrator.store.db import Database
    from lead_orchestrator.services.timeline import (MAX_TIMELINES, contact_address, contact_events, dispatcher_alive,
                                            find_leads, format_contact, format_more, format_order_events,
                                            format_timeline, lead_timeline, order_inbox_events)

    with _owner() as (url, conn):
        shop = _shop(conn, slug)
        db = Database(url, min_size=1, max_size=1, name="cli-why").open()
        try:
            with db.tenant_tx(shop.id) as tx:
                now = dt.datetime.now(dt.timezone.utc)
                alive = dispatcher_alive(tx)
                leads = find_leads(tx, key)
                texts = [format_timeline(shop, lead_timeline(tx, lead), now=now, dispatcher_alive=alive)
                         for lead in leads[:MAX_TIMELINES]]
                if len(leads) > MAX_TIMELINES:
                    texts.append(format_more(leads[MAX_TIMELINES:]))
                if not leads and (inbox := order_inbox_events(tx, key.strip())):
                    texts.append(format_order_events(shop, key.strip(), inbox, now=now, dispatcher_alive=alive))
                elif not leads and (address := contact_address(key)):
                    consent, events = contact_events(tx, *address)
                    if consent or events:
                        texts.append(format_contact(shop, *address, consent, events))
        finally:
            db.close()
    if not texts:
        raise click.ClickException(f"no lead, order or contact of {slug} matches {key!r}")
    click.echo("\n\n".join(texts))


COMMANDS = (sequence, templates, quiet_hours, preview, why)
