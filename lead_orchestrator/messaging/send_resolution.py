"""What to do with an `unknown` touch once the vendor has been asked about it: a plain
rule, without I/O (send_reconcile asks and records).

The one rule that matters: a touch is owed again only on proof that the vendor never took
it, and only once. "Not in the vendor's list" is proof only after the vendor has settled
(`settle`: Twilio lists a message only once it is sent, within its validity period;
SendGrid's Email Activity lists a mail once processed); before that it is doubt, and in
doubt nothing is sent.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lead_orchestrator.messaging.send_outcomes import ABSENT, FOUND, SIMILAR, UNAVAILABLE, Lookup

# Asking again: 30 s, 1 min, 2 min, ... at most every 30 minutes.
FIRST_WAIT = dt.timedelta(seconds=30)
LONGEST_WAIT = dt.timedelta(minutes=30)
# A vendor that does not answer (network, 429, 5xx) is asked for this long, then the
# touch stays `unknown` for good with the reason.
GIVE_UP_AFTER = dt.timedelta(days=3)

CONFIRM, REPLAN, FAIL, ASK_AGAIN, GIVE_UP = "confirm", "replan", "fail", "ask_again", "give_up"


@dataclass(frozen=True)
class Resolution:
    action: str  # CONFIRM | REPLAN | FAIL | ASK_AGAIN | GIVE_UP
    reason: str | None = None
    ask_at: dt.datetime | None = None
    message_id: str | None = None


def wait_before_asking(attempts: int) -> dt.timedelta:
    """How long after the `attempts`-th question (1 = the first) to ask again."""
    doublings = min(max(attempts - 1, 0), 16)  # beyond that the cap applies anyway
    return min(FIRST_WAIT * 2 ** doublings, LONGEST_WAIT)


def resolve(lookup: Lookup, *, now: dt.datetime, reserved_at: dt.datetime, settle: dt.timedelta,
            attempts: int, replanned: bool, lead_status: str, later_step_out: int | None = None) -> Resolution:
    """`attempts`: questions asked so far, this one included; `replanned`: the touch was
    owed again once already; `lead_status`: the lead's status now; `later_step_out`: a
    later step of the same channel that has gone out (or may have), if any: then the
    lost message is not sent after it, out of order."""
    settled_at = reserved_at + settle
    if lookup.verdict == FOUND:
        return Resolution(CONFIRM, "confirmed_by_provider", message_id=lookup.message_id)
    if lookup.verdict == UNAVAILABLE:
        return Resolution(GIVE_UP, f"unresolved:{lookup.detail or 'provider_cannot_tell'}")
    if lookup.verdict in (ABSENT, SIMILAR) and now < settled_at:
        return Resolution(ASK_AGAIN, ask_at=min(now + wait_before_asking(attempts), settled_at))
    if lookup.verdict == SIMILAR:
        return Resolution(GIVE_UP, f"unresolved:similar_message_at_provider:{lookup.message_id}")
    if lookup.verdict == ABSENT:
        if replanned:
            return Resolution(FAIL, "not_accepted_by_provider:already_replanned")
        if lead_status != "active":
            return Resolution(FAIL, f"not_accepted_by_provider:lead_{lead_status}")
        if later_step_out is not None:
            return Resolution(FAIL, f"not_accepted_by_provider:step_{later_step_out}_went_out_since")
        return Resolution(REPLAN, "replanned:not_accepted_by_provider")
    # No answer this time.
    if now - reserved_at < GIVE_UP_AFTER:
        return Resolution(ASK_AGAIN, ask_at=now + wait_before_asking(attempts))
    return Resolution(GIVE_UP, "unresolved:provider_unreachable")
