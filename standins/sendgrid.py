"""SendGrid Mail Send v3 stand-in, reached by the official SDK (`SendGridAPIClient(host=...)`).

Answers: 202 + X-Message-Id (22 chars) | 400 contract violations, all of them listed as
`{"errors": [{"message", "field", "help"}]}` | 401 missing/unknown Bearer key |
413 body over 30 MB | 429 / 5xx when injected, before or after accepting the mail, or
a connection closed after accepting it (faults.py). Unknown top-level keys are accepted
(the vendor's description does not forbid them); reserved headers are refused.
Email Activity (`GET /v3/messages`): sendgrid_activity.py.
"""
from __future__ import annotations

import gzip
import json

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from standins.connection_drop import DroppableFastAPI
from standins.contracts import validator
from standins.faults import add_fault_routes
from standins.outbox import add_outbox_routes
from standins.sendgrid_activity import add_email_activity_routes
from standins.sendgrid_inbound import inbound_routes
from standins.sendgrid_state import SendGridError, SendGridState, error_for_status

MAX_BODY = 30 * 1024 * 1024
HELP = "https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors"
RESERVED_HEADERS = {"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
                    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc"}
MESSAGES = {
    "from": "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.",
    "from.email": "The from email does not contain a valid address.",
    "subject": "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
    "content": "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.",
    "personalizations": "The personalizations field is required and must have at least one personalization.",
}


def _field_of(err) -> str | None:
    path = [str(p) for p in err.absolute_path]
    if err.validator == "required":
        missing = [p for p in err.validator_value if isinstance(err.instance, dict) and p not in err.instance]
        path += missing[:1]
    elif err.validator == "anyOf" and not path:
        path = ["subject"]  # the only top-level anyOf: subject globally or per personalization
    return ".".join(path) or None


def _message_of(err, field: str | None) -> str:
    if field in MESSAGES:
        return MESSAGES[field]
    if field and field.endswith(".email"):
        return "Does not contain a valid address."
    if field and field.startswith("content.") and field.endswith(".value"):
        return "The content value must be a string at least one character in length."
    return err.message


def contract_errors(mail: object) -> list[dict]:
    errors = []
    for err in validator("sendgrid_mail_send").iter_errors(mail):
        field = _field_of(err)
        errors.append({"message": _message_of(err, field), "field": field, "help": HELP})
    if isinstance(mail, dict):
        blocks = [("headers", mail.get("headers"))] + [
            (f"personalizations.{i}.headers", p.get("headers"))
            for i, p in enumerate(mail.get("personalizations") or []) if isinstance(p, dict)
        ]
        for field, headers in blocks:
            bad = sorted(h for h in (headers or {}) if isinstance(headers, dict) and h.lower() in RESERVED_HEADERS)
            if bad:
                errors.append({"message": f"These headers are reserved and cannot be set: {', '.join(bad)}",
                               "field": field, "help": HELP})
    return sorted(errors, key=lambda e: e["field"] or "")


class KeyIn(BaseModel):
    api_key: str


class EmailsIn(BaseModel):
    emails: list[str]


class UrlIn(BaseModel):
    url: str | None


class EventsIn(BaseModel):
    url: str
    events: list[dict]


def _control_routes(state: SendGridState) -> APIRouter:
    r = APIRouter(prefix="/_standin", tags=["stand-in control"])

    @r.post("/keys")
    def add_key(k: KeyIn) -> dict:
        state.add_api_key(k.api_key)
        return {"keys": len(state.api_keys)}

    add_fault_routes(r, state)

    @r.post("/bounces")
    def bounces(e: EmailsIn) -> dict:
        state.add_bounces(*e.emails)
        return {"bounce_addresses": sorted(state.bounce_addresses)}

    @r.post("/event-webhook")
    def event_webhook(u: UrlIn) -> dict:
        state.set_event_webhook(u.url)
        return {"url": u.url}

    @r.get("/event-webhook-public-key")
    def public_key() -> dict:
        return {"public_key": state.public_key()}

    @r.post("/events")
    def events(e: EventsIn) -> dict:
        return {"status": state.post_events(e.url, e.events)}

    @r.post("/reset")
    def reset() -> dict:
        state.reset()
        return {"reset": True}

    return r


def create_app(state: SendGridState) -> FastAPI:
    app = DroppableFastAPI(title="SendGrid stand-in", description=__doc__)

    @app.exception_handler(SendGridError)
    async def sendgrid_error(_: Request, exc: SendGridError) -> JSONResponse:
        return JSONResponse({"errors": exc.errors}, status_code=exc.status, headers=exc.headers)

    @app.post("/v3/mail/send", status_code=202, tags=["Mail Send"])
    async def mail_send(request: Request) -> Response:
        raw = b""
        mail: object = None
        try:
            state.authenticate(request.headers.get("authorization"))
            failure = state.take_injected_failure()
            if failure:
                raise failure
            if int(request.headers.get("content-length") or 0) > MAX_BODY:
                raise SendGridError.one(413, "content too large")
            raw = await request.body()
            try:
                if request.headers.get("content-encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                if len(raw) > MAX_BODY:
                    raise SendGridError.one(413, "content too large")
                mail = json.loads(raw)
            except (ValueError, OSError, EOFError):
                raise SendGridError.one(400, "Bad Request") from None
            errors = contract_errors(mail)
            if errors:
                raise SendGridError(400, errors)
        except SendGridError as exc:
            state.reject(mail if mail is not None else raw[:2000].decode("utf-8", "replace"), exc)
            raise
        message_id = state.accept(mail)  # type: ignore[arg-type]
        lost = state.lose_answer(request.scope)  # the mail is accepted; an injected fault may lose the answer
        if lost:
            raise error_for_status(lost)
        return Response(status_code=202, headers={"X-Message-Id": message_id})

    add_email_activity_routes(app, state)
    app.include_router(_control_routes(state))
    app.include_router(inbound_routes(state.inbound, state.sent))
    add_outbox_routes(
        app, "SendGrid stand-in outbox",
        {"sent": state.sent, "rejected": state.rejected, "event_posts": state.event_posts,
         "inbound_posts": state.inbound.posts},
        {
            "sent": ["received_at", "message_id", "from", "reply_to", "to", "subject", "text", "headers", "categories",
                     "custom_args"],
            "rejected": ["status", "errors", "payload"],
            "event_posts": ["url", "events", "response_status", "error"],
            "inbound_posts": ["url", "from", "to", "subject", "raw", "attempts", "response_status", "response"],
        },
    )
    return app
