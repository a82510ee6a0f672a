"""A lead's timeline, for "why didn't this customer get a text?": the lead, each touch
with its status and reason, the consent of its phone and email, and every decision in
order (lead_events, including decisions about its addresses such as a STOP).

Reads run in a tenant transaction like everything else (row-level security applies)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import psycopg

from lead_orchestrator.contact_points import normalize_phone
from lead_orchestrator.lead_state import consent_key


@dataclass
class LeadTimeline:
    lead: dict
    touches: list[dict]
    consent: list[dict]
    events: list[dict]


def find_leads(conn: psycopg.Connection, key: str) -> list[dict]:
    """Leads named by an order id, an estimate number, a phone number or an email."""
    key = key.strip()
    rows = conn.execute("SELECT * FROM leads WHERE order_id = %s OR order_number = %s ORDER BY id DESC",
                        (key, key)).fetchall()
    if rows:
        return rows
    if "@" in key:
        return conn.execute("SELECT * FROM leads WHERE lower(email) = %s ORDER BY id DESC",
                            (consent_key("email", key),)).fetchall()
    phone = normalize_phone(key)
    if phone:
        return conn.execute("SELECT * FROM leads WHERE phone_e164 = %s ORDER BY id DESC", (phone,)).fetchall()
    return []


def contact_address(key: str) -> tuple[str, str] | None:
    if "@" in key:
        return "email", consent_key("email", key)
    phone = normalize_phone(key)
    return ("sms", phone) if phone else None


def lead_timeline(conn: psycopg.Connection, lead: dict) -> LeadTimeline:
    addresses = [a for a in (lead["phone_e164"], consent_key("email", lead["email"]) if lead["email"] else None) if a]
    touches = conn.execute("SELECT * FROM touches WHERE lead_id = %s ORDER BY step, channel", (lead["id"],)).fetchall()
    consent = conn.execute("SELECT * FROM contacts WHERE address = ANY(%s) ORDER BY channel", (addresses,)).fetchall()
    events = conn.execute(
        """SELECT at, kind, lead_id, detail FROM lead_events
            WHERE lead_id = %s OR (lead_id IS NULL AND detail ? 'address' AND detail->>'address' = ANY(%s))
            ORDER BY at, id""",
        (lead["id"], addresses),
    ).fetchall()
    return LeadTimeline(lead, touches, consent, events)


def contact_events(conn: psycopg.Connection, channel: str, address: str) -> tuple[list[dict], list[dict]]:
    """Consent and decisions of an address that has no lead (e.g. a STOP from a stranger)."""
    consent = conn.execute("SELECT * FROM contacts WHERE channel = %s AND address = %s",
                           (channel, address)).fetchall()
    events = conn.execute("SELECT at, kind, lead_id, detail FROM lead_events WHERE detail->>'address' = %s "
                          "ORDER BY at, id", (address,)).fetchall()
    return consent, events


# --- text ------------------------------------------------------------------------------

def _when(moment: dt.datetime | None, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z") if moment else "-"


def _iso(value: str | None, tz: ZoneInfo) -> str:
    return _when(dt.datetime.fromisoformat(value), tz) if value else "-"


def describe(event: dict, tz: ZoneInfo) -> str:
    """One decision in words an operator can read."""
    d, kind = event["detail"] or {}, event["kind"]
    what = f"step {d.get('step')} {d.get('channel', '')}".rstrip() if "step" in d else ""
    reason = d.get("reason")
    if kind == "qualified":
        return f"qualified as a lead (source {d.get('source')}; channels {', '.join(d.get('channels') or []) or 'none'})"
    if kind == "disqualified":
        return f"not a lead: {reason}"
    if kind == "touch_deferred":
        return f"{what} deferred ({reason}) until {_iso(d.get('send_after'), tz)}"
    if kind == "touch_scheduled":
        return f"{what} not sent yet ({reason}); retry at {_iso(d.get('send_after'), tz)}"
    if kind == "touch_sent":
        return f"{what} sent" + (f" ({reason})" if reason else "") + (
            f", provider id {d['message_id']}" if d.get("message_id") else "")
    if kind == "touch_failed":
        return f"{what} failed: {reason}" + (f" (code {d['code']})" if d.get("code") else "")
    if kind == "touch_unknown":
        return (f"{what} outcome unknown ({reason}): the provider may have it; not sent again "
                "unless the provider proves it never took it")
    if kind == "touch_replanned":
        return f"{what} owed again once: the provider has no such message ({d.get('detail') or reason})"
    if kind == "touch_unresolved":
        extra = d.get("detail") if d.get("detail") and d["detail"] not in (reason or "") else None
        return f"{what} outcome stays unknown ({reason}{'; ' + extra if extra else ''})"
    if kind in ("touch_skipped", "touch_cancelled"):
        return f"{what} not sent: {reason}"
    if kind in ("touches_cancelled", "touches_skipped"):
        return f"not sent: {', '.join(d.get('touches') or [])} ({reason})"
    if kind.startswith("lead_"):
        extra = f", {d['touches_cancelled']} pending touch(es) cancelled" if d.get("touches_cancelled") else ""
        return f"lead {kind[5:]}: {reason}{extra}"
    if kind == "contact_opted_out":
        return f"{d.get('channel')} {d.get('address')} opted out ({d.get('source')})"
    if kind == "contact_opted_in":
        return f"{d.get('channel')} {d.get('address')} opted in again ({d.get('source')})"
    if kind == "inbound_reply":
        return f"customer texted: {d.get('body')!r}"
    if kind == "help_requested":
        return "customer texted HELP; answered with the shop's name and phone"
    if kind in ("sms_delivered", "sms_undelivered", "sms_failed"):
        code = f" (error {d['error_code']})" if d.get("error_code") else ""
        return f"{what or 'sms'} {kind[4:]}{code}"
    if kind.startswith("email_"):
        return f"{what or 'email'} {kind[6:]}" + (f": {d['detail']}" if d.get("detail") else "")
    if kind == "first_touch_latency":
        return f"first touch {d.get('seconds')} s after the webhook"
    rest = ", ".join(f"{k}={v}" for k, v in d.items())
    return f"{kind} {rest}".strip()


def format_timeline(shop, t: LeadTimeline) -> str:
    tz = ZoneInfo(shop.time_zone)
    lead = t.lead
    name = " ".join(p for p in (lead["first_name"], lead["last_name"]) if p) or "(no name)"
    lines = [
        f"Lead {lead['id']} of {shop.slug}: order {lead['order_id']} (estimate #{lead['order_number'] or '-'})",
        f"  customer  {name} · {lead['phone_e164'] or 'no SMS'} · {lead['email'] or 'no email'}",
        f"  status    {lead['status']}" + (f" ({lead['status_reason']})" if lead["status_reason"] else "")
        + (f" since {_when(lead['ended_at'], tz)}" if lead["ended_at"] else ""),
        f"  first seen {_when(lead['first_seen_at'], tz)}",
    ]
    for c in t.consent:
        state = "OPTED OUT" if c["opted_out"] else "subscribed"
        lines.append(f"  consent   {c['channel']} {c['address']}: {state} ({c['change_source']}, {_when(c['changed_at'], tz)})")
    lines += ["", "Touches (shop time)", f"  {'step':<5}{'channel':<8}{'status':<11}{'due':<26}{'sent / next':<26}detail"]
    for x in t.touches:
        at = x["sent_at"] if x["status"] == "sent" else (x["send_after"] if x["status"] in ("scheduled", "deferred") else None)
        asking = x["status"] == "unknown" and x.get("resolve_after") and f"asking the provider {_when(x['resolve_after'], tz)}"
        detail = "; ".join(p for p in (x["reason"], asking, x["delivery_status"] and f"delivery {x['delivery_status']}",
                                       x["error_code"] and f"code {x['error_code']}") if p)
        lines.append(f"  {x['step']:<5}{x['channel']:<8}{x['status']:<11}{_when(x['due_at'], tz):<26}"
                     f"{_when(at, tz):<26}{detail}")
    lines += ["", "Decisions (shop time)"]
    for e in t.events:
        lines.append(f"  {_when(e['at'], tz):<26}{describe(e, tz)}")
    return "\n".join(lines)


def format_contact(shop, channel: str, address: str, consent: list[dict], events: list[dict]) -> str:
    tz = ZoneInfo(shop.time_zone)
    lines = [f"No lead of {shop.slug} reaches {address}."]
    for c in consent:
        lines.append(f"  consent {c['channel']}: {'OPTED OUT' if c['opted_out'] else 'subscribed'} "
                     f"({c['change_source']}, {_when(c['changed_at'], tz)})")
    for e in events:
        lines.append(f"  {_when(e['at'], tz):<26}{describe(e, tz)}")
    return "\n".join(lines)
