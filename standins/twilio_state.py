"""In-memory Twilio account(s): messages sent, injected behaviours, callbacks to make.

Numbers that behave specially (besides what a test adds): Twilio's documented magic
test numbers +15005550001 (invalid, 21211) and +15005550004 (opted out, 21610).
"""
from __future__ import annotations

import email.utils
import itertools
import secrets
import threading
from urllib.parse import urlencode
from dataclasses import dataclass
from datetime import datetime, timezone

from twilio.request_validator import RequestValidator

from standins.faults import FaultsControl, InjectedFaults
from standins.outbox import Outbox
from standins.outgoing import OutgoingCalls, PostResult
from standins.sms_segments import count_segments

API_VERSION = "2010-04-01"
MAGIC_INVALID = frozenset({"+15005550001"})
MAGIC_OPTED_OUT = frozenset({"+15005550004"})
OPT_OUT_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
OPT_IN_WORDS = {"START", "YES", "UNSTOP"}
HELP_WORDS = {"HELP", "INFO"}


class TwilioError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def error_for_status(status: int) -> TwilioError:
    """Twilio's error for an injected failure status."""
    if status == 429:
        return TwilioError(429, 20429, "Too Many Requests")
    text = "Service Unavailable" if status == 503 else "Internal Server Error"
    return TwilioError(status, 20000 + status, text)


def rfc2822(dt: datetime) -> str:
    return email.utils.format_datetime(dt)  # "Thu, 24 Aug 2023 05:01:45 +0000"


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class Account:
    sid: str
    auth_token: str
    numbers: frozenset[str] | None = None  # when set, From must be one of them (21606)


class TwilioState(FaultsControl):
    def __init__(self, *, callback_delay: float = 0.05, advanced_opt_out: bool = False) -> None:
        self.callback_delay = callback_delay  # between queued -> sent -> delivered
        self.advanced_opt_out = advanced_opt_out  # adds OptOutType to inbound keyword messages
        self.accounts: dict[str, Account] = {}
        self.messages = Outbox()  # message resources created (dicts, updated as they progress)
        self.rejected = Outbox()  # requests answered with an error
        self.callbacks = Outbox()  # status callback POSTs made
        self.inbound = Outbox()  # simulated inbound SMS POSTs made
        self._lock = threading.RLock()
        self._outgoing = OutgoingCalls("twilio")
        self._seq = itertools.count(1)
        self._generation = 0
        self.reset()

    # ----- configuration used by tests and the control endpoints -----
    def reset(self) -> None:
        """Forget messages and injected behaviours; registered accounts stay."""
        with self._lock:
            self._generation += 1  # callbacks still scheduled for older messages are dropped
            self.modes = InjectedFaults()
            self.opted_out: set[str] = set(MAGIC_OPTED_OUT)
            self.invalid_numbers: set[str] = set(MAGIC_INVALID)
            self.undeliverable: dict[str, int] = {}  # number -> error code in the final callback
            self._by_sid: dict[str, dict] = {}
        for box in (self.messages, self.rejected, self.callbacks, self.inbound):
            box.clear()

    def add_account(self, account_sid: str, auth_token: str, numbers: list[str] | None = None) -> None:
        with self._lock:
            self.accounts[account_sid] = Account(account_sid, auth_token, frozenset(numbers) if numbers else None)

    def add_opted_out(self, *numbers: str) -> None:
        with self._lock:
            self.opted_out.update(numbers)

    def add_invalid(self, *numbers: str) -> None:
        with self._lock:
            self.invalid_numbers.update(numbers)

    def add_undeliverable(self, number: str, error_code: int = 30007) -> None:
        with self._lock:
            self.undeliverable[number] = error_code

    def message(self, sid: str) -> dict | None:
        with self._lock:
            m = self._by_sid.get(sid)
            return dict(m) if m else None

    def close(self) -> None:
        self._outgoing.close()

    # ----- the API behaviour -----
    def authenticate(self, path_sid: str, username: str | None, password: str | None) -> Account:
        with self._lock:
            account = self.accounts.get(path_sid)
            registered = bool(self.accounts)
        ok = username == path_sid and password is not None
        if registered:
            ok = ok and account is not None and secrets.compare_digest(password or "", account.auth_token)
        if not ok:
            raise TwilioError(401, 20003, "Authenticate")
        return account or Account(path_sid, password or "")

    def take_injected_failure(self) -> TwilioError | None:
        status = self.take_injected_status()
        return error_for_status(status) if status else None

    def create_message(self, account: Account, params: dict) -> dict:
        """Params have passed the contract schema; apply the account-level rules, then queue."""
        to, sender = params["To"], params.get("From")
        with self._lock:
            if to in self.invalid_numbers:
                raise TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to}")
            if to in self.opted_out:
                raise TwilioError(400, 21610, "Attempt to send to unsubscribed recipient")
            if sender and account.numbers is not None and sender not in account.numbers:
                raise TwilioError(
                    400, 21606,
                    f"The 'From' phone number provided ({sender}) is not a valid message-capable "
                    "Twilio phone number for this destination/account",
                )
        media = params.get("MediaUrl") or []
        sid = new_sid("MM" if media else "SM")
        now = rfc2822(datetime.now(timezone.utc))
        base = f"/{API_VERSION}/Accounts/{account.sid}/Messages/{sid}"
        body = params.get("Body", "")
        message = {
            "account_sid": account.sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": params.get("MessagingServiceSid"),
            "num_media": str(len(media)),
            "num_segments": str(count_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": to,
            "uri": f"{base}.json",
        }
        record = dict(message, status_callback=params.get("StatusCallback"), media_urls=media, params=params)
        generation = self._generation
        with self._lock:
            self._by_sid[sid] = record
        self.messages.add(record)
        self._outgoing.submit(lambda: self._advance(record, "sent", account.auth_token, generation), self.callback_delay)
        return message

    def reject(self, path_sid: str, params: dict, error: TwilioError) -> None:
        self.rejected.add({"account_sid": path_sid, "to": params.get("To"), "from": params.get("From"),
                           "body": params.get("Body"), "status": error.status, "code": error.code,
                           "message": error.message, "seq": next(self._seq)})

    # ----- what Twilio does after answering -----
    def _advance(self, record: dict, status: str, auth_token: str, generation: int) -> None:
        """queued -> sent -> delivered | undelivered; a callback for each step after queued."""
        if generation != self._generation:
            return
        error_code = self.undeliverable.get(record["to"]) if status != "sent" else None
        if status != "sent" and error_code:
            status = "undelivered"
        now = rfc2822(datetime.now(timezone.utc))
        with self._lock:
            record["status"] = status
            record["date_updated"] = now
            if status == "sent":
                record["date_sent"] = now
            if error_code:
                record["error_code"] = error_code
                record["error_message"] = "Unknown error"
        self.messages.touch()
        if record.get("status_callback"):
            self._post_status(record, status, error_code, auth_token)
        if status == "sent":
            self._outgoing.submit(lambda: self._advance(record, "delivered", auth_token, generation), self.callback_delay)

    def _post_status(self, record: dict, status: str, error_code: int | None, auth_token: str) -> None:
        params = {
            "SmsSid": record["sid"],
            "SmsStatus": status,
            "MessageStatus": status,
            "To": record["to"],
            "MessageSid": record["sid"],
            "AccountSid": record["account_sid"],
            "From": record["from"] or "",
            "ApiVersion": API_VERSION,  # receivers must accept parameters they do not use
        }
        if record.get("messaging_service_sid"):
            params["MessagingServiceSid"] = record["messaging_service_sid"]
        if status == "delivered":
            params["RawDlrDoneDate"] = datetime.now(timezone.utc).strftime("%y%m%d%H%M")
        if error_code:
            params["ErrorCode"] = str(error_code)
        result = self.post_signed(record["status_callback"], params, auth_token)
        self.callbacks.add({"message_sid": record["sid"], "url": record["status_callback"], "status": status,
                            "params": params, "response_status": result.status, "error": result.error})

    def post_signed(self, url: str, params: dict[str, str], auth_token: str) -> PostResult:
        signature = RequestValidator(auth_token).compute_signature(url, params)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "User-Agent": "TwilioProxy/1.1",
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
        }
        return self._outgoing.post(url, content=urlencode(params).encode(), headers=headers)

    # ----- a customer texting the shop -----
    def simulate_inbound(self, url: str, from_: str, to: str, body: str, *, auth_token: str | None = None,
                         account_sid: str | None = None) -> int | None:
        """POST a signed inbound SMS to url (as Twilio would) and return the answer's status
        (None when the receiver could not be reached).

        An opt-out keyword (the whole message, any case) adds the sender to the opted-out
        set and an opt-in word removes it, as Twilio's default opt-out handling does."""
        account = self._pick_account(account_sid, auth_token)
        sid = new_sid("SM")
        params = {
            "ToCountry": "US", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
            "Body": body, "FromCountry": "US", "To": to, "ToZip": "", "NumSegments": str(count_segments(body)),
            "MessageSid": sid, "AccountSid": account.sid, "From": from_, "ApiVersion": API_VERSION,
        }
        word = body.strip().upper()
        kind = "STOP" if word in OPT_OUT_WORDS else "START" if word in OPT_IN_WORDS else "HELP" if word in HELP_WORDS else None
        with self._lock:
            if kind == "STOP":
                self.opted_out.add(from_)
            elif kind == "START":
                self.opted_out.discard(from_)
        if kind and self.advanced_opt_out:
            params["OptOutType"] = kind
        result = self.post_signed(url, params, account.auth_token)
        self.inbound.add({"url": url, "from": from_, "to": to, "body": body, "params": params,
                          "response_status": result.status, "error": result.error})
        return result.status

    def _pick_account(self, account_sid: str | None, auth_token: str | None) -> Account:
        with self._lock:
            if account_sid and account_sid in self.accounts and auth_token is None:
                return self.accounts[account_sid]
            if auth_token is None and len(self.accounts) == 1:
                return next(iter(self.accounts.values()))
        if auth_token is None:
            raise ValueError("auth_token is needed to sign the inbound message (or register one account)")
        return Account(account_sid or new_sid("AC"), auth_token)
