"""Alerts: the Slack-compatible post and the SendGrid email (captured on a local HTTP
endpoint and in the SendGrid stand-in), and both sensors through real Dagster: a failing
run and a failing check each alert once, say what, which shop, since when and where to
look, and stay quiet until the condition clears."""
from __future__ import annotations

import datetime as dt
import logging

import pytest
from dagster import build_sensor_context

from lead_orchestrator.services.alerts import Alert, AlertChannels, changes, send, slack_payload
from orchestrator_dagster.alerts import (AlertsResource, check_alert_sensor, failing_conditions,
                                         run_failure_alert_sensor)
from orchestrator_dagster.checks import report_health
from orchestrator_dagster.definitions import defs
from orchestrator_dagster.schedules import window_for_tick
from tests.health_support import UTC, CaptureServer, add_event

SINCE = dt.datetime(2026, 11, 20, 14, 3, tzinfo=UTC)


def alert(**overrides) -> Alert:
    values = dict(key="check:stuck_events:joes", what="Check stuck_events failed", shop="joes",
                  detail="3 events parked", since=SINCE, link="http://ui.example/assets/leads?view=checks")
    return Alert(**{**values, **overrides})


def test_the_post_says_what_which_shop_since_when_and_where():
    payload = slack_payload(alert())
    assert payload["text"].splitlines() == [
        "[ERROR] Check stuck_events failed — shop joes", "Shop: joes", "Since: 2026-11-20 14:03:00 UTC",
        "Detail: 3 events parked", "Dagster UI: http://ui.example/assets/leads?view=checks"]
    assert payload["blocks"][0]["text"]["text"] == "[ERROR] Check stuck_events failed — shop joes"
    assert "*Since:* 2026-11-20 14:03:00 UTC" in payload["blocks"][1]["text"]["text"]
    assert slack_payload(alert(cleared=True))["text"].startswith("[cleared] ")


def test_each_condition_is_announced_when_it_appears_and_when_it_clears():
    a, b = alert(key="a"), alert(key="b")
    assert changes({}, {"a": a, "b": b}) == ([a, b], [])
    assert changes({"a": {}, "b": {}}, {"a": a, "b": b}) == ([], [])
    assert changes({"a": {}, "b": {}}, {"b": b}) == ([], ["a"])


def test_alerts_are_off_until_configured():
    assert not AlertChannels().enabled
    assert not AlertChannels(email_to=("ops@example.com",)).enabled  # no SendGrid account named
    assert AlertChannels(webhook_url="http://127.0.0.1:1/x").enabled


def test_post_and_email_reach_their_endpoints(standins):
    key = "SG.alerts-" + "k" * 20
    standins.sendgrid.add_api_key(key)
    with CaptureServer() as hook:
        channels = AlertChannels(webhook_url=hook.url, email_to=("ops@example.com", "lead@example.com"),
                                 email_from="alerts@example-deployment.com", sendgrid_api_key=key,
                                 sendgrid_base_url=standins.sendgrid_url)
        assert send(channels, alert())
    assert hook.posts[0]["content_type"] == "application/json"
    assert hook.posts[0]["json"] == slack_payload(alert())
    mails = [m for m in standins.sendgrid.sent.items() if "ops@example.com" in m.get("to", [])]
    assert len(mails) == 1 and "Check stuck_events failed — shop joes" in str(mails[0])


def test_an_unreachable_endpoint_is_reported_without_its_url(caplog):
    caplog.set_level(logging.WARNING)
    with CaptureServer(status=500) as hook:
        assert not send(AlertChannels(webhook_url=hook.url), alert())
    dead = CaptureServer()
    url = dead.url  # never started: the connection is refused
    dead._server.server_close()
    assert not send(AlertChannels(webhook_url=url), alert())
    assert "secret-token-xyz" not in caplog.text and "unreachable" in caplog.text


@pytest.fixture
def hook():
    with CaptureServer() as server:
        yield server


def test_a_failing_check_alerts_once_per_shop_until_it_clears(dagster_instance, db, make_shop, hook):
    shop = make_shop()
    parked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=25)
    add_event(db, shop, status="parked", received_at=parked_at, error="ShopMonkey refused the API key (401)")
    resources = {"alerts": AlertsResource(webhook_url=hook.url, ui_url="http://dagster.example:3000")}

    def tick(cursor):
        return check_alert_sensor.evaluate_tick(build_sensor_context(instance=dagster_instance, cursor=cursor,
                                                                     resources=resources))

    def mine():
        return [t for t in hook.texts() if f"shop {shop.slug}\n" in t]

    report_health(dagster_instance, db)
    first = tick(None)
    [text] = mine()
    assert text.startswith(f"[ERROR] Check stuck_events failed — shop {shop.slug}")
    assert f"Since: {parked_at:%Y-%m-%d %H:%M:%S} UTC" in text
    assert "1 events parked (waiting for CRM credentials): ShopMonkey refused the API key (401)" in text
    assert "Dagster UI: http://dagster.example:3000/assets/leads?view=checks&checkDetail=stuck_events" in text

    report_health(dagster_instance, db)  # still failing: no second alert
    second = tick(first.cursor)
    assert len(mine()) == 1

    with db.tenant_tx(shop.id) as conn:
        conn.execute("UPDATE inbox_events SET status = 'done'")
    report_health(dagster_instance, db)
    tick(second.cursor)
    assert len(mine()) == 2 and mine()[1].startswith(f"[cleared] Check stuck_events failed — shop {shop.slug}")

    # Checks nobody evaluated for a quarter of an hour (the health sensor stopped) are a condition too.
    later = dt.datetime.now(UTC) + dt.timedelta(minutes=16)
    stale = failing_conditions(dagster_instance, resources["alerts"], later)["checks:not_evaluated"]
    assert stale.shop == "all shops" and "health_checks_sensor" in stale.what
    assert "checks:not_evaluated" not in failing_conditions(dagster_instance, resources["alerts"],
                                                            dt.datetime.now(UTC))


def test_a_failing_run_alerts_once_per_failing_streak(dagster_instance, hook, connected_shop, admin):
    shop = connected_shop()
    resources = {"alerts": AlertsResource(webhook_url=hook.url)}
    job = defs.get_job_def("touchpoints_job")

    def run_for_shop(active: bool):
        # A window run for one shop fails while the shop is deactivated.
        admin.execute("UPDATE tenants SET active = %s WHERE id = %s", (active, shop.id))
        return job.execute_in_process(
            instance=dagster_instance, partition_key=window_for_tick(dt.datetime.now(UTC)), raise_on_error=False,
            run_config={"ops": {"send_due_follow_ups": {"config": {"shops": [shop.slug]}}}})

    def tick(cursor):
        # Built without the code location's name, like the in-process runs it watches.
        result = run_failure_alert_sensor.evaluate_tick(build_sensor_context(instance=dagster_instance,
                                                                             cursor=cursor, resources=resources))
        assert not [r.error for r in result.dagster_run_reactions or [] if r.error]
        return result.cursor

    def mine():
        return [t for t in hook.texts() if f"Shop: {shop.slug}\n" in t]

    cursor = tick(None)  # a run failure sensor starts from now
    failed = run_for_shop(active=False)
    assert not failed.success
    cursor = tick(cursor)
    [text] = mine()
    assert text.startswith("[ERROR] Run of touchpoints_job failed (partition ")
    assert f"step send_due_follow_ups: ValueError: no active shop named {shop.slug}" in text
    assert f"Dagster UI: http://127.0.0.1:3000/runs/{failed.run_id}" in text

    assert not run_for_shop(active=False).success  # the same condition again: no second alert
    cursor = tick(cursor)
    assert len(mine()) == 1

    assert run_for_shop(active=True).success  # it cleared, then fails again: a new alert
    assert not run_for_shop(active=False).success
    tick(cursor)
    assert len(mine()) == 2
    admin.execute("UPDATE tenants SET active = true WHERE id = %s", (shop.id,))
