"""`lead-orchestrator status [SHOP] [--json]`: per shop, what is waiting and what is
wrong: active leads, messages scheduled or deferred and the next send, inbox events
pending / parked / dead, the CRM poll's health, the last webhook seen; and whether the
dispatcher (the fast path) is alive.

It reads `analytics.shop_health` as the read-only analyst role, the same view analysts
query, so the command cannot change anything."""
from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import click

from lead_orchestrator.store.analyst_role import analyst_connection
from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.cli.context import command_settings
from lead_orchestrator.services.timeline import shop_time

# A pending event older than this is waiting for something, not just in the queue.
SLOW_PENDING = dt.timedelta(minutes=1)


def read_status(conn, slug: str | None = None) -> dict:
    rows = conn.execute("SELECT h.*, s.crm FROM analytics.shop_health h JOIN analytics.shops s USING (shop_id) "
                        "WHERE %(slug)s::text IS NULL OR h.shop = %(slug)s ORDER BY h.shop", {"slug": slug}).fetchall()
    head = conn.execute("SELECT fast_path_alive() AS alive, now() AS now").fetchone()
    return {"generated_at": head["now"], "dispatcher_alive": head["alive"],
            "shops": [shop_status(row, head["now"]) for row in rows]}


def shop_status(row: dict, now: dt.datetime) -> dict:
    """One shop's figures, grouped, and the problems they show."""
    status = {
        "shop": row["shop"], "name": row["name"], "crm": row["crm"], "time_zone": row["time_zone"],
        "active": row["active"],
        "leads": {"active": row["active_leads"]},
        "messages": {"scheduled": row["messages_scheduled"], "deferred": row["messages_deferred"],
                     "next_send_at": row["next_send_at"], "sending": row["messages_sending"],
                     "unknown": row["unknown_sends"]},
        "events": {"pending": row["events_pending"], "processing": row["events_processing"],
                   "parked": row["events_parked"], "dead": row["events_dead"],
                   "oldest_pending_at": row["oldest_pending_at"], "parked_since": row["parked_since"],
                   "oldest_dead_at": row["oldest_dead_at"]},
        "poll": {"health": row["poll_health"], "last_polled_at": row["poll_last_polled_at"],
                 "last_success_at": row["poll_last_success_at"],
                 "consecutive_errors": row["poll_consecutive_errors"], "last_error": row["poll_last_error"],
                 "last_error_at": row["poll_last_error_at"], "next_poll_at": row["poll_next_at"]},
        "last_webhook_at": row["last_webhook_at"], "last_poll_event_at": row["last_poll_event_at"],
    }
    status["problems"] = problems(status, now)
    return status


def problems(s: dict, now: dt.datetime) -> list[str]:
    """What an operator should look at, in words (no I/O; tested on constructed figures)."""
    found = []
    poll, events, messages = s["poll"], s["events"], s["messages"]
    if poll["health"] == "unauthorized" and s.get("crm") == "tekmetric":
        found.append("Tekmetric refuses the partner app's credentials, or the shop left the app's scope: fix them "
                     f"with `crm-app set tekmetric …`, or the shop id with `shops update {s['shop']} "
                     "--tekmetric-shop-id …`")
    elif poll["health"] == "unauthorized":
        found.append("ShopMonkey refuses the shop's API key: fix it with `shops update "
                     f"{s['shop']} --shopmonkey-api-key …`")
    elif poll["health"] == "failing":
        found.append(f"the CRM poll is failing ({poll['consecutive_errors']} error(s) in a row): {poll['last_error']}")
    if events["parked"]:
        found.append(f"{events['parked']} event(s) parked, waiting for the shop's CRM credentials")
    if events["dead"]:
        found.append(f"{events['dead']} dead event(s): `why {s['shop']} ORDER_ID` says why; "
                     f"replay with `replay {s['shop']} --order ORDER_ID`")
    if events["oldest_pending_at"] and now - events["oldest_pending_at"] > SLOW_PENDING:
        waited = int((now - events["oldest_pending_at"]).total_seconds())
        found.append(f"the oldest pending event has waited {waited} s")
    if messages["unknown"]:
        found.append(f"{messages['unknown']} send(s) with an unknown outcome (never re-sent automatically)")
    return found


# --- text -----------------------------------------------------------------------------------

def _ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return ""
    seconds = int((now - moment).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    amount = (f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200
              else f"{seconds // 3600} h" if seconds < 172800 else f"{seconds // 86400} d")
    return f" (in {amount})" if future else f" ({amount} ago)"


def _at(moment: dt.datetime | None, tz: ZoneInfo, now: dt.datetime, none: str = "never") -> str:
    return shop_time(moment, tz) + _ago(moment, now) if moment else none


def format_status(status: dict) -> str:
    now = status["generated_at"]
    lines = ["Dispatcher (fast path): " + (
        "alive" if status["dispatcher_alive"] else
        "NOT RUNNING: new events wait for the inbox sensor's ingest runs (seconds instead of a fraction of one)")]
    if not status["shops"]:
        lines.append("no shops yet")
    for s in status["shops"]:
        tz = ZoneInfo(s["time_zone"])
        m, e, p = s["messages"], s["events"], s["poll"]
        poll = p["health"] + (f" ({p['consecutive_errors']} error(s) in a row: {p['last_error']})"
                              if p["health"] in ("failing", "unauthorized") else "")
        lines += [
            "",
            f"{s['shop']} · {s['name']} · {s['time_zone']}" + ("" if s["active"] else " · INACTIVE"),
            f"  leads      {s['leads']['active']} active",
            f"  messages   {m['scheduled']} scheduled, {m['deferred']} deferred"
            + (f", {m['sending']} sending" if m["sending"] else "")
            + f"; next {_at(m['next_send_at'], tz, now, 'none')}",
            f"  inbox      {e['pending']} pending, {e['processing']} processing, {e['parked']} parked, "
            f"{e['dead']} dead" + (f"; oldest pending {_at(e['oldest_pending_at'], tz, now)}"
                                   if e["oldest_pending_at"] else ""),
            f"  CRM poll   {poll}; last success {_at(p['last_success_at'], tz, now)}",
            f"  webhooks   last seen {_at(s['last_webhook_at'], tz, now)}",
            f"  unknown    {m['unknown']} send(s) with an unknown outcome",
        ]
        lines += [f"  ! {problem}" for problem in s["problems"]]
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


@click.command(help="Per shop: active leads, messages scheduled/deferred and the next send, inbox events "
                    "pending/parked/dead, CRM poll health, last webhook; and whether the dispatcher is "
                    "alive. Read-only (as the analyst role).")
@click.argument("shop", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document for machines (times in UTC).")
def status(shop: str | None, as_json: bool) -> None:
    with database_url_for(command_settings()) as (url, _):
        with analyst_connection(url) as conn:
            found = read_status(conn, shop)
    if shop and not found["shops"]:
        raise click.ClickException(f"no shop named {shop!r}")
    click.echo(json.dumps(found, default=_json_default, indent=2) if as_json else format_status(found))
