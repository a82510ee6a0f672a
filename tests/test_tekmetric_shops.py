"""Shops keep their CRM and its credentials in a per-CRM shape (sql/0017): an existing
database upgrades without losing a ShopMonkey key; a Tekmetric shop is added with its
Tekmetric shop id (checked against the partner app's scope) and gets a webhook URL whose
token is shown once and stored only as a digest; the partner app is a deployment
setting, encrypted."""
from __future__ import annotations

import json
import uuid
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from psycopg.rows import dict_row
from yoyo import get_backend, read_migrations

from tests.support import session_box
from lead_orchestrator.cli.main import main
from lead_orchestrator.crm.tekmetric.webhooks import token_sha256
from lead_orchestrator.store.db import Database, libpq_url
from lead_orchestrator.store.migrations import apply_migrations, migrations_dir
from lead_orchestrator.store.shops import (ShopChanges, ShopWrongCrm, TekmetricCredentials, create_shop, get_shop,
                                           load_shop, update_shop)
from tests.tekmetric_support import APP_CLIENT_ID

FIRST_NEW_MIGRATION = "0017"


@contextmanager
def empty_database(pg):
    if pg[0] is None:
        pytest.skip("needs the embedded cluster to create a database (TEST_DATABASE_URL is set)")
    name = f"upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
        su.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg[0].url(name)
    finally:
        with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
            su.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def apply_migrations_before(url: str, first_excluded: str) -> list[str]:
    backend = get_backend("postgresql+psycopg://" + libpq_url(url).partition("://")[2])
    wanted = read_migrations(str(migrations_dir())).filter(lambda m: m.id < first_excluded)
    with backend.lock():
        pending = backend.to_apply(wanted)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def test_an_existing_database_upgrades_without_losing_a_shopmonkey_key(pg, database_url, standins, vendors):
    box = session_box()
    with empty_database(pg) as url:
        applied = apply_migrations_before(url, FIRST_NEW_MIGRATION)
        assert applied and all(m < FIRST_NEW_MIGRATION for m in applied)
        old = {f"old-{i}": {"key": f"sm-old-key-{i}-{uuid.uuid4().hex}", "secret": f"whsec_old{i}{uuid.uuid4().hex}"}
               for i in range(3)}
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            stored = {}
            for slug, given in old.items():  # the old way: the key and secret are columns of tenants
                row = conn.execute(
                    "INSERT INTO tenants (slug, name, shopmonkey_api_key, webhook_secret, twilio_auth_token) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING shopmonkey_api_key, webhook_secret",
                    (slug, slug, box.encrypt(given["key"]), box.encrypt(given["secret"]),
                     box.encrypt("tw-token-" + slug))).fetchone()
                stored[slug] = (row["shopmonkey_api_key"], row["webhook_secret"])
            conn.execute("INSERT INTO tenants (slug, name, shopmonkey_api_key) VALUES ('plain-old', 'Plain', "
                         "'sm-plain-text-key-from-before-encryption')")
            conn.execute("INSERT INTO tenants (slug, name) VALUES ('no-key', 'No key')")

        assert FIRST_NEW_MIGRATION in " ".join(apply_migrations(url, session_box()))

        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            columns = {r["column_name"] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'tenants'").fetchall()}
            assert {"crm"} <= columns and not {"shopmonkey_api_key", "webhook_secret"} & columns
            carried = {r["slug"]: (r["api_key"], r["webhook_secret"]) for r in conn.execute(
                "SELECT t.slug, c.api_key, c.webhook_secret FROM shopmonkey_credentials c "
                "JOIN tenants t ON t.id = c.tenant_id").fetchall()}
            assert {slug: carried[slug] for slug in old} == stored  # the same ciphertext, moved as it was
            assert carried["plain-old"][0].startswith("fernet:")  # the migration step encrypted the plain one
            assert "no-key" not in carried
            shops = {slug: get_shop(conn, slug, session_box()) for slug in (*old, "plain-old", "no-key")}
        for slug, given in old.items():
            shop = shops[slug]
            assert shop.crm == "shopmonkey"
            assert shop.shopmonkey_api_key.get_secret_value() == given["key"]
            assert shop.webhook_secret.get_secret_value() == given["secret"]
            assert shop.twilio_auth_token.get_secret_value() == "tw-token-" + slug
        assert shops["plain-old"].shopmonkey_api_key.get_secret_value() == "sm-plain-text-key-from-before-encryption"
        assert shops["no-key"].crm == "shopmonkey" and shops["no-key"].shopmonkey_api_key is None

        # The application's path (lead_app, row-level security) reads them too, and the shop
        # still fetches its orders from ShopMonkey with its carried-over key.
        database = Database(url, max_size=2, name="upgrade-test", box=session_box()).open()
        try:
            shop = shops["old-0"]
            with database.tenant_tx(shop.id) as conn:
                loaded = load_shop(conn, shop.id, session_box())
                visible = conn.execute("SELECT count(*) AS n FROM shopmonkey_credentials").fetchone()["n"]
            assert loaded.shopmonkey_api_key.get_secret_value() == old["old-0"]["key"] and visible == 1
            standins.shopmonkey.add_shop(old["old-0"]["key"])
            created = standins.shopmonkey.create_order(old["old-0"]["key"], emit_webhook=False)
            order = vendors.shopmonkey(loaded).get_order(created["order"]["id"])
            assert order["id"] == created["order"]["id"]
        finally:
            database.close()


def test_credentials_of_another_crm_are_refused_and_nothing_is_written(admin, make_shop):
    slug = "tm-" + uuid.uuid4().hex[:8]
    with pytest.raises(ShopWrongCrm, match="--shopmonkey-api-key"):
        create_shop(admin, slug, "x", ShopChanges(crm="tekmetric", tekmetric_shop_id=5, shopmonkey_api_key="k" * 20,
                                                  active=False), session_box())
    with pytest.raises(ShopWrongCrm, match="Tekmetric shop id"):
        create_shop(admin, slug, "x", ShopChanges(crm="tekmetric", active=False), session_box())
    assert get_shop(admin, slug, session_box()) is None
    shopmonkey_shop = make_shop()
    with pytest.raises(ShopWrongCrm, match="--tekmetric-shop-id"):
        update_shop(admin, shopmonkey_shop.slug, ShopChanges(tekmetric_shop_id=5), session_box())
    assert get_shop(admin, shopmonkey_shop.slug, session_box()) == shopmonkey_shop


def test_a_shop_moves_from_shopmonkey_to_tekmetric(admin, make_shop):
    shop = make_shop()
    moved = update_shop(admin, shop.slug, ShopChanges(crm="tekmetric", tekmetric_shop_id=4242), session_box())
    assert moved.crm == "tekmetric" and moved.credentials.shop_id == 4242
    assert moved.shopmonkey_api_key is None and moved.twilio_auth_token == shop.twilio_auth_token
    left = admin.execute("SELECT count(*) AS n FROM shopmonkey_credentials WHERE tenant_id = %s",
                         (shop.id,)).fetchone()["n"]
    assert left == 0  # the old CRM's key is gone with the move


# --- the CLI ------------------------------------------------------------------------------

@pytest.fixture
def cli(database_url, settings, standins, receiver, monkeypatch, tmp_path):
    def run(*args, ok: bool = True):
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("PUBLIC_BASE_URL", receiver.url)
        monkeypatch.setenv("TEKMETRIC_BASE_URL", standins.tekmetric_url)
        monkeypatch.chdir(tmp_path)  # no .env of the work tree
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result

    return run


SENDING = ["--twilio-account-sid", "AC" + "0" * 32, "--twilio-auth-token", "tw-token-0123456789",
           "--twilio-sender", "+15125550100", "--time-zone", "America/Denver"]


def test_crm_app_set_stores_the_secret_encrypted_and_never_prints_it(cli, admin, tekmetric_app):
    client_id, secret = tekmetric_app
    out = cli("crm-app", "set", "tekmetric", "--client-id", client_id, "--client-secret", secret).output
    assert secret not in out and json.loads(out)["client_secret"] == "set"
    row = admin.execute("SELECT client_id, client_secret FROM crm_apps WHERE crm = 'tekmetric'").fetchone()
    assert row["client_id"] == client_id and row["client_secret"].startswith("fernet:") and secret not in row["client_secret"]
    shown = json.loads(cli("crm-app", "show", "tekmetric").output)
    assert shown["client_id"] == client_id and shown["client_secret"] == "set"


def test_shops_add_tekmetric_prints_the_webhook_url_once_and_keeps_only_its_digest(cli, admin, standins, receiver,
                                                                                   tekmetric_app):
    tm_shop = standins.tekmetric.add_shop(client_id=APP_CLIENT_ID)
    slug = "tm-cli-" + uuid.uuid4().hex[:6]
    result = cli("shops", "add", slug, "--crm", "tekmetric", "--tekmetric-shop-id", tm_shop.id, *SENDING)
    shown = json.loads(result.stdout)
    url = shown["webhook_url"]
    prefix = f"{receiver.url}/webhooks/tekmetric/"
    assert url.startswith(prefix) and url in result.stderr and "Tekmetric" in result.stderr
    token = url.removeprefix(prefix)
    assert len(token) >= 43
    assert shown["crm"] == "tekmetric" and shown["tekmetric_shop_id"] == tm_shop.id
    assert shown["tekmetric_partner_app"] == APP_CLIENT_ID and shown["shopmonkey_api_key"] == "not set"

    stored = admin.execute("SELECT c.* FROM tekmetric_credentials c JOIN tenants t ON t.id = c.tenant_id "
                           "WHERE t.slug = %s", (slug,)).fetchone()
    assert stored["shop_id"] == tm_shop.id and stored["webhook_token_sha256"] == token_sha256(token)
    for table in ("tenants", "tekmetric_credentials", "crm_apps"):
        assert admin.execute(f"SELECT count(*) AS n FROM {table} x WHERE x::text LIKE %s",
                             (f"%{token}%",)).fetchone()["n"] == 0
    again = json.loads(cli("shops", "show", slug).output)
    assert token not in json.dumps(again) and again["webhook_url"].startswith("set")

    # The URL works; after a rotation the old one is refused and the new one works.
    body = {"event": "Inspection completed", "data": {"id": 1}}
    assert httpx.post(url, json=body, timeout=10).status_code == 200
    rotated = cli("shops", "update", slug, "--rotate-webhook-token")
    new_url = json.loads(rotated.stdout)["webhook_url"]
    assert new_url != url and new_url in rotated.stderr
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    assert httpx.post(new_url, json=body, timeout=10).status_code == 200


def test_shops_add_refuses_a_tekmetric_shop_outside_the_apps_scope(cli, admin, standins, tekmetric_app):
    outsider = standins.tekmetric.add_shop(client_id=APP_CLIENT_ID)
    standins.tekmetric.disconnect_shop(outsider.id, APP_CLIENT_ID)
    slug = "tm-out-" + uuid.uuid4().hex[:6]
    result = cli("shops", "add", slug, "--crm", "tekmetric", "--tekmetric-shop-id", outsider.id, *SENDING, ok=False)
    assert f"Tekmetric shop {outsider.id} has not connected the partner app" in result.output
    assert "Integrations" in result.output
    assert get_shop(admin, slug, session_box()) is None
    # A shop may be added before it connects the app, when the administrator says so.
    cli("shops", "add", slug, "--crm", "tekmetric", "--tekmetric-shop-id", outsider.id, "--skip-scope-check",
        "--inactive")
    assert isinstance(get_shop(admin, slug, session_box()).credentials, TekmetricCredentials)


def test_shops_add_refuses_shopmonkey_options_for_a_tekmetric_shop(cli, admin):
    slug = "tm-mix-" + uuid.uuid4().hex[:6]
    result = cli("shops", "add", slug, "--crm", "tekmetric", "--tekmetric-shop-id", "12", "--shopmonkey-api-key",
                 "sm-key-0123456789", "--inactive", ok=False)
    assert "--shopmonkey-api-key is not for a tekmetric shop" in result.output
    assert get_shop(admin, slug, session_box()) is None
