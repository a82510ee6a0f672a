"""Configuration is input: base URLs are checked and normalised at start (a clear error
naming the variable), and shop settings are checked before anything is written, by the
shop model itself, so the CLI and any other entry point refuse the same mistakes."""
from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError

from tests.support import session_box
from lead_orchestrator.cli.main import main
from lead_orchestrator.settings import ConfigError, Settings, load_settings
from lead_orchestrator.store.shops import ShopCannotSend, ShopChanges, create_shop, get_shop, update_shop

URL_VARIABLES = ("PUBLIC_BASE_URL", "SHOPMONKEY_BASE_URL", "TWILIO_API_BASE_URL", "SENDGRID_API_BASE_URL",
                 "TEKMETRIC_BASE_URL")


# --- base URLs ---------------------------------------------------------------------------

def test_local_addresses_follow_the_ports_unless_set(monkeypatch):
    for variable in ("PUBLIC_BASE_URL", "DAGSTER_UI_URL", "RECEIVER_HOST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("RECEIVER_PORT", "9100")
    monkeypatch.setenv("DAGSTER_PORT", "9200")
    settings = Settings()
    assert (settings.public_base_url, settings.dagster_ui_url) == ("http://127.0.0.1:9100", "http://127.0.0.1:9200")
    monkeypatch.setenv("RECEIVER_HOST", "0.0.0.0")  # listening everywhere: links still name an address
    assert Settings().public_base_url == "http://127.0.0.1:9100"
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://hooks.example.com/")
    assert Settings().public_base_url == "https://hooks.example.com"


@pytest.mark.parametrize("variable", URL_VARIABLES)
@pytest.mark.parametrize("value,problem", [
    ("hooks.example.com", "must start with http:// or https://"),
    ("ftp://hooks.example.com", "must start with http:// or https://"),
    ("https://", "must name a host"),
    ("https://hooks.example.com:99999", "must name a host"),
    ("https://hooks.example.com/?x=1", "must not have a query"),
    ("https://user:hunter2@hooks.example.com", "must not contain credentials"),
])
def test_a_bad_base_url_is_refused_naming_the_variable(variable, value, problem, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and problem in message
    assert "hunter2" not in message


@pytest.mark.parametrize("variable", URL_VARIABLES)
def test_base_urls_lose_their_trailing_slash(variable):
    settings = Settings(**{variable: "HTTPS://hooks.example.com/leads//"})
    field = next(name for name, f in Settings.model_fields.items() if f.alias == variable)
    assert getattr(settings, field) == "https://hooks.example.com/leads"


def test_callback_and_unsubscribe_links_are_urls_whatever_the_trailing_slash(make_shop):
    from lead_orchestrator.services.shop_clients import vendors_from_settings

    settings = Settings(PUBLIC_BASE_URL="https://hooks.example.com/", APP_SECRET_KEY=uuid.uuid4().hex)
    vendors = vendors_from_settings(settings)
    shop = make_shop()
    assert vendors.status_callback_url(shop, 7) == f"https://hooks.example.com/webhooks/twilio/{shop.slug}/status?touch=7"
    assert vendors.unsubscribe_url(shop, "a@b.example").startswith("https://hooks.example.com/unsubscribe/")


def test_the_dagster_resource_normalises_and_checks_the_same_way():
    from orchestrator_dagster.resources import VendorsResource

    def resource(public: str) -> VendorsResource:
        return VendorsResource(shopmonkey_base_url="https://api.shopmonkey.cloud/", twilio_api_base_url="https://api.twilio.com",
                               sendgrid_api_base_url="https://api.sendgrid.com", public_base_url=public,
                               app_secret_key="k")

    vendors = resource("https://hooks.example.com/").vendors()
    assert (vendors.public_base_url, vendors.shopmonkey_base_url) == ("https://hooks.example.com",
                                                                       "https://api.shopmonkey.cloud")
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        resource("hooks.example.com").vendors()


def test_every_command_stops_with_the_error_and_no_traceback(monkeypatch):
    monkeypatch.setenv("PUBLIC_BASE_URL", "hooks.example.com")
    result = CliRunner().invoke(main, ["shops", "list"])
    assert result.exit_code == 1
    assert "PUBLIC_BASE_URL must start with http:// or https://" in result.output
    assert "Traceback" not in result.output


# --- shops -------------------------------------------------------------------------------

SMS = {"twilio_account_sid": "AC" + "0123456789abcdef" * 2, "twilio_auth_token": "token-0123456789",
       "twilio_sender": "+15125550100"}
EMAIL = {"sendgrid_api_key": "SG.abcdefghijklmnopqrstuv.0123456789", "sendgrid_sender": "service@example-shop.com",
         "postal_address": "100 Main St, Austin, TX 78701"}


@pytest.mark.parametrize("field,value,problem", [
    ("twilio_account_sid", "AC123", "not a Twilio account SID"),
    ("twilio_account_sid", "SK" + "0" * 32, "not a Twilio account SID"),
    ("twilio_account_sid", "AC" + "g" * 32, "not a Twilio account SID"),
    ("twilio_sender", "MG123", "not a Messaging Service SID"),
    ("twilio_sender", "5550100", "not a valid phone number"),
    ("shop_phone", "MG" + "0" * 32, "not a valid phone number"),
    ("sendgrid_api_key", "xkeysib-0123456789abcdef", "not a SendGrid API key"),
    ("sendgrid_api_key", "SG.short", "not a SendGrid API key"),
    ("sendgrid_sender", "service at example.com", "not an e-mail address"),
    ("sendgrid_sender", "service@localhost", "not an e-mail address"),
    ("time_zone", "Central Time", "unknown time zone"),
])
def test_malformed_shop_settings_are_refused(field, value, problem):
    with pytest.raises(ValidationError) as caught:
        ShopChanges(**{field: value})
    assert problem in str(caught.value)
    if field == "sendgrid_api_key":
        assert value not in str(caught.value)  # a secret, even a wrong one, is never repeated


def test_well_formed_shop_settings_are_kept_normalised():
    changes = ShopChanges(twilio_account_sid=" " + SMS["twilio_account_sid"], twilio_sender="MG" + "ab" * 16,
                          sendgrid_sender="Service@Example-Shop.COM", shop_phone="(512) 555-0199",
                          sendgrid_api_key=EMAIL["sendgrid_api_key"], time_zone="America/Denver")
    assert changes.twilio_account_sid == SMS["twilio_account_sid"]
    assert changes.twilio_sender == "MG" + "ab" * 16
    assert changes.sendgrid_sender == "Service@example-shop.com"
    assert changes.shop_phone == "+15125550199"
    assert isinstance(changes.sendgrid_api_key, SecretStr)


def _slug() -> str:
    return "cfg-" + uuid.uuid4().hex[:8]


def test_an_active_shop_that_cannot_send_is_refused_and_nothing_is_written(admin):
    slug = _slug()
    with pytest.raises(ShopCannotSend) as caught:
        create_shop(admin, slug, "Mute", ShopChanges(**{**SMS, "twilio_sender": None},
                                                     **{**EMAIL, "postal_address": None}), session_box())
    message = str(caught.value)
    assert "SMS needs twilio_sender" in message and "email needs postal_address" in message
    assert get_shop(admin, slug, session_box()) is None


@pytest.mark.parametrize("changes", [SMS, EMAIL, {**SMS, **EMAIL}, {"active": False}], ids=["sms", "email", "both",
                                                                                            "inactive"])
def test_a_shop_that_can_send_one_way_or_is_inactive_is_created(changes, admin):
    slug = _slug()
    assert create_shop(admin, slug, slug, ShopChanges(**changes), session_box()).slug == slug


def test_an_update_may_not_leave_an_active_shop_unable_to_send(admin):
    slug = _slug()
    create_shop(admin, slug, slug, ShopChanges(active=False, webhook_secret="whsec_cfg_secret"), session_box())
    with pytest.raises(ShopCannotSend):
        update_shop(admin, slug, ShopChanges(active=True), session_box())
    assert get_shop(admin, slug, session_box()).active is False
    # Unrelated changes of a shop that cannot send yet still go through ...
    assert update_shop(admin, slug, ShopChanges(time_zone="America/Denver"), session_box()).time_zone == "America/Denver"
    # ... and so does giving it a channel and activating it.
    assert update_shop(admin, slug, ShopChanges(active=True, **EMAIL), session_box()).active is True


@pytest.fixture
def cli(database_url, settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
    yield lambda *args: CliRunner().invoke(main, list(args))


def test_shops_add_refuses_a_malformed_sid_and_a_shop_that_cannot_send(cli, admin):
    slug = _slug()
    bad_sid = cli("shops", "add", slug, "--twilio-account-sid", "AC123", "--twilio-auth-token", "t",
                  "--twilio-sender", "+15125550100")
    assert bad_sid.exit_code == 2 and "'AC123' is not a Twilio account SID" in bad_sid.output
    mute = cli("shops", "add", slug, "--sendgrid-api-key", EMAIL["sendgrid_api_key"],
               "--sendgrid-sender", "service@example-shop.com")
    assert mute.exit_code == 1 and "email needs postal_address" in mute.output and "--inactive" in mute.output
    assert get_shop(admin, slug, session_box()) is None
    ok = cli("shops", "add", slug, "--sendgrid-api-key", EMAIL["sendgrid_api_key"],
             "--sendgrid-sender", "service@example-shop.com", "--postal-address", EMAIL["postal_address"])
    assert ok.exit_code == 0, ok.output
    assert get_shop(admin, slug, session_box()).active is True
