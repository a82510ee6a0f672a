"""The touch-point CLI against the real database: sequences and templates validated when
saved, quiet hours, preview, and `why` answering "why didn't this customer get a text?"."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from tests.support import session_box
from lead_orchestrator.cli.main import main
from lead_orchestrator.domain.sequences import validate_sequence
from lead_orchestrator.store.shops import get_shop
from lead_orchestrator.domain.templates import TemplateError, validate_template
from lead_orchestrator.services.touch_sweep import send_due_touches
from tests.touchpoint_support import (UTC, RecordingVendors, SimClock, insert_lead, settle_sms_callbacks, unique_email,
                                      unique_phone)


@pytest.fixture
def cli(database_url, settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://leads.example.com")
    runner = CliRunner()
    yield lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def shop_settings(admin, slug) -> dict:
    return get_shop(admin, slug, session_box()).settings


@pytest.mark.parametrize("text,problem", [
    ("Hi {{ first_name }}, use code {{ coupon_code }}", "coupon_code"),
    ("Hi {{ first_name.__class__ }}", "unsafe"),
    ("Hi {{ first_name | no_such_filter }}", "no_such_filter"),
    ("Hi {% if first_name %}", "syntax"),
])
def test_templates_with_unknown_fields_or_bad_syntax_are_refused(text, problem):
    with pytest.raises(TemplateError, match=problem):
        validate_template(text)


@pytest.mark.parametrize("steps,problem", [
    ([], "non-empty"),
    ([{"step": 0, "offset_minutes": 0, "channel": "fax", "template": "first_sms"}], "channel"),
    ([{"step": 0, "offset_minutes": -5, "channel": "sms", "template": "first_sms"}], "offset_minutes"),
    ([{"step": 0, "offset_minutes": 0, "channel": "sms", "template": "nope"}], "unknown template"),
    ([{"step": 0, "offset_minutes": 0, "channel": "sms"}], "missing template"),
    ([{"step": 0, "offset_minutes": 0, "channel": "sms", "template": "first_sms"},
      {"step": 0, "offset_minutes": 5, "channel": "sms", "template": "followup_sms"}], "two sms"),
])
def test_bad_sequences_are_refused(steps, problem):
    with pytest.raises(ValueError, match=problem):
        validate_sequence(steps, {})


def test_sequence_set_validates_then_saves(cli, make_shop, admin, tmp_path):
    shop = make_shop()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"step": 0, "offset_minutes": 0, "channel": "sms", "template": "hello"}],
                               "templates": {"hello": {"body": "Hi {{ first_name }} {{ favourite_colour }}"}}}))
    result = cli("sequence", "set", shop.slug, "--file", bad)
    assert result.exit_code != 0 and "favourite_colour" in result.output
    assert "sequence" not in shop_settings(admin, shop.slug)

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"steps": [
        {"step": 0, "offset_minutes": 0, "channel": "email", "template": "hello_email"},
        {"step": 1, "offset_minutes": 30, "channel": "sms", "template": "hello"},
        {"step": 2, "offset_minutes": 2880, "channel": "sms", "template": "last_sms"}],
        "templates": {"hello": {"body": "Hi {{ first_name }}, {{ shop_name }} here about the {{ vehicle }}."},
                      "hello_email": {"subject": "Estimate #{{ estimate_number }}",
                                      "body": "Hi {{ first_name }}, it comes to {{ estimate_total }}."}}}))
    result = cli("sequence", "set", shop.slug, "--file", good)
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("sequence", "show", shop.slug).output)
    assert shown["custom"] is True
    assert [(s["step"], s["channel"], s["offset_minutes"]) for s in shown["steps"]] == [
        (0, "email", 0), (1, "sms", 30), (2, "sms", 2880)]
    assert cli("sequence", "reset", shop.slug).exit_code == 0
    assert json.loads(cli("sequence", "show", shop.slug).output)["custom"] is False


def test_templates_set_refuses_unknown_fields_and_saves_good_ones(cli, make_shop, admin):
    shop = make_shop()
    result = cli("templates", "set", shop.slug, "followup_sms", "--body", "Hi {{ first_name }} {{ nickname }}")
    assert result.exit_code != 0 and "nickname" in result.output
    assert "templates" not in shop_settings(admin, shop.slug)
    result = cli("templates", "set", shop.slug, "followup_sms", "--body", "Still thinking, {{ first_name }}?")
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("templates", "show", shop.slug).output)
    saved = shown["templates"]["followup_sms"]
    assert (saved["body"], saved["source"]) == ("Still thinking, {{ first_name }}?", "shop")
    assert "estimate_total" in shown["merge_fields"]


def test_quiet_hours_are_set_and_checked(cli, make_shop, admin):
    shop = make_shop()
    result = cli("quiet-hours", shop.slug, "--start", "09:00", "--end", "20:00", "--closed-days", "sun",
                 "--holidays", "US-FL", "--max-sms-per-24h", "3")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown == {"shop": shop.slug, "time_zone": "America/Chicago", "window": "09:00-20:00",
                     "closed_days": ["sun"], "holidays": "US-FL", "max_sms_per_24h": 3}
    wide = cli("quiet-hours", shop.slug, "--start", "07:00")
    assert wide.exit_code != 0 and "08:00-21:00" in wide.output
    assert cli("quiet-hours", shop.slug, "--holidays", "XX").exit_code != 0
    assert cli("quiet-hours", shop.slug, "--closed-days", "someday").exit_code != 0
    assert get_shop(admin, shop.slug, session_box()).send_window_start == dt.time(9, 0)


def test_shops_update_checks_the_sendgrid_event_key(cli, make_shop, standins):
    shop = make_shop()
    assert cli("shops", "update", shop.slug, "--sendgrid-event-public-key", "not-a-key").exit_code != 0
    result = cli("shops", "update", shop.slug, "--sendgrid-event-public-key", standins.sendgrid.public_key())
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sendgrid_event_public_key"] == standins.sendgrid.public_key()


def test_preview_renders_every_step_with_when_it_would_go_out(cli, make_shop):
    shop = make_shop(name="Gear Heads Garage", settings={"closed_weekdays": [6]})
    result = cli("preview", shop.slug, "--at", "2027-03-06T20:30")  # a Saturday evening
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("== step") == 5
    assert "goes out Sat 2027-03-06 20:30 CST" in out  # the first touch, at once
    assert "goes out Mon 2027-03-08 08:00 CST  (due Sat 2027-03-06 21:30 CST: deferred)" in out  # closed Sunday
    assert "Reply STOP to opt out." in out and out.count("Reply STOP to opt out.") == 1
    assert "List-Unsubscribe: <https://leads.example.com/unsubscribe/<token>>" in out
    assert shop.postal_address in out and "Hi Dana" in out and "$849.50" in out


def test_why_prints_a_leads_timeline_with_every_decision(cli, db, vendors, connected_shop, receiver, admin):
    from tests.test_receiver_twilio import inbound, post_twilio

    shop = connected_shop(send_window_start="08:00", send_window_end="21:00")
    phone = unique_phone()
    t0 = dt.datetime(2027, 3, 2, 2, 30, tzinfo=UTC)  # Monday 20:30 in Chicago
    clock = SimClock(t0)
    recording = RecordingVendors(vendors, clock)
    lead = insert_lead(db, shop, first_seen=t0, phone=phone, email=unique_email(), order_id="order-why-1")
    send_due_touches(db, recording, now=t0, due_before=t0, clock=clock, tenant_ids=[shop.id])
    clock.set(t0 + dt.timedelta(hours=1))  # 21:30: step 1 falls in quiet hours
    send_due_touches(db, recording, now=clock(), due_before=clock(), clock=clock, tenant_ids=[shop.id])
    assert post_twilio(receiver, shop, "inbound", inbound(shop, phone, "STOP")).status_code == 200
    settle_sms_callbacks(admin, lead["id"])

    out = cli("why", shop.slug, "order-why-1").output
    assert f"Lead {lead['id']} of {shop.slug}: order order-why-1" in out
    assert "status     stopped (opted_out)" in out, out
    assert f"consent    sms {phone}: OPTED OUT (sms_keyword" in out
    assert "step 0 sms sent" in out and "step 0 email sent" in out
    assert "step 1 sms deferred (quiet_hours) until Tue 2027-03-02 08:00 CST" in out
    assert f"sms {phone} opted out (sms_keyword)" in out
    assert "lead stopped: opted_out, 3 pending touch(es) cancelled" in out
    assert "step 0 sms delivered" in out
    assert cli("why", shop.slug, phone).output == out  # found by phone too

    stranger = unique_phone()
    assert post_twilio(receiver, shop, "inbound", inbound(shop, stranger, "stop")).status_code == 200
    out = cli("why", shop.slug, stranger).output
    assert f"No lead of {shop.slug} reaches {stranger}" in out and "OPTED OUT" in out
    assert cli("why", shop.slug, "nothing-like-this").exit_code != 0


def test_the_link_merge_field_is_set_per_shop_and_required_by_templates_that_use_it(cli, make_shop, admin):
    shop = make_shop()
    refused = cli("templates", "set", shop.slug, "book_sms", "--body", "Book online: {{ link }}")
    assert refused.exit_code != 0 and "no link" in refused.output
    assert "templates" not in shop_settings(admin, shop.slug)
    for bad in ("booking page", "ftp://example.com/x", "https://", "javascript:alert(1)"):
        assert cli("templates", "link", shop.slug, bad).exit_code != 0, bad

    assert cli("templates", "link", shop.slug, "https://book.example.com/gear").exit_code == 0
    assert json.loads(cli("templates", "link", shop.slug).output)["link"] == "https://book.example.com/gear"
    assert cli("templates", "set", shop.slug, "book_sms", "--body", "Book online: {{ link }}").exit_code == 0
    steps = [{"step": 0, "offset_minutes": 0, "channel": "sms", "template": "book_sms"}]
    shop = get_shop(admin, shop.slug, session_box())
    from lead_orchestrator.domain.messages import compose
    from lead_orchestrator.domain.sequences import sequence_for

    step = sequence_for({**shop.settings, "sequence": steps})[0]
    assert compose(shop, step, {"first_name": "Dana"}, first_sms=True, unsubscribe_url=None).body.startswith(
        "Book online: https://book.example.com/gear")

    kept = cli("templates", "link", shop.slug, "--remove")
    assert kept.exit_code != 0 and "book_sms" in kept.output  # a template still uses it
    assert shop_settings(admin, shop.slug)["link"] == "https://book.example.com/gear"
    assert cli("templates", "set", shop.slug, "book_sms", "--body", "Call us, {{ first_name }}").exit_code == 0
    assert cli("templates", "link", shop.slug, "--remove").exit_code == 0
    assert "link" not in shop_settings(admin, shop.slug)
