"""The Twilio stand-in's message list (ListMessage), driven by the official SDK, and the
faults that lose an answer after the message was created."""
from __future__ import annotations

import datetime as dt

import httpx
import pytest
import requests
from twilio.base.exceptions import TwilioRestException

from lead_orchestrator.messaging.sdk_clients import make_twilio_client
from tests.standins.accounts import TWILIO_SID, TWILIO_TOKEN
from tests.support import wait_for

SHOP = "+15125550100"
CUSTOMER = "+15125550143"
OTHER = "+15125550144"


@pytest.fixture
def client(servers):
    return make_twilio_client(TWILIO_SID, TWILIO_TOKEN, servers.twilio_url)


def sent(servers, sid: str) -> bool:
    message = servers.twilio.message(sid)
    return bool(message and message["date_sent"])


def test_list_by_to_and_date_sent_newest_first(servers, client):
    first = client.messages.create(to=CUSTOMER, from_=SHOP, body="one")
    second = client.messages.create(to=CUSTOMER, from_=SHOP, body="two")
    client.messages.create(to=OTHER, from_=SHOP, body="three")
    wait_for(lambda: sent(servers, first.sid) and sent(servers, second.sid), message="messages sent")
    today = dt.datetime.now(dt.timezone.utc).date()
    listed = client.messages.list(to=CUSTOMER, date_sent_after=str(today - dt.timedelta(days=1)))
    assert [m.sid for m in listed] == [second.sid, first.sid]
    assert [m.body for m in listed] == ["two", "one"] and listed[0].date_sent is not None
    assert client.messages.list(to=CUSTOMER, date_sent_after=str(today + dt.timedelta(days=1))) == []
    assert [m.sid for m in client.messages.list(to=CUSTOMER, date_sent=str(today))] == [second.sid, first.sid]
    assert len(client.messages.list(from_=SHOP)) == 3


def test_a_message_not_sent_yet_matches_no_date_sent_filter(servers, client):
    servers.twilio.callback_delay = 30.0  # stays queued for the test
    try:
        queued = client.messages.create(to=CUSTOMER, from_=SHOP, body="queued")
        today = str(dt.datetime.now(dt.timezone.utc).date())
        assert client.messages.list(to=CUSTOMER, date_sent_after=today) == []
        assert [m.sid for m in client.messages.list(to=CUSTOMER)] == [queued.sid]  # unfiltered, it is there
    finally:
        servers.twilio.callback_delay = 0.05
        servers.twilio.reset()  # forgets the pending callbacks


def test_pages_follow_next_page_uri(servers, client):
    sids = [client.messages.create(to=CUSTOMER, from_=SHOP, body=f"m{i}").sid for i in range(7)]
    page = client.messages.page(to=CUSTOMER, page_size=3)
    assert [m.sid for m in page] == sids[::-1][:3]
    assert [m.sid for m in client.messages.list(to=CUSTOMER, page_size=3)] == sids[::-1]  # the SDK pages on


def test_list_contract_errors_answer_20001(servers, client):
    url = f"{servers.twilio_url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    for query in ({"PageSize": "5000"}, {"DateSent>": "yesterday"}, {"To": "5125550143"}):
        r = httpx.get(url, params=query, auth=(TWILIO_SID, TWILIO_TOKEN))
        assert (r.status_code, r.json()["code"]) == (400, 20001), query
    assert httpx.get(url, auth=(TWILIO_SID, "wrong")).status_code == 401


def test_fail_after_work_creates_the_message_then_answers_500(servers, client):
    servers.twilio.fail_after_work_next(1, 500)
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(to=CUSTOMER, from_=SHOP, body="taken anyway")
    assert info.value.status == 500
    assert [m["body"] for m in servers.twilio.messages.items()] == ["taken anyway"]
    assert servers.twilio.rejected.items() == []


def test_drop_is_a_shared_control_route(servers, client):
    assert httpx.post(f"{servers.twilio_url}/_standin/drop", json={"count": 1}).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        client.messages.create(to=CUSTOMER, from_=SHOP, body="dropped")
    assert len(servers.twilio.messages.items()) == 1
