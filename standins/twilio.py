"""Twilio Messages API stand-in (REST 2010-04-01), reached by the official SDK over HTTP.

Error codes it answers (body `{"code", "message", "more_info", "status"}`):
  401 20003 bad credentials (user must be the AccountSid in the path; the token must match
            when accounts are registered) | 429 20429 throttled | 500 20500 / 503 20503
  400: 21604 To missing, 21211 To invalid or listed invalid, 21603 neither From nor
       MessagingServiceSid, 21212 From malformed, 21606 From not one of the account's
       numbers (only when the account was registered with numbers), 21701 bad
       MessagingServiceSid, 21602 no Body/MediaUrl/ContentSid, 21617 Body over 1600 chars,
       21609 bad StatusCallback, 21620/21623 bad or too many MediaUrl, 21655 bad ContentSid,
       21610 recipient opted out, 20001 any other invalid parameter (stand-in catch-all).
Faults before or after the message is created: faults.py. The message list: twilio_list.py.
"""
from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from standins.connection_drop import DroppableFastAPI
from standins.contracts import validator
from standins.faults import add_fault_routes
from standins.outbox import add_outbox_routes
from standins.twilio_list import add_message_list_route
from standins.twilio_state import TwilioError, TwilioState, error_for_status

LIST_PARAMS = {"MediaUrl", "PersistentAction"}  # may repeat in the form
# Which failure to report when several rules fail: the one Twilio would hit first.
ERROR_PRIORITY = [21604, 21211, 21603, 21212, 21701, 21602, 21617, 21609, 21620, 21623, 21655]
ERROR_TEXT = {
    21604: "A 'To' phone number is required.",
    21211: "Invalid 'To' Phone Number: {To}",
    21603: "A 'From' phone number is required.",
    21212: "Invalid From Number (caller ID): {From}",
    21701: "The Messaging Service Sid {MessagingServiceSid} is invalid.",
    21602: "Message body is required.",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21609: "Invalid StatusCallback URL: {StatusCallback}",
    21620: "Invalid media URL(s)",
    21623: "Number of media files exceeds allowed limit",
    21655: "The ContentSid is Invalid.",
    20001: "Invalid parameter",
}


def parse_form(raw: bytes) -> dict:
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: (v if k in LIST_PARAMS else v[0]) for k, v in fields.items()}


def contract_error(params: dict) -> TwilioError | None:
    codes = []
    for err in validator("twilio_create_message").iter_errors(params):
        code = err.schema.get("x-twilio-error")
        if isinstance(code, dict):  # the root maps keyword -> code ("required" -> 21604)
            code = code.get(err.validator)
        codes.append(code if isinstance(code, int) else 20001)
    if not codes:
        return None
    code = min(codes, key=lambda c: ERROR_PRIORITY.index(c) if c in ERROR_PRIORITY else len(ERROR_PRIORITY))
    safe = {k: v for k, v in params.items() if isinstance(v, str)}
    text = ERROR_TEXT[code].format_map({**dict.fromkeys(("To", "From", "MessagingServiceSid", "StatusCallback"), ""), **safe})
    return TwilioError(400, code, text)


def basic_credentials(request: Request) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)


class AccountIn(BaseModel):
    account_sid: str
    auth_token: str
    numbers: list[str] | None = None


class NumbersIn(BaseModel):
    opted_out: list[str] = []
    invalid: list[str] = []
    undeliverable: dict[str, int] = {}


class InboundIn(BaseModel):
    url: str
    from_: str = Field(alias="from")
    to: str
    body: str
    auth_token: str | None = None
    account_sid: str | None = None


def _control_routes(state: TwilioState) -> APIRouter:
    r = APIRouter(prefix="/_standin", tags=["stand-in control"])

    @r.post("/accounts")
    def add_account(a: AccountIn) -> dict:
        state.add_account(a.account_sid, a.auth_token, a.numbers)
        return {"account_sid": a.account_sid}

    add_fault_routes(r, state)

    @r.post("/numbers")
    def numbers(n: NumbersIn) -> dict:
        state.add_opted_out(*n.opted_out)
        state.add_invalid(*n.invalid)
        for number, code in n.undeliverable.items():
            state.add_undeliverable(number, code)
        return {"opted_out": sorted(state.opted_out), "invalid": sorted(state.invalid_numbers),
                "undeliverable": state.undeliverable}

    @r.post("/inbound")
    def inbound(i: InboundIn) -> dict:
        # A plain def: FastAPI runs it on a worker thread, so the blocking POST is fine.
        status = state.simulate_inbound(i.url, i.from_, i.to, i.body, auth_token=i.auth_token,
                                        account_sid=i.account_sid)
        return {"status": status}

    @r.post("/reset")
    def reset() -> dict:
        state.reset()
        return {"reset": True}

    return r


def create_app(state: TwilioState) -> FastAPI:
    app = DroppableFastAPI(title="Twilio stand-in", description=__doc__)

    @app.exception_handler(TwilioError)
    async def twilio_error(_: Request, exc: TwilioError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json", status_code=201, tags=["Messages"])
    async def create_message(account_sid: str, request: Request) -> JSONResponse:
        params = parse_form(await request.body())
        try:
            account = state.authenticate(account_sid, *basic_credentials(request))
            failure = state.take_injected_failure() or contract_error(params)
            if failure:
                raise failure
            message = state.create_message(account, params)
        except TwilioError as exc:
            state.reject(account_sid, params, exc)
            raise
        lost = state.lose_answer(request.scope)  # the message exists; an injected fault may lose the answer
        if lost:
            raise error_for_status(lost)
        return JSONResponse(message, status_code=201)

    @app.get("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json", tags=["Messages"])
    def fetch_message(account_sid: str, sid: str, request: Request) -> dict:
        state.authenticate(account_sid, *basic_credentials(request))
        record = state.message(sid)
        if record is None or record["account_sid"] != account_sid:
            raise TwilioError(404, 20404, f"The requested resource {request.url.path} was not found")
        return {k: v for k, v in record.items() if k not in ("status_callback", "media_urls", "params")}

    add_message_list_route(app, state)
    app.include_router(_control_routes(state))
    add_outbox_routes(
        app, "Twilio stand-in outbox",
        {"messages": state.messages, "rejected": state.rejected, "callbacks": state.callbacks, "inbound": state.inbound},
        {
            "messages": ["date_created", "sid", "to", "from", "messaging_service_sid", "body", "num_segments", "status", "status_callback"],
            "rejected": ["seq", "to", "from", "body", "status", "code", "message"],
            "callbacks": ["message_sid", "status", "url", "response_status", "error"],
            "inbound": ["from", "to", "body", "url", "response_status", "error"],
        },
    )
    return app
