"""What a vendor's answer (or its absence) means for a message: one classification for
Twilio and SendGrid alike, so both channels follow the same at-most-once rules.

- sent:       the vendor accepted it (we keep its message id);
- permanent:  the vendor refused it for good (4xx rejections, Twilio's permanent codes);
- transient:  the failure proves the request was NOT accepted, so sending again is safe:
              no connection (refused, DNS, connect timeout, TLS handshake), a 429, a 408;
- ambiguous:  the request may have reached the vendor (connection closed or reset after
              it was written, read timeout, a 5xx, an unreadable answer): recorded as
              `unknown`, never sent again automatically, and resolved by asking the vendor.

A 5xx is ambiguous on purpose: the vendor has read the whole request when it answers,
and neither Twilio nor SendGrid promises that a 500/502/503/504 on a create means
"nothing was created" (there is no idempotency key for Messages or Mail Send).

Which exceptions prove "not written" depends on the HTTP library each SDK uses:
- Twilio's SDK uses requests/urllib3: a connection that never opened is a
  `NewConnectionError` (refused, DNS: `NameResolutionError`) or a `ConnectTimeout`. Once
  connected, urllib3 swallows a reset while writing and reports it when reading the
  answer, so everything else (ProtocolError/RemoteDisconnected, ReadTimeout,
  ChunkedEncodingError) is ambiguous. Its `SSLError` wraps handshake and mid-stream TLS
  errors alike; only reasons that exist solely in a handshake count as not written.
- SendGrid's SDK uses urllib (python_http_client): `urlopen` wraps every error raised
  while connecting and writing the request in `URLError`; errors while reading the answer
  (`RemoteDisconnected`, `ConnectionResetError`, `TimeoutError`, `IncompleteRead`) come
  through bare. A request whose writing failed is incomplete, and a vendor cannot act on
  an incomplete body, so `URLError` is transient.
"""
from __future__ import annotations

from dataclasses import dataclass

SENT, PERMANENT, TRANSIENT, AMBIGUOUS = "sent", "permanent", "transient", "ambiguous"

# HTTP statuses that say "not taken, try later" rather than "no".
RETRY_LATER_STATUSES = frozenset({408, 429})
# TLS failures that can only happen in a handshake, i.e. before any byte of the request.
HANDSHAKE_ONLY_TLS_REASONS = frozenset({
    "CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION", "SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_PROTOCOLS_AVAILABLE",
})


@dataclass(frozen=True)
class SendResult:
    outcome: str  # SENT | PERMANENT | TRANSIENT | AMBIGUOUS
    message_id: str | None = None
    code: str | None = None
    detail: str | None = None


def from_http_status(status: int, *, code: str | None = None, detail: str | None = None,
                     permanent_codes: frozenset[str] = frozenset()) -> SendResult:
    """A vendor answered with an error status (the SDK raised for it)."""
    code = code or str(status)
    if status in RETRY_LATER_STATUSES:
        return SendResult(TRANSIENT, code=code, detail=detail)
    if status >= 500:
        return SendResult(AMBIGUOUS, code=code, detail=f"HTTP {status} after the request was sent: {detail or ''}".strip())
    if code in permanent_codes or 400 <= status < 500:
        return SendResult(PERMANENT, code=code, detail=detail)
    return SendResult(AMBIGUOUS, code=code, detail=f"unexpected HTTP {status}: {detail or ''}".strip())


def from_exception(exc: BaseException) -> SendResult:
    """A transport failure (no HTTP status): transient only with proof the request was
    not written; anything else is ambiguous."""
    why = not_written(exc)
    if why:
        return SendResult(TRANSIENT, detail=f"{why}: {_describe(exc)}")
    return SendResult(AMBIGUOUS, detail=_describe(exc))


def not_written(exc: BaseException) -> str | None:
    """Why `exc` proves the request never (completely) reached the vendor, or None."""
    import ssl
    import urllib.error

    for link in _chain(exc):
        kinds = {cls.__name__ for cls in type(link).__mro__}  # requests/urllib3 by name: imported lazily
        if isinstance(link, urllib.error.HTTPError):
            return None  # an answer, not a transport failure (classified by its status)
        if isinstance(link, urllib.error.URLError):
            return "not sent (failed while connecting or writing the request)"
        if "NewConnectionError" in kinds:  # refused, unreachable, DNS (NameResolutionError)
            return "no connection"
        if kinds & {"ConnectTimeout", "ConnectTimeoutError"}:
            return "connect timeout"
        if kinds & {"InvalidURL", "MissingSchema", "InvalidSchema"}:
            return "not sent (invalid URL)"
        if isinstance(link, ssl.SSLError) and _handshake_only(link):
            return "TLS handshake failed"
    return None


def _handshake_only(err) -> bool:
    import ssl

    return isinstance(err, ssl.SSLCertVerificationError) or getattr(err, "reason", None) in HANDSHAKE_ONLY_TLS_REASONS


def _chain(exc: BaseException):
    """The exception and everything it wraps: causes, contexts, and the wrapped errors
    that urllib (`reason`) and urllib3/requests (`reason`, `args`) keep as attributes."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        link = todo.pop(0)
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        todo += [link.__cause__, link.__context__]
        reason = getattr(link, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        todo += [a for a in getattr(link, "args", ()) if isinstance(a, BaseException)]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# --- asking the vendor what became of an ambiguous send ---------------------------------

FOUND, ABSENT, SIMILAR, UNAVAILABLE, ERROR = "found", "absent", "similar", "unavailable", "error"


@dataclass(frozen=True)
class Lookup:
    """The vendor's answer to "do you have this message?".

    found:       yes (message_id is its id);
    absent:      no message of ours matches (proof only once the vendor has settled);
    similar:     a message to that address from our sender in that window, but not
                 provably this one (e.g. a body rewritten by link shortening): doubt;
    unavailable: the vendor cannot tell us, and asking again will not change that
                 (SendGrid without the Email Activity add-on);
    error:       no answer this time (network, 429, 5xx): ask again later."""
    verdict: str
    message_id: str | None = None
    detail: str | None = None
