"""SendGrid's Email Activity API (`GET /v3/messages`) for the stand-in: what a sender asks
when the answer to a Mail Send was lost.

It is a paid add-on at SendGrid, off by default here too: without it the answer is
400 `{"errors": [{"message": "authorization required"}]}` (what SendGrid answers an
account without the add-on). `state.enable_email_activity()` or
`POST /_standin/email-activity {"enabled": true}` turns it on.

The query language is SendGrid's, reduced to what a sender needs: clauses joined by AND,
each `unique_args['name']="value"` (custom args), `to_email`, `from_email`, `subject`,
`status` or `msg_id` `="value"`, or `msg_id LIKE 'prefix%'`; parentheses around a clause
are allowed. Anything else answers 400. Each accepted mail is one row per recipient:
`{from_email, msg_id, subject, to_email, status, opens_count, clicks_count,
last_event_time}`, `status` being `delivered` or `not_delivered` (listed bounces).
"""
from __future__ import annotations

import re

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel

from standins.contracts import validator
from standins.sendgrid_state import SendGridError, SendGridState

CLAUSE = re.compile(
    r"""^\(?\s*(?:unique_args\['(?P<arg>[^']+)'\]|(?P<field>to_email|from_email|subject|status|msg_id))\s*"""
    r"""(?:=\s*"(?P<value>[^"]*)"|\s+LIKE\s+'(?P<prefix>[^'%]*)%')\s*\)?$""",
    re.IGNORECASE,
)


def parse_query(query: str) -> list[tuple[str, str, str]]:
    """[(kind, name, value)]: kind is `arg`, `field` or `prefix` (msg_id LIKE)."""
    clauses = []
    for part in re.split(r"\s+AND\s+", query.strip(), flags=re.IGNORECASE):
        m = CLAUSE.match(part.strip())
        if m is None or (m["prefix"] is not None and (m["field"] or "").lower() != "msg_id"):
            raise SendGridError.one(400, f"invalid query: {part.strip()[:100]}", field="query")
        if m["arg"] is not None:
            clauses.append(("arg", m["arg"], m["value"]))
        elif m["prefix"] is not None:
            clauses.append(("prefix", "msg_id", m["prefix"]))
        else:
            clauses.append(("field", m["field"].lower(), m["value"]))
    return clauses


def activity_rows(state: SendGridState) -> list[dict]:
    rows = []
    for record in reversed(state.sent.items()):  # newest first
        for i, address in enumerate(record["to"]):
            rows.append({
                "from_email": record["from"],
                "msg_id": f"{record['message_id']}.filterdrecv-standin-{i}.0",
                "subject": record["subject"],
                "to_email": address,
                "status": "not_delivered" if address.lower() in state.bounce_addresses else "delivered",
                "opens_count": 0,
                "clicks_count": 0,
                "last_event_time": record["received_at"],
                "_args": record["custom_args"],
            })
    return rows


def matches(row: dict, clauses: list[tuple[str, str, str]]) -> bool:
    for kind, name, value in clauses:
        if kind == "arg" and str(row["_args"].get(name)) != value:
            return False
        if kind == "field" and str(row[name]) != value:
            return False
        if kind == "prefix" and not row["msg_id"].startswith(value):
            return False
    return True


class ActivitySwitch(BaseModel):
    enabled: bool


def add_email_activity_routes(app: FastAPI, state: SendGridState) -> None:
    @app.get("/v3/messages", tags=["Email Activity"])
    def filter_messages(request: Request) -> dict:
        state.authenticate(request.headers.get("authorization"))
        if not state.email_activity_enabled:
            raise SendGridError(400, [{"message": "authorization required"}])
        params = dict(request.query_params)
        errors = list(validator("sendgrid_email_activity").iter_errors(params))
        if errors:
            field = ".".join(str(p) for p in errors[0].absolute_path) or "query"
            raise SendGridError.one(400, errors[0].message, field=field)
        clauses = parse_query(params["query"])
        limit = int(params.get("limit") or 10)
        found = [row for row in activity_rows(state) if matches(row, clauses)][:limit]
        return {"messages": [{k: v for k, v in row.items() if not k.startswith("_")} for row in found]}

    control = APIRouter(prefix="/_standin", tags=["stand-in control"])

    @control.post("/email-activity")
    def switch(s: ActivitySwitch) -> dict:
        state.enable_email_activity(s.enabled)
        return {"email_activity": s.enabled}

    app.include_router(control)
