"""The touch-point engine: plans a lead's sequence, and sends one touch at most once.

A touch is a row per (lead, step, channel). Sending is two transactions around the
provider call: the first re-checks everything and moves the row to `sending` (the
reservation, which names this process's sender session), the second records what the
provider said (classified in `send_outcomes`). A crash between them leaves `sending`,
which `send_reconcile` turns into `unknown` as soon as the session is gone and then
resolves by asking the vendor; nothing is sent again unless the vendor proves it never
took the message, and then once (the database enforces it, sql/0010_send_outcomes.sql).

Every decision not to send is written to the lead's decision log (lead_events):
deferred for quiet hours, spacing or a daily limit, skipped because opted out or
unreachable, cancelled because the lead ended.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import psycopg
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential

from lead_orchestrator.store import lead_log
from lead_orchestrator.store.lead_state import (cancel_pending, complete_if_done, consent_key, is_opted_out,  # noqa: F401
                                          opt_out_contact, set_opt_out, share_lead_of_touch)
from lead_orchestrator.store.touches import (NewTouch, Touch, defer_touch, lock_touch, other_sms_out, plan_touches,
                                             recent_sms_reservations, record_status, reserve_touch, skip_pending_sms,
                                             spaced_until, status_of)
from lead_orchestrator.store.touches import due_touch_ids  # noqa: F401 - re-exported (ingest, tests)
from lead_orchestrator.domain.messages import Message, compose, merge_fields  # noqa: F401 - merge_fields re-exported
from lead_orchestrator.messaging.senders import OutgoingEmail
from lead_orchestrator.messaging.send_outcomes import AMBIGUOUS, PERMANENT, SENT, TRANSIENT, SendResult, from_exception
from lead_orchestrator.domain.send_window import SendWindow
from lead_orchestrator.domain.sequences import sequence_for
from lead_orchestrator.store.shops import Shop

log = logging.getLogger(__name__)

# A reservation that has not recorded an outcome after this long outlived its sender,
# even if its sender session still looks alive (a backstop: a gone session is noticed at
# once). Far above the worst provider call (IN_RUN_ATTEMPTS x the SDK timeout of 10 s + waits).
STALE_RESERVATION = dt.timedelta(minutes=2)
# Transient errors (nothing was taken: 429, refused connections, ...): a few quick retries
# inside the run, then the touch goes back to `scheduled` with a growing delay,
# MAX_RESERVATIONS times.
IN_RUN_ATTEMPTS = 3
IN_RUN_WAIT = wait_exponential(multiplier=1, min=1, max=4)
RESCHEDULE_BASE = dt.timedelta(minutes=1)
MAX_RESERVATIONS = 5
MAX_TRANSIENT_ATTEMPTS = MAX_RESERVATIONS  # the name earlier code used
# Twilio codes that mean this number will never take an SMS: later SMS steps are skipped.
UNREACHABLE_SMS_CODES = frozenset({"21211", "21214", "21217", "21408", "21612", "21614"})


@dataclass(frozen=True)
class TouchOutcome:
    touch_id: int
    status: str
    reason: str | None = None


@dataclass(frozen=True)
class ReservedTouch:
    """A touch this process has reserved, and what it is to send."""
    touch: Touch  # as locked before the reservation (its `attempts` do not count this one yet)
    message: Message
    send_key: str  # names this reservation at the vendor where it keeps our tags (SendGrid)


def plan_sequence(conn: psycopg.Connection, shop: Shop, lead: dict, window: SendWindow) -> int:
    """Creates the lead's touch rows (idempotent). Returns how many were created.
    A step due inside quiet hours is planned for the next allowed moment."""
    planned = []
    for step in sequence_for(shop.settings or {}):
        address = lead["phone_e164"] if step.channel == "sms" else lead["email"]
        due = lead["first_seen_at"] + step.offset
        if address is None:
            status, reason, send_after = "skipped", f"no_contact:{step.channel}", due
        else:
            send_after = window.next_allowed_moment(due)
            status, reason = ("deferred", "quiet_hours") if send_after > due else ("scheduled", None)
        planned.append(NewTouch(step.step, step.channel, status, reason, due, send_after, address))
    created = plan_touches(conn, lead["id"], planned)
    for t in planned:
        if (t.step, t.channel) in created and t.status != "scheduled":
            lead_log.record(conn, lead["id"], f"touch_{t.status}", step=t.step, channel=t.channel,
                            reason=t.reason, due_at=t.due_at.isoformat(), send_after=t.send_after.isoformat(),
                            at=lead["first_seen_at"])
    return len(created)


def send_touch(db, shop: Shop, touch_id: int, vendors, *, now: dt.datetime,
               sleep: Callable[[float], None] = time.sleep) -> TouchOutcome:
    """Sends one touch if it is still owed, due and allowed; at most once, ever.
    `sleep` waits between quick retries of a transient error (tests pass a fake)."""
    return send_touches(db, shop, [touch_id], vendors, now=now, sleep=sleep)[0]


def send_touches(db, shop: Shop, touch_ids: list[int], vendors, *, now: dt.datetime,
                 sleep: Callable[[float], None] = time.sleep,
                 on_recorded: Callable[[psycopg.Connection, list[TouchOutcome]], None] | None = None,
                 ) -> list[TouchOutcome]:
    """Sends several touches of one shop (e.g. a lead's first SMS and email) with one
    reservation transaction and one recording transaction; the provider calls run side
    by side, so a touch is never left reserved while another one's call is slow.
    `on_recorded(conn, outcomes)` runs inside the recording transaction."""
    from lead_orchestrator.messaging.sender_session import sender_pid

    window = SendWindow.for_shop(shop)
    reserved: list[tuple[int, ReservedTouch]] = []
    outcomes: list[TouchOutcome | None] = [None] * len(touch_ids)
    owner = sender_pid(db)  # the reservations die with this process's session (send_reconcile)
    with db.tenant_tx(shop.id) as conn:
        for i, touch_id in enumerate(touch_ids):
            reservation, outcome = _reserve(conn, shop, touch_id, now, window, vendors, owner)
            if outcome:
                outcomes[i] = outcome
            else:
                reserved.append((i, reservation))
    if not reserved:
        return outcomes

    results = _call_providers(shop, [reservation for _, reservation in reserved], vendors, sleep)

    with db.tenant_tx(shop.id) as conn:
        for (i, reservation), result in zip(reserved, results):
            outcomes[i] = _record_result(conn, reservation.touch, result, now)
        for lead_id in dict.fromkeys(r.touch.lead_id for _, r in reserved):  # once per lead, in order
            complete_if_done(conn, lead_id, at=now)
        if on_recorded is not None:
            on_recorded(conn, outcomes)
    return outcomes


def _call_providers(shop: Shop, reserved: list[ReservedTouch], vendors, sleep) -> list[SendResult]:
    if len(reserved) == 1:
        return [_call_provider(shop, reserved[0], vendors, sleep)]
    others = [_PROVIDER_CALLS.submit(_call_provider, shop, r, vendors, sleep) for r in reserved[1:]]
    first = _call_provider(shop, reserved[0], vendors, sleep)
    return [first, *(future.result() for future in others)]


# Provider calls made beside the caller's own (bounded: it is only a latency helper).
_PROVIDER_CALLS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="provider-call")


# --- first transaction: check, then reserve ------------------------------------------

def _reserve(conn: psycopg.Connection, shop: Shop, touch_id: int, now: dt.datetime, window: SendWindow,
             vendors, owner: int | None = None) -> tuple[ReservedTouch | None, TouchOutcome | None]:
    """Returns (reservation, None) when the caller should send, or (None, outcome) when not."""
    # The lead first (see lead_state): a stop that locked it is waited for and then seen.
    lead = share_lead_of_touch(conn, touch_id)
    if lead is None:  # no such touch (a touch always has its lead)
        return None, TouchOutcome(touch_id, "missing", "not_pending")
    touch = lock_touch(conn, touch_id)
    if touch.status not in ("scheduled", "deferred"):
        return None, TouchOutcome(touch_id, touch.status, "not_pending")
    if touch.send_after > now:
        return None, TouchOutcome(touch_id, touch.status, "not_due")
    if lead["status"] != "active":
        return None, _decline(conn, touch, "cancelled", f"lead_{lead['status']}", now)
    step = next((s for s in sequence_for(shop.settings or {})
                 if s.step == touch.step and s.channel == touch.channel), None)
    if step is None:
        return None, _decline(conn, touch, "cancelled", "step_removed_from_sequence", now)
    if is_opted_out(conn, touch.channel, touch.to_address):
        return None, _decline(conn, touch, "skipped", "opted_out", now)
    if touch.channel == "email" and not shop.postal_address:
        return None, _decline(conn, touch, "skipped", "no_postal_address", now)

    later, why = _not_before(conn, shop, touch, now, window, first_step=touch.step == 0)
    if later is not None:
        defer_touch(conn, touch_id, why, later)
        lead_log.record(conn, touch.lead_id, "touch_deferred", step=touch.step, channel=touch.channel,
                        reason=why, send_after=later.isoformat(), at=now)
        return None, TouchOutcome(touch_id, "deferred", why)

    first_sms = touch.channel == "sms" and not other_sms_out(conn, touch.lead_id, touch_id)
    unsubscribe = vendors.unsubscribe_url(shop, touch.to_address) if touch.channel == "email" else None
    reply_to = vendors.reply_address(shop, lead["id"]) if touch.channel == "email" else None
    message = compose(shop, step, lead, first_sms=first_sms, unsubscribe_url=unsubscribe, reply_to=reply_to)
    send_key = uuid.uuid4().hex
    reserve_touch(conn, touch_id, now=now, owner=owner, send_key=send_key, body=message.body,
                  subject=message.subject)
    return ReservedTouch(touch, message, send_key), None


def _not_before(conn, shop: Shop, touch: Touch, now: dt.datetime, window: SendWindow, *, first_step: bool = False):
    """(when, why) if the touch may not go out at `now`, else (None, None).
    `first_step`: step 0, before which no step can exist (step numbers start at 0, in
    every sequence a lead was ever planned with), so there is no spacing to keep."""
    if not window.allows(now):
        return window.next_allowed_moment(now), "quiet_hours"
    # Keep the sequence's rhythm: a step goes out no sooner after an earlier step that was
    # actually sent than the sequence spaces them. Without this, a lead created at night
    # would get its first text and the "1 hour later" follow-up together at 8:00.
    spaced = None if first_step else spaced_until(conn, touch)
    if spaced is not None and spaced > now:
        return window.next_allowed_moment(spaced), "spacing"
    limit = (shop.settings or {}).get("max_sms_per_24h")
    if limit and touch.channel == "sms":
        # A stricter state rule (e.g. Florida: 3 texts per 24 h): wait until the oldest
        # of the last `limit` texts to this number is 24 h old.
        recent = recent_sms_reservations(conn, touch.to_address, now - dt.timedelta(hours=24), int(limit))
        if len(recent) >= int(limit):
            return window.next_allowed_moment(recent[-1] + dt.timedelta(hours=24)), "daily_limit"
    return None, None


def _decline(conn, touch: Touch, status: str, reason: str, now: dt.datetime) -> TouchOutcome:
    outcome = _finish(conn, touch, status, reason, now)
    complete_if_done(conn, touch.lead_id, at=now)
    return outcome


def _finish(conn: psycopg.Connection, touch: Touch, status: str, reason: str | None, now: dt.datetime,
            *, from_status: tuple[str, ...] | None = None, **extra) -> TouchOutcome:
    """Records a touch's new status (only if it is still in `from_status`, when given)."""
    resolve_after = extra.pop("resolve_after", None)  # unknown: when to ask the vendor (send_reconcile)
    recorded = record_status(conn, touch.id, status, reason, from_status=from_status,
                             message_id=extra.get("message_id"), code=extra.get("code"),
                             sent_at=extra.get("sent_at"), send_after=extra.get("send_after"),
                             resolve_after=resolve_after)
    if not recorded:
        return TouchOutcome(touch.id, *status_of(conn, touch.id))
    lead_log.record(conn, touch.lead_id, f"touch_{status}", step=touch.step, channel=touch.channel,
                    reason=reason, at=now, **{k: str(v) for k, v in extra.items() if v is not None})
    return TouchOutcome(touch.id, status, reason)


# --- the provider call ---------------------------------------------------------------

def _call_provider(shop: Shop, reserved: ReservedTouch, vendors, sleep: Callable[[float], None]) -> SendResult:
    """Calls the provider; a transient refusal (nothing was sent) is retried a few times
    with exponential backoff before the touch is handed back to the schedule."""
    from lead_orchestrator.services.shop_clients import MissingCredentials

    try:
        send = _sender(shop, reserved, vendors)
    except MissingCredentials as exc:
        return SendResult(PERMANENT, code="missing_credentials", detail=str(exc))
    retrying = Retrying(stop=stop_after_attempt(IN_RUN_ATTEMPTS), wait=IN_RUN_WAIT, sleep=sleep,
                        retry=retry_if_result(lambda r: r.outcome == TRANSIENT),
                        retry_error_callback=_last_result)
    try:
        return retrying(send)
    except Exception as exc:  # noqa: BLE001 - unexpected: ambiguous unless it proves nothing was sent
        log.exception("provider call failed for touch %s", reserved.touch.id)
        return from_exception(exc)


def _last_result(state: RetryCallState) -> SendResult:
    return state.outcome.result()


def _sender(shop: Shop, reserved: ReservedTouch, vendors) -> Callable[[], SendResult]:
    touch, message = reserved.touch, reserved.message
    if touch.channel == "sms":
        sms = vendors.sms(shop)
        callback = vendors.status_callback_url(shop, touch.id)
        return lambda: sms.send(touch.to_address, message.body, status_callback=callback)
    email = vendors.email(shop)
    outgoing = OutgoingEmail(
        to=touch.to_address, sender=shop.sendgrid_sender or "", sender_name=shop.name,
        subject=message.subject, text=message.body, headers=message.headers or {},
        # touch_id finds the touch from SendGrid's events; send_key finds this very
        # reservation's mail in Email Activity when the answer was lost.
        custom_args={"tenant": shop.slug, "touch_id": str(touch.id), "send_key": reserved.send_key},
        reply_to=message.reply_to,
    )
    return lambda: email.send(outgoing)


# --- second transaction: record the outcome --------------------------------------------

def _record_result(conn: psycopg.Connection, touch: Touch, result: SendResult, now: dt.datetime) -> TouchOutcome:
    if result.outcome == SENT:
        # From `unknown` too: the sweeper may have given up on us while we waited.
        outcome = _finish(conn, touch, "sent", None, now, from_status=("sending", "unknown"),
                          message_id=result.message_id, sent_at=now)
    elif result.outcome == PERMANENT:
        outcome = _finish(conn, touch, "failed", result.detail or "rejected", now, from_status=("sending",),
                          code=result.code)
        if result.code == "21610":  # the carrier says this number replied STOP
            opt_out_contact(conn, "sms", touch.to_address, source="twilio_21610", reason="opted_out", at=now)
        elif touch.channel == "sms" and result.code in UNREACHABLE_SMS_CODES:
            _skip_later_sms(conn, touch, f"sms_unreachable:{result.code}", now)
    elif result.outcome == TRANSIENT and touch.attempts + 1 < MAX_RESERVATIONS:
        retry_at = now + RESCHEDULE_BASE * 2 ** touch.attempts
        outcome = _finish(conn, touch, "scheduled", f"retry:{result.code or result.detail}", now,
                          from_status=("sending",), code=result.code, send_after=retry_at)
    elif result.outcome == TRANSIENT:
        outcome = _finish(conn, touch, "failed", "transient_errors_exhausted", now, from_status=("sending",),
                          code=result.code)
    else:  # AMBIGUOUS: never sent again on our own; the vendor is asked at once (send_reconcile)
        outcome = _finish(conn, touch, "unknown", result.detail or AMBIGUOUS, now, from_status=("sending",),
                          code=result.code, resolve_after=now)
    return outcome


def _skip_later_sms(conn: psycopg.Connection, touch: Touch, reason: str, now: dt.datetime) -> None:
    steps = skip_pending_sms(conn, touch.lead_id, reason)
    if steps:
        lead_log.record(conn, touch.lead_id, "touches_skipped", reason=reason, at=now,
                        touches=sorted(f"{step}:sms" for step in steps))
