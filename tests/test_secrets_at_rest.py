"""Shop secrets at rest: ciphertext in the table, the plaintext back through every
reader, plain-text rows encrypted by the migration step, key rotation (library and
CLI), and redaction wherever a secret could surface."""
from __future__ import annotations

import json
import logging
import uuid

import psycopg
import pytest

from tests.conftest import scratch_database
from click.testing import CliRunner
from cryptography.fernet import Fernet
from psycopg.rows import dict_row
from pydantic import ValidationError

from tests.support import session_box
from lead_orchestrator import redaction
from lead_orchestrator.store.secret_box import SecretBox, SecretKeyError
from lead_orchestrator.store.shops import (SECRET_FIELDS, ShopChanges, create_shop, get_shop, list_shops, load_shop,
                                     update_shop)

SECRETS = {"shopmonkey_api_key": "sm-live-" + "k" * 24, "webhook_secret": "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==",
           "twilio_auth_token": "tw-token-" + "t" * 24, "sendgrid_api_key": "SG.key-" + "s" * 30}


def unique(prefix: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {k: f"{v}-{prefix}-{tag}" for k, v in SECRETS.items()}


def raw_row(conn, slug: str) -> dict:
    """The secrets as stored: the messaging keys in tenants, the ShopMonkey ones in
    shopmonkey_credentials (sql/0017)."""
    return conn.execute("SELECT sm.api_key AS shopmonkey_api_key, sm.webhook_secret, t.twilio_auth_token, "
                        "t.sendgrid_api_key FROM tenants t LEFT JOIN shopmonkey_credentials sm ON sm.tenant_id = t.id "
                        "WHERE t.slug = %s", (slug,)).fetchone()


def test_secrets_are_ciphertext_in_the_table_and_plain_through_every_reader(admin, db):
    secrets = unique("readers")
    slug = "enc-" + uuid.uuid4().hex[:8]
    created = create_shop(admin, slug, "Encrypted", ShopChanges(**secrets, active=False), session_box())
    stored = raw_row(admin, slug)
    for field, value in secrets.items():
        assert stored[field].startswith("fernet:"), field
        assert value not in stored[field], field
        assert getattr(created, field).get_secret_value() == value
    # A LIKE on the plaintext finds nothing anywhere in the tables.
    for value in secrets.values():
        for table in ("tenants", "shopmonkey_credentials"):
            hit = admin.execute(f"SELECT count(*) AS n FROM {table} t WHERE t::text LIKE %s",
                                (f"%{value}%",)).fetchone()
            assert hit["n"] == 0
    readers = [get_shop(admin, slug, session_box()), next(s for s in list_shops(admin, session_box()) if s.slug == slug)]
    with db.tenant_tx(created.id) as conn:  # the application's path, as lead_app
        readers.append(load_shop(conn, created.id, session_box()))
    for shop in readers:
        assert {f: getattr(shop, f).get_secret_value() for f in SECRET_FIELDS} == secrets


def test_update_encrypts_the_new_value_and_keeps_the_others(admin):
    secrets = unique("update")
    slug = "enc-" + uuid.uuid4().hex[:8]
    create_shop(admin, slug, "Update", ShopChanges(**secrets, active=False), session_box())
    before = raw_row(admin, slug)
    shop = update_shop(admin, slug, ShopChanges(twilio_auth_token="tw-rotated-token-0123456789"), session_box())
    after = raw_row(admin, slug)
    assert shop.twilio_auth_token.get_secret_value() == "tw-rotated-token-0123456789"
    assert after["twilio_auth_token"].startswith("fernet:") and "rotated" not in after["twilio_auth_token"]
    assert {k: after[k] for k in SECRET_FIELDS if k != "twilio_auth_token"} == \
           {k: before[k] for k in SECRET_FIELDS if k != "twilio_auth_token"}
    assert shop.webhook_secret.get_secret_value() == secrets["webhook_secret"]


def test_ciphertexts_differ_for_equal_secrets(admin):
    slug_a, slug_b = "enc-" + uuid.uuid4().hex[:8], "enc-" + uuid.uuid4().hex[:8]
    create_shop(admin, slug_a, "A", ShopChanges(webhook_secret="whsec_same_value_123", active=False), session_box())
    create_shop(admin, slug_b, "B", ShopChanges(webhook_secret="whsec_same_value_123", active=False), session_box())
    assert raw_row(admin, slug_a)["webhook_secret"] != raw_row(admin, slug_b)["webhook_secret"]


def test_a_wrong_key_fails_clearly_without_the_value(admin):
    secrets = unique("wrongkey")
    slug = "enc-" + uuid.uuid4().hex[:8]
    create_shop(admin, slug, "Wrong key", ShopChanges(**secrets, active=False), session_box())
    with pytest.raises(SecretKeyError) as caught:
        get_shop(admin, slug, SecretBox([Fernet.generate_key().decode()]))
    message = str(caught.value)
    assert "LEAD_ENCRYPTION_KEY" in message and slug in message
    assert not any(v in message for v in secrets.values())
    assert "fernet:" not in message


def test_malformed_keys_are_refused_without_echoing_them():
    from lead_orchestrator.store.secret_box import parse_keys

    with pytest.raises(SecretKeyError) as caught:
        parse_keys(Fernet.generate_key().decode() + ",not-a-real-key-but-secret")
    assert "#2" in str(caught.value) and "not-a-real-key-but-secret" not in str(caught.value)


# --- plaintext rows, rotation: on a scratch database (they rewrite every tenant row) --

@pytest.fixture
def scratch_url(pg, database_url):
    """An empty database in the session's cluster, migrated; dropped afterwards."""
    with scratch_database(pg, "scratch") as url:
        yield url


def test_plaintext_rows_from_before_are_encrypted_by_the_migration_step(scratch_url):
    from lead_orchestrator.store.migrations import apply_migrations

    secrets = unique("legacy")
    with psycopg.connect(scratch_url, autocommit=True, row_factory=dict_row) as conn:
        tenant = conn.execute("INSERT INTO tenants (slug, name, twilio_auth_token, sendgrid_api_key) "
                              "VALUES ('legacy', 'Legacy', %s, %s) RETURNING id",
                              (secrets["twilio_auth_token"], secrets["sendgrid_api_key"])).fetchone()["id"]
        conn.execute("INSERT INTO shopmonkey_credentials (tenant_id, api_key, webhook_secret) VALUES (%s, %s, %s)",
                     (tenant, secrets["shopmonkey_api_key"], secrets["webhook_secret"]))
        conn.execute("INSERT INTO tenants (slug, name) VALUES ('no-secrets', 'None')")
        assert raw_row(conn, "legacy") == secrets
        # Readable meanwhile (so a deploy does not break between code and migration).
        assert get_shop(conn, "legacy", session_box()).webhook_secret.get_secret_value() == secrets["webhook_secret"]
        apply_migrations(scratch_url, session_box())
        stored = raw_row(conn, "legacy")
        assert all(v.startswith("fernet:") for v in stored.values())
        assert raw_row(conn, "no-secrets") == dict.fromkeys(SECRET_FIELDS)
        shop = get_shop(conn, "legacy", session_box())
        assert {f: getattr(shop, f).get_secret_value() for f in SECRET_FIELDS} == secrets
        apply_migrations(scratch_url, session_box())
        assert raw_row(conn, "legacy") == stored  # nothing left to do: untouched


def test_rotation_re_encrypts_every_row_under_the_new_key(scratch_url):
    from lead_orchestrator.store.secret_rotation import rotate_secrets

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    old_box = SecretBox([old])
    shops = {f"rot-{i}": unique(f"rot{i}") for i in range(3)}
    with psycopg.connect(scratch_url, autocommit=True, row_factory=dict_row) as conn:
        for slug, secrets in shops.items():
            create_shop(conn, slug, slug, ShopChanges(**secrets, active=False), old_box)
        counts = rotate_secrets(conn, SecretBox([new, old]))
        assert sum(counts.values()) == 3 * len(SECRET_FIELDS)
        new_only = SecretBox([new])
        for slug, secrets in shops.items():
            shop = get_shop(conn, slug, new_only)
            assert {f: getattr(shop, f).get_secret_value() for f in SECRET_FIELDS} == secrets
            with pytest.raises(SecretKeyError):
                get_shop(conn, slug, old_box)
        # With a key set that cannot read the rows, rotation refuses and changes nothing.
        before = [raw_row(conn, s) for s in shops]
        with pytest.raises(SecretKeyError):
            rotate_secrets(conn, SecretBox([Fernet.generate_key().decode()]))
        assert [raw_row(conn, s) for s in shops] == before


@pytest.fixture
def cli_env(scratch_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", scratch_url)
    monkeypatch.setenv("LEAD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no .env of the work tree


def _cli(*args) -> str:
    from lead_orchestrator.cli.main import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_rotate_encryption_key_command_with_the_env_key(cli_env, monkeypatch, scratch_url):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("LEAD_ENCRYPTION_KEY", old)
    secrets = unique("cli")
    out = _cli("shops", "add", "cli-shop", "--inactive", "--webhook-secret", secrets["webhook_secret"],
               "--twilio-auth-token", secrets["twilio_auth_token"])
    assert json.loads(out)["webhook_secret"] == "set"
    assert not any(v in out for v in secrets.values())

    monkeypatch.setenv("LEAD_ENCRYPTION_KEY", f"{new},{old}")
    out = _cli("rotate-encryption-key")
    assert "re-encrypted 2 secret(s)" in out and "remove the older key" in out
    assert new not in out and old not in out
    with psycopg.connect(scratch_url, row_factory=dict_row) as conn:
        shop = get_shop(conn, "cli-shop", SecretBox([new]))
    assert shop.webhook_secret.get_secret_value() == secrets["webhook_secret"]

    monkeypatch.setenv("LEAD_ENCRYPTION_KEY", new)  # the old key retired
    shown = _cli("shops", "show", "cli-shop")
    assert json.loads(shown)["twilio_auth_token"] == "set"
    assert not any(v in shown for v in secrets.values())


def test_rotate_encryption_key_command_in_local_mode_replaces_the_key_file(cli_env, monkeypatch, scratch_url, tmp_path):
    monkeypatch.delenv("LEAD_ENCRYPTION_KEY", raising=False)
    _cli("shops", "add", "local-shop", "--inactive", "--sendgrid-api-key", "SG.local-mode-secret-0123456789")
    key_file = tmp_path / "data" / "encryption_key"
    first = key_file.read_text().strip()
    assert (key_file.stat().st_mode & 0o777) == 0o600

    out = _cli("rotate-encryption-key", "--generate-new-key")
    second = key_file.read_text().strip()
    assert second != first and "," not in second and "\n" not in second
    assert "re-encrypted 1 secret(s)" in out and first not in out and second not in out
    with psycopg.connect(scratch_url, row_factory=dict_row) as conn:
        assert get_shop(conn, "local-shop", SecretBox([second])).sendgrid_api_key.get_secret_value() == \
            "SG.local-mode-secret-0123456789"
        with pytest.raises(SecretKeyError):
            get_shop(conn, "local-shop", SecretBox([first]))


def test_print_new_key_gives_a_usable_fernet_key():
    key = _cli("rotate-encryption-key", "--print-new-key").strip()
    SecretBox([key])


# --- redaction -----------------------------------------------------------------------

def test_secret_fields_never_print(make_shop):
    shop = make_shop()
    values = [getattr(shop, f).get_secret_value() for f in SECRET_FIELDS]
    changes = ShopChanges(webhook_secret=values[1], twilio_auth_token=values[2])
    for text in (repr(shop), str(shop), repr(changes), str(changes.model_dump()), shop.model_dump_json()):
        assert not any(v in text for v in values), text
    with pytest.raises(ValidationError) as caught:
        ShopChanges(webhook_secret=values[1], time_zone="Not/AZone")
    assert values[1] not in str(caught.value)
    assert repr(session_box()).count("key") == 1 and "=" not in repr(session_box())


def test_known_secrets_are_redacted_from_log_records(make_shop, caplog):
    shop = make_shop()  # decrypting its secrets registers them
    secret = shop.twilio_auth_token.get_secret_value()
    log = logging.getLogger("tests.redaction")
    with caplog.at_level(logging.INFO):
        log.info("token is %s", secret)
        log.warning(f"inline {secret} in an f-string")
        try:
            raise RuntimeError(f"SDK error mentioning {secret}")
        except RuntimeError:
            log.exception("call failed")
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert secret not in text
    assert text.count(redaction.MASK) >= 3


def test_a_failed_dagster_step_stores_no_secret():
    """Dagster keeps a failed step's exception in its event log (and shows it in the
    UI); the ops are wrapped so that text is redacted first."""
    from dagster import DagsterInstance, job, op, serialize_value

    secret = "tw-" + uuid.uuid4().hex
    redaction.register(secret)

    @op
    @redaction.redacted_errors()
    def failing_step() -> None:
        raise RuntimeError(f"Twilio said: token {secret} is wrong")

    @job
    def failing_job():
        failing_step()

    with DagsterInstance.ephemeral() as instance:
        result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        stored = "\n".join(serialize_value(e) for e in instance.all_logs(result.run_id))
    assert not result.success
    assert "RedactedError" in stored and redaction.MASK in stored
    assert secret not in stored


def test_an_uncaught_exception_prints_redacted(tmp_path):
    import subprocess
    import sys

    secret = "sg-" + uuid.uuid4().hex
    script = ("from lead_orchestrator import redaction\n"
              f"redaction.register({secret!r})\n"
              f"raise RuntimeError('key ' + {secret!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "RuntimeError: key [REDACTED]" in done.stderr and secret not in done.stderr
