"""How an operator sees and sets email replies: `shops show` says whether replies are
received (and where copies go), `replies SLUG --forward-to` sets the shop's address, and
`up` says it once at start."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lead_orchestrator.cli.main import main
from lead_orchestrator.settings import Settings
from lead_orchestrator.runtime.stack import say_email_replies


@pytest.fixture
def cli(database_url, settings, monkeypatch):
    def run(*args, domain: str | None = None):
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("PUBLIC_BASE_URL", "https://leads.example.com")
        if domain:
            monkeypatch.setenv("INBOUND_PARSE_DOMAIN", domain)
        else:
            monkeypatch.delenv("INBOUND_PARSE_DOMAIN", raising=False)
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


def test_shops_show_says_when_replies_are_not_received(cli, make_shop):
    shop = make_shop()
    shown = json.loads(cli("shops", "show", shop.slug).output)["email_replies"]
    assert shown["configured"] is False and "INBOUND_PARSE_DOMAIN is unset" in shown["note"]


def test_shops_show_and_replies_say_where_replies_go(cli, make_shop):
    shop = make_shop(sendgrid_sender="service@joes.example")
    shown = json.loads(cli("shops", "show", shop.slug, domain="reply.leads.example").output)["email_replies"]
    assert shown == {"configured": True, "reply_to": "reply+<lead token>@reply.leads.example",
                     "inbound_parse_url": "https://leads.example.com/webhooks/sendgrid-inbound/parse",
                     "forward_to": "service@joes.example", "forward_to_is_custom": False}

    out = json.loads(cli("replies", shop.slug, "--forward-to", "Writers@Joes.Example",
                         domain="reply.leads.example").output)
    assert (out["forward_to"], out["forward_to_is_custom"]) == ("Writers@joes.example", True)
    refused = cli("replies", shop.slug, "--forward-to", "desk@reply.leads.example", domain="reply.leads.example")
    assert refused.exit_code != 0 and "inbound parse domain" in refused.output
    out = json.loads(cli("replies", shop.slug, "--forward-to-sender", domain="reply.leads.example").output)
    assert out["forward_to"] == "service@joes.example"
    assert cli("replies", "no-such-shop").exit_code != 0


def test_up_says_once_whether_replies_are_received(capsys):
    settings = Settings(PUBLIC_BASE_URL="https://leads.example.com")
    say_email_replies(settings, None)
    say_email_replies(settings, "reply.leads.example")
    unset, configured = capsys.readouterr().out.splitlines()
    assert "INBOUND_PARSE_DOMAIN is unset" in unset and "does not stop the follow-ups" in unset
    assert "reply+<lead token>@reply.leads.example" in configured
    assert "https://leads.example.com/webhooks/sendgrid-inbound/parse" in configured
