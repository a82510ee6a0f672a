"""Twilio's ListMessage (`GET /2010-04-01/Accounts/{sid}/Messages.json`) for the stand-in:
what a sender asks when the answer to a create was lost.

Filters `To`, `From`, `DateSent`, `DateSent<`, `DateSent>` (a GMT date compares by day,
a time by moment, both inclusive; a message not sent yet has no date sent and matches no
DateSent filter), newest first, paged with `PageSize` (default 50, at most 1000), `Page`
and `PageToken` as Twilio's page envelope describes (`next_page_uri` etc.). Query
parameters follow `contracts/twilio_list_messages.schema.json`; a violation answers 400
with code 20001.
"""
from __future__ import annotations

import datetime as dt
import email.utils
from urllib.parse import urlencode

from fastapi import FastAPI, Request

from standins.contracts import validator
from standins.twilio_state import API_VERSION, TwilioError, TwilioState

DEFAULT_PAGE_SIZE = 50
FILTERS = ("To", "From", "DateSent", "DateSent<", "DateSent>")
HIDDEN = ("status_callback", "media_urls", "params")  # the stand-in's own bookkeeping


def parse_moment(value: str) -> dt.date | dt.datetime:
    """YYYY-MM-DD is a date; anything longer a moment in UTC."""
    if len(value) == 10:
        return dt.date.fromisoformat(value)
    if value[:1].isalpha():
        return email.utils.parsedate_to_datetime(value)
    moment = dt.datetime.fromisoformat(value.replace(" ", "T").rstrip("Z"))
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def sent_matches(date_sent: str | None, op: str, bound: dt.date | dt.datetime) -> bool:
    if not date_sent:
        return False  # queued, not sent yet: Twilio has no date sent to compare
    sent = email.utils.parsedate_to_datetime(date_sent)
    value = sent.astimezone(dt.timezone.utc).date() if not isinstance(bound, dt.datetime) else sent
    return {"=": value == bound, "<": value <= bound, ">": value >= bound}[op]


def select(messages: list[dict], account_sid: str, params: dict[str, str]) -> list[dict]:
    bounds = [(op, parse_moment(params[name])) for name, op in (("DateSent", "="), ("DateSent<", "<"),
                                                                  ("DateSent>", ">")) if name in params]
    chosen = [m for m in messages
              if m["account_sid"] == account_sid
              and ("To" not in params or m["to"] == params["To"])
              and ("From" not in params or m["from"] == params["From"])
              and all(sent_matches(m["date_sent"], op, bound) for op, bound in bounds)]
    chosen.reverse()  # the outbox is in creation order; Twilio lists the newest first
    return [{k: v for k, v in m.items() if k not in HIDDEN} for m in chosen]


def page_of(rows: list[dict], path: str, params: dict[str, str]) -> dict:
    size = int(params.get("PageSize") or DEFAULT_PAGE_SIZE)
    token = params.get("PageToken")
    page = int(params.get("Page") or 0)
    start = int(token[2:]) if token else page * size
    chunk = rows[start:start + size]
    filters = {k: params[k] for k in FILTERS if k in params}

    def uri(number: int, offset: int, with_token: bool = True) -> str:
        query = {**filters, "PageSize": size, "Page": number}
        if with_token:
            query["PageToken"] = f"PA{offset}"
        return f"{path}?{urlencode(query)}"

    return {
        "messages": chunk,
        "start": start,
        "end": start + max(len(chunk) - 1, 0),
        "page": page,
        "page_size": size,
        "uri": uri(page, start, with_token=bool(token)),
        "first_page_uri": uri(0, 0, with_token=False),
        "next_page_uri": uri(page + 1, start + size) if start + size < len(rows) else None,
        "previous_page_uri": uri(page - 1, max(start - size, 0)) if page > 0 else None,
    }


def add_message_list_route(app: FastAPI, state: TwilioState) -> None:
    from standins.twilio import basic_credentials

    @app.get(f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", tags=["Messages"])
    def list_messages(account_sid: str, request: Request) -> dict:
        state.authenticate(account_sid, *basic_credentials(request))
        params = dict(request.query_params)
        errors = list(validator("twilio_list_messages").iter_errors(params))
        if errors:
            field = ".".join(str(p) for p in errors[0].absolute_path) or "query"
            raise TwilioError(400, 20001, f"Invalid parameter: {field}")
        return page_of(select(state.messages.items(), account_sid, params), request.url.path, params)
