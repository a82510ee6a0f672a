"""A lead's timeline, for "why didn't this customer get a text?": the lead, each touch
with its status, reason and (while pending) when it is expected to go out, the consent of
its phone and email, and one list in time order of what happened: the estimate's
creation, our first sight of it, every decision (lead_events, including decisions about
its addresses such as a STOP) and the order's inbox events that are still waiting or
were given up.

An order whose inbox events never made a lead (waiting, parked for credentials, dead) is
found too, with why and what happens next.

Reads run in a tenant transaction like everything else (row-level security applies)."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import psycopg

from lead_orchestrator.domain.contact_points import normalize_phone
from lead_orchestrator.store.lead_state import consent_key
from lead_orchestrator.store.touches import Touch, lead_touches
from lead_orchestrator.services.preview import PlannedTouch, expected_send_times
from lead_orchestrator.domain.send_window import SendWindow

# Past this many matching leads (a common name), the rest are listed, not printed.
MAX_TIMELINES = 5
# A claim older than this belonged to a process that died; claim_inbox_events takes it back.
STALE_CLAIM = dt.timedelta(minutes=5)
# Spacing that moves a send by less than this is not worth a word (times show minutes).
SPACING_WORTH_SAYING = dt.timedelta(minutes=1)


@dataclass
class LeadTimeline:
    lead: dict
    touches: list[Touch]
    consent: list[dict]
    events: list[dict]
    inbox: list[dict] = field(default_factory=list)


def find_leads(conn: psycopg.Connection, key: str) -> list[dict]:
    """Leads named by an order id, an estimate number, a phone number, an email or the
    customer's name (whole or in part, any case), newest first."""
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
    if re.search(r"[^\W\d_]", key):
        return find_leads_by_name(conn, key)
    return []


def find_leads_by_name(conn: psycopg.Connection, name: str) -> list[dict]:
    words = [re.sub(r"([\\%_])", r"\\\1", w) for w in name.lower().split()]
    return conn.execute(
        """SELECT * FROM leads WHERE lower(concat_ws(' ', first_name, last_name)) LIKE %s
            ORDER BY lower(concat_ws(' ', first_name, last_name)) = %s DESC, id DESC LIMIT 100""",
        ("%" + "%".join(words) + "%", " ".join(name.lower().split())),
    ).fetchall()


def contact_address(key: str) -> tuple[str, str] | None:
    if "@" in key:
        return "email", consent_key("email", key)
    phone = normalize_phone(key)
    return ("sms", phone) if phone else None


def order_inbox_events(conn: psycopg.Connection, order_id: str) -> list[dict]:
    return conn.execute(
        """SELECT id, source, operation, status, outcome, error, attempts, received_at, available_at,
                  claimed_by, claimed_at, status_changed_at
             FROM inbox_events WHERE table_name = 'order' AND object_id = %s ORDER BY id""",
        (order_id,),
    ).fetchall()


def lead_timeline(conn: psycopg.Connection, lead: dict) -> LeadTimeline:
    addresses = [a for a in (lead["phone_e164"], consent_key("email", lead["email"]) if lead["email"] else None) if a]
    touches = lead_touches(conn, lead["id"])
    consent = conn.execute("SELECT * FROM contacts WHERE address = ANY(%s) ORDER BY channel", (addresses,)).fetchall()
    events = conn.execute(
        """SELECT id, at, kind, lead_id, detail FROM lead_events
            WHERE lead_id = %s OR (lead_id IS NULL AND detail ? 'address' AND detail->>'address' = ANY(%s))
            ORDER BY at, id""",
        (lead["id"], addresses),
    ).fetchall()
    return LeadTimeline(lead, touches, consent, events, order_inbox_events(conn, lead["order_id"]))


def contact_events(conn: psycopg.Connection, channel: str, address: str) -> tuple[list[dict], list[dict]]:
    """Consent and decisions of an address that has no lead (e.g. a STOP from a stranger)."""
    consent = conn.execute("SELECT * FROM contacts WHERE channel = %s AND address = %s",
                           (channel, address)).fetchall()
    events = conn.execute("SELECT id, at, kind, lead_id, detail FROM lead_events WHERE detail->>'address' = %s "
                          "ORDER BY at, id", (address,)).fetchall()
    return consent, events


def dispatcher_alive(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT fast_path_alive() AS alive").fetchone()["alive"]


# --- words --------------------------------------------------------------------------------

def shop_time(moment: dt.datetime | None, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z") if moment else "-"


def _iso(value: str | None, tz: ZoneInfo) -> str:
    return shop_time(dt.datetime.fromisoformat(value), tz) if value else "-"


def _seconds(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


# Why qualification left a channel out (`notes` of the qualified/disqualified decision).
_REACH_NOTES = {
    "no_phone": "no phone number on file", "no_opt_in": "no SMS opt-in", "invalid_number": "invalid number",
    "prefers_email": "the customer prefers email", "no_email": "no email address on file",
    "unsubscribed": "not subscribed to email", "invalid_address": "invalid email address",
    "prefers_sms": "the customer prefers SMS", "no_primary": "several on file, none marked primary",
}


def reach_notes(events: list[dict]) -> dict[str, str]:
    """Channel -> why it is not used, from the latest qualification decision."""
    decided = [e for e in events if e["kind"] in ("qualified", "disqualified")]
    notes = {}
    for note in (decided[-1]["detail"].get("notes") or []) if decided else []:
        channel, _, why = note.partition(":")
        kind = re.fullmatch(r"not_mobile\((.*)\)", why)
        notes[channel] = f"{kind.group(1).lower()} number, not mobile" if kind else _REACH_NOTES.get(why, why)
    return notes


def _no_channel_words(notes: dict[str, str]) -> str:
    return "; ".join(f"no {'SMS' if c == 'sms' else c}: {why}" for c, why in sorted(notes.items()))


def _with_note(reason: str | None, notes: dict[str, str]) -> str | None:
    """`no_contact:sms` with the recorded cause, e.g. `no_contact:sms (landline number, not mobile)`."""
    channel = reason[len("no_contact:"):] if reason and reason.startswith("no_contact:") else None
    return f"{reason} ({notes[channel]})" if channel in notes else reason


def _found_by(source: str | None) -> str:
    return {"poll": "the poll found it", "webhook": "the webhook arrived"}.get(source or "", "it was stored")


def describe(event: dict, tz: ZoneInfo, lead: dict | None = None, notes: dict[str, str] | None = None) -> str:
    """One decision in words an operator can read. `lead` lets a latency say what it was
    measured from; `notes` (reach_notes) say why a channel had no address."""
    d, kind = event["detail"] or {}, event["kind"]
    what = f"step {d.get('step')} {d.get('channel', '')}".rstrip() if "step" in d else ""
    reason = _with_note(d.get("reason"), notes or {})
    if kind == "qualified":
        missing = _no_channel_words(reach_notes([event]))
        return (f"qualified as a lead (source {d.get('source')}; channels {', '.join(d.get('channels') or []) or 'none'}"
                + (f"; {missing}" if missing else "") + ")")
    if kind == "disqualified":
        missing = _no_channel_words(reach_notes([event]))
        return f"not a lead: {reason}" + (f" ({missing})" if missing else "")
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
    if kind == "inbound_reply" and d.get("channel") == "email":
        return f"customer emailed from {d.get('address')} (subject {d.get('subject')!r}): {d.get('body')!r}"
    if kind == "inbound_reply":
        return f"customer texted: {d.get('body')!r}"
    if kind == "inbound_auto_reply":
        return f"automatic email from {d.get('address')} ({reason}): not a reply, the sequence goes on"
    if kind.startswith("reply_forward"):
        outcome = {"reply_forwarded": "forwarded to", "reply_forward_failed": "could not be forwarded to",
                   "reply_forward_unknown": "may have been forwarded (outcome unknown, not re-sent) to",
                   "reply_forward_retry": "not forwarded yet (refused for now; retried when SendGrid posts it "
                                          "again) to"}.get(kind, kind)
        return f"customer's email {outcome} {d.get('to')}" + (f" ({reason})" if reason else "") + (
            f", provider id {d['message_id']}" if d.get("message_id") else "")
    if kind == "help_requested":
        return "customer texted HELP; answered with the shop's name and phone"
    if kind in ("sms_delivered", "sms_undelivered", "sms_failed"):
        code = f" (error {d['error_code']})" if d.get("error_code") else ""
        return f"{what or 'sms'} {kind[4:]}{code}"
    if kind.startswith("email_"):
        return f"{what or 'email'} {kind[6:]}" + (f": {d['detail']}" if d.get("detail") else "")
    if kind == "first_touch_latency":
        text = f"first touch {d.get('seconds')} s after {_found_by(lead and lead['source'])}"
        if lead and lead["order_created_at"] and d.get("seconds") is not None:
            # The same instant, measured from the estimate's creation instead of our first sight.
            waited = lead["first_seen_at"] - lead["order_created_at"] + dt.timedelta(seconds=float(d["seconds"]))
            text += f" ({_seconds(waited)} after the estimate was created)"
        return text
    rest = ", ".join(f"{k}={v}" for k, v in d.items())
    return f"{kind} {rest}".strip()


def describe_inbox_event(event: dict, shop, tz: ZoneInfo, order_id: str, *, now: dt.datetime,
                         dispatcher_alive: bool) -> str:
    """Where an inbox event of the order stands, and what happens to it next."""
    seen = {"webhook": "webhook received", "poll": "found by the poll"}.get(event["source"], "stored")
    status, error = event["status"], event["error"]
    if status == "done":
        return f"{seen}: done ({event['outcome']})" + (f": {error}" if error else "")
    if status == "pending":
        if event["attempts"] and event["available_at"] > now:
            return (f"{seen}: pending, tried {event['attempts']} time(s), last error: {error}; "
                    f"next try at {shop_time(event['available_at'], tz)}")
        waiting = ("the dispatcher" if dispatcher_alive else
                   "the inbox sensor's next ingest run (no dispatcher is running)")
        return f"{seen}: pending, waiting for {waiting}" + (f"; last error: {error}" if error else "")
    if status == "processing":
        text = f"{seen}: being processed since {shop_time(event['claimed_at'], tz)} by {event['claimed_by']}"
        if event["claimed_at"] and now - event["claimed_at"] > STALE_CLAIM:
            text += "; that process has not finished it: it goes back to the queue"
        return text
    since = shop_time(event["status_changed_at"], tz)
    if status == "parked":
        return (f"{seen}: parked since {since}: {error}; released when the key is updated "
                f"({shop.credentials_fix()}) or the poll sees it work again")
    if status == "dead":
        return (f"{seen}: dead since {since}: {error}; replay with `./dev cli replay {shop.slug} --order "
                f"{order_id}` (a new sighting by the poll also revives it)")
    return f"{seen}: {status}" + (f": {error}" if error else "")


# --- text ------------------------------------------------------------------------------------

def _line_time(moment: dt.datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M:%S %Z")


def _in_time_order(entries: list[tuple[dt.datetime, int, str]], tz: ZoneInfo) -> list[str]:
    """Lines sorted by time, to the second shown; within one second by kind (the estimate,
    its sighting, the qualification, then what followed), since some decisions are dated
    by the moment they concern (a step planned in quiet hours: the first sighting) while
    the qualification that made them is dated a few milliseconds later."""
    ordered = sorted(enumerate(entries), key=lambda e: (e[1][0].replace(microsecond=0), e[1][1], e[1][0], e[0]))
    return [f"  {_line_time(at, tz):<28}{text}" for _, (at, _, text) in ordered]


def format_timeline(shop, t: LeadTimeline, *, now: dt.datetime | None = None, dispatcher_alive: bool = True) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    tz = ZoneInfo(shop.time_zone)
    lead = t.lead
    name = " ".join(p for p in (lead["first_name"], lead["last_name"]) if p) or "(no name)"
    notes = reach_notes(t.events)
    sms = lead["phone_e164"] or "no SMS" + (f" ({notes['sms']})" if "sms" in notes else "")
    email = lead["email"] or "no email" + (f" ({notes['email']})" if "email" in notes else "")
    lines = [
        f"Lead {lead['id']} of {shop.slug}: order {lead['order_id']} (estimate #{lead['order_number'] or '-'})",
        f"  customer   {name} · {sms} · {email}",
        f"  status     {lead['status']}" + (f" ({lead['status_reason']})" if lead["status_reason"] else "")
        + (f" since {shop_time(lead['ended_at'], tz)}" if lead["ended_at"] else ""),
        f"  first seen {shop_time(lead['first_seen_at'], tz)}: {_sighting(lead)}",
    ]
    for c in t.consent:
        state = "OPTED OUT" if c["opted_out"] else "subscribed"
        lines.append(f"  consent    {c['channel']} {c['address']}: {state} ({c['change_source']}, "
                     f"{shop_time(c['changed_at'], tz)})")
    lines += ["", "Touches (shop time, in the order they go out)",
              f"  {'step':<5}{'channel':<8}{'status':<11}{'due':<26}{'sent / next':<26}detail"]
    lines += _touch_rows(shop, t.touches, notes, tz, now)
    entries = [(lead["order_created_at"], 0, f"estimate #{lead['order_number'] or '-'} created in the CRM")] \
        if lead["order_created_at"] else []
    entries.append((lead["first_seen_at"], 1, f"first seen: {_found_by(lead['source'])}"))
    for e in t.events:
        rank = 2 if e["kind"] in ("qualified", "disqualified") else 3
        entries.append((e["at"], rank, describe(e, tz, lead, notes)))
    for e in t.inbox:
        if e["status"] != "done":
            entries.append((e["received_at"], 1, describe_inbox_event(e, shop, tz, lead["order_id"], now=now,
                                                                      dispatcher_alive=dispatcher_alive)))
    lines += ["", "Timeline (shop time)"] + _in_time_order(entries, tz)
    return "\n".join(lines)


def _sighting(lead: dict) -> str:
    how = {"poll": "the backup poll found it (no webhook came first)", "webhook": "by webhook"}.get(
        lead["source"], f"source {lead['source']}")
    if lead["order_created_at"]:
        how += f", {_seconds(lead['first_seen_at'] - lead['order_created_at'])} after the estimate was created"
    return how


def _touch_rows(shop, touches: list[Touch], notes: dict[str, str], tz: ZoneInfo, now: dt.datetime) -> list[str]:
    planned = [PlannedTouch(x.step, x.channel, x.status, x.due_at, x.send_after, x.reserved_at or x.sent_at)
               for x in touches]
    expected = expected_send_times(planned, SendWindow.for_shop(shop), now)
    rows = []
    for x in touches:
        at = x.sent_at if x.status == "sent" else expected.get((x.step, x.channel)) \
            if x.status in ("scheduled", "deferred") else None
        reason = _with_note(x.reason, notes)
        if x.status in ("scheduled", "deferred") and at and at - x.send_after >= SPACING_WORTH_SAYING:
            reason = (reason + ", then " if reason else "") + "spacing after an earlier step"
        asking = x.status == "unknown" and x.resolve_after and \
            f"asking the provider {shop_time(x.resolve_after, tz)}"
        detail = "; ".join(p for p in (reason, asking, x.delivery_status and f"delivery {x.delivery_status}",
                                       x.error_code and f"code {x.error_code}") if p)
        rows.append(((at or x.due_at, x.step, x.channel),
                     f"  {x.step:<5}{x.channel:<8}{x.status:<11}{shop_time(x.due_at, tz):<26}"
                     f"{shop_time(at, tz):<26}{detail}"))
    return [text for _, text in sorted(rows, key=lambda r: r[0])]


def format_order_events(shop, order_id: str, inbox: list[dict], *, now: dt.datetime, dispatcher_alive: bool) -> str:
    """An order with inbox events but no lead (yet): where each event stands."""
    tz = ZoneInfo(shop.time_zone)
    entries = [(e["received_at"], 1, describe_inbox_event(e, shop, tz, order_id, now=now,
                                                          dispatcher_alive=dispatcher_alive)) for e in inbox]
    return "\n".join([f"No lead of {shop.slug} for order {order_id} (yet); its inbox events (shop time):",
                      *_in_time_order(entries, tz)])


def format_contact(shop, channel: str, address: str, consent: list[dict], events: list[dict]) -> str:
    tz = ZoneInfo(shop.time_zone)
    lines = [f"No lead of {shop.slug} reaches {address}."]
    for c in consent:
        lines.append(f"  consent {c['channel']}: {'OPTED OUT' if c['opted_out'] else 'subscribed'} "
                     f"({c['change_source']}, {shop_time(c['changed_at'], tz)})")
    lines += _in_time_order([(e["at"], 3, describe(e, tz)) for e in events], tz)
    return "\n".join(lines)


def format_more(leads: list[dict]) -> str:
    """The leads past MAX_TIMELINES, one line each."""
    lines = [f"{len(leads)} more lead(s) match; name one by its order id:"]
    for lead in leads:
        name = " ".join(p for p in (lead["first_name"], lead["last_name"]) if p) or "(no name)"
        lines.append(f"  lead {lead['id']}  order {lead['order_id']}  {name}  {lead['status']}")
    return "\n".join(lines)
