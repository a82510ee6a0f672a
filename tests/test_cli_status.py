"""`status [SHOP] [--json]` through the CLI, on constructed data in a database of its own
(so that "every shop" is exactly the shops made here)."""
from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from click.testing import CliRunner

from lead_orchestrator.cli.main import main
from lead_orchestrator.cli.status import problems
from tests.analyst_support import H, KEY_REFUSED, S, T0, built_database


@pytest.fixture(scope="module")
def status_db(pg):
    with built_database(pg, "status") as found:
        yield found


@pytest.fixture
def cli(status_db, settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", status_db[0])
    monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    yield lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_status_as_json_gives_every_shops_figures(cli, status_db):
    a, b, c = status_db[1]["shops"]
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["dispatcher_alive"] is False
    shops = {s["shop"]: s for s in found["shops"]}
    assert set(shops) == {a.slug, b.slug, c.slug}
    bravo = shops[b.slug]
    assert bravo["leads"] == {"active": 1}
    assert bravo["messages"] == {"scheduled": 1, "deferred": 0, "sending": 0, "unknown": 0,
                                 "next_send_at": (T0 + 2 * H).isoformat()}
    assert bravo["events"] == {"pending": 2, "processing": 1, "parked": 1, "dead": 1,
                               "oldest_pending_at": (T0 + 50 * S).isoformat(),
                               "parked_since": (T0 + 60 * S).isoformat(), "oldest_dead_at": (T0 + 70 * S).isoformat()}
    assert bravo["poll"]["health"] == "unauthorized" and bravo["poll"]["last_error"] == KEY_REFUSED
    assert bravo["last_webhook_at"] == (T0 + 90 * S).isoformat()
    assert any("refuses the shop's API key" in p for p in bravo["problems"])
    assert any("1 dead event(s)" in p for p in bravo["problems"])
    assert shops[a.slug]["messages"]["deferred"] == 1 and shops[a.slug]["messages"]["unknown"] == 1
    assert shops[c.slug]["poll"]["health"] == "not_polled" and shops[c.slug]["problems"] == []


def test_status_of_one_shop_in_plain_text(cli, status_db):
    a, b, _ = status_db[1]["shops"]
    out = cli("status", b.slug).output
    assert out.startswith("Dispatcher (fast path): NOT RUNNING"), out
    assert a.slug not in out
    for line in (f"{b.slug} · Shop {b.slug} · America/Chicago",
                 "  leads      1 active",
                 "  messages   1 scheduled, 0 deferred; next Mon 2027-03-01 11:00 CST",
                 "  inbox      2 pending, 1 processing, 1 parked, 1 dead; oldest pending Mon 2027-03-01 09:00 CST",
                 f"  CRM poll   unauthorized (3 error(s) in a row: {KEY_REFUSED}); last success Mon 2027-03-01 08:00 CST",
                 "  webhooks   last seen Mon 2027-03-01 09:01 CST",
                 "  ! 1 event(s) parked, waiting for the shop's CRM credentials"):
        assert line in out, out
    assert cli("status", "no-such-shop").exit_code != 0


def test_status_sees_a_live_dispatcher(cli, status_db):
    # The dispatcher holds this advisory lock on its listening connection for its whole life.
    with psycopg.connect(status_db[0], autocommit=True) as dispatcher:
        dispatcher.execute("SELECT pg_advisory_lock(4242001)")
        assert json.loads(cli("status", "--json").output)["dispatcher_alive"] is True
        assert cli("status").output.startswith("Dispatcher (fast path): alive")
    assert json.loads(cli("status", "--json").output)["dispatcher_alive"] is False


def test_problems_name_what_needs_a_look():
    now = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    calm = {"shop": "joes", "poll": {"health": "ok", "consecutive_errors": 0, "last_error": None},
            "events": {"parked": 0, "dead": 0, "oldest_pending_at": now - dt.timedelta(seconds=5)},
            "messages": {"unknown": 0}}
    assert problems(calm, now) == []
    troubled = {**calm, "poll": {"health": "failing", "consecutive_errors": 4, "last_error": "HTTP 503"},
                "events": {"parked": 0, "dead": 2, "oldest_pending_at": now - dt.timedelta(minutes=3)},
                "messages": {"unknown": 1}}
    assert problems(troubled, now) == [
        "the CRM poll is failing (4 error(s) in a row): HTTP 503",
        "2 dead event(s): `why joes ORDER_ID` says why; replay with `replay joes --order ORDER_ID`",
        "the oldest pending event has waited 180 s",
        "1 send(s) with an unknown outcome (never re-sent automatically)"]


def test_a_refused_crm_names_the_fix_of_the_shops_crm():
    now = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    refused = {"shop": "brakes", "poll": {"health": "unauthorized", "consecutive_errors": 1, "last_error": "401"},
               "events": {"parked": 0, "dead": 0, "oldest_pending_at": None}, "messages": {"unknown": 0}}
    [shopmonkey] = problems({**refused, "crm": "shopmonkey"}, now)
    assert "--shopmonkey-api-key" in shopmonkey
    [tekmetric] = problems({**refused, "crm": "tekmetric"}, now)
    assert "crm-app set tekmetric" in tekmetric and "--tekmetric-shop-id" in tekmetric
