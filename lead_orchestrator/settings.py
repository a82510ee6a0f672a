"""The one settings object: every environment variable the product reads is declared here.

A `.env` file in the working directory may set them. Unset vendor base URLs mean the
vendors' real hosts; an unset DATABASE_URL means an embedded PostgreSQL under DATA_DIR.

Configuration is input: the base URLs (PUBLIC_BASE_URL and the vendors') are checked and
normalised here, at start, once for every process: http or https, a host, no query, no
credentials, no trailing slash (callback and unsubscribe links are built by appending
"/webhooks/..." to them). A bad value stops the process with a message naming the
variable (`ConfigError`) instead of producing links that lead nowhere.
"""
from __future__ import annotations

import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SHOPMONKEY_REAL_URL = "https://api.shopmonkey.cloud"
TWILIO_REAL_URL = "https://api.twilio.com"
SENDGRID_REAL_URL = "https://api.sendgrid.com"
TEKMETRIC_REAL_URL = "https://shop.tekmetric.com"  # the sandbox: https://sandbox.tekmetric.com
_HOST_NAME = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


class ConfigError(ValueError):
    """A setting's value cannot work; the message names the variable."""


def base_url(value: str, variable: str) -> str:
    """`value` as a base URL to append paths to: http(s)://host[:port][/path], without a
    trailing slash. Raises ConfigError naming `variable` otherwise."""
    text = value.strip()
    shown = text if "@" not in text else "(a URL with credentials)"  # never echo a password
    example = f"e.g. {variable}=https://hooks.example.com"
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not text.lower().startswith(f"{parts.scheme.lower()}://"):
        raise ConfigError(f"{variable} must start with http:// or https:// ({example}); got {shown!r}")
    try:
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        port_ok = False
    if not parts.hostname or not port_ok:
        raise ConfigError(f"{variable} must name a host (and a valid port, if any) ({example}); got {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{variable} must not contain credentials; got {shown!r}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(f"{variable} must not have a query or a fragment; got {shown!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error never repeats a value (some hold secrets).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    database_url: str | None = Field(default=None, alias="DATABASE_URL", repr=False)  # may hold a password
    shopmonkey_base_url: str = Field(default=SHOPMONKEY_REAL_URL, alias="SHOPMONKEY_BASE_URL")
    twilio_api_base_url: str = Field(default=TWILIO_REAL_URL, alias="TWILIO_API_BASE_URL")
    sendgrid_api_base_url: str = Field(default=SENDGRID_REAL_URL, alias="SENDGRID_API_BASE_URL")
    # Tekmetric's API (paths under /api/v1). The partner app's client id and secret are not
    # settings: they are stored encrypted in the database (`crm-app set tekmetric`).
    tekmetric_base_url: str = Field(default=TEKMETRIC_REAL_URL, alias="TEKMETRIC_BASE_URL")
    dagster_home: Path | None = Field(default=None, alias="DAGSTER_HOME")

    data_dir: Path = Field(default=Path(".data"), alias="LEAD_DATA_DIR")
    # Where Twilio/SendGrid/ShopMonkey reach the receiver (status callbacks, unsubscribe links).
    # Unset: the receiver's own address (RECEIVER_HOST:RECEIVER_PORT), right for local use.
    public_base_url: str = Field(default=None, alias="PUBLIC_BASE_URL", validate_default=False)
    receiver_host: str = Field(default="127.0.0.1", alias="RECEIVER_HOST")
    receiver_port: int = Field(default=8000, alias="RECEIVER_PORT")
    dagster_port: int = Field(default=3000, alias="DAGSTER_PORT")
    # The production layout (`up --production`, deploy/Procfile, deploy/systemd/): uvicorn
    # worker processes sharing the receiver's port, and the Dagster code server's address.
    receiver_workers: int = Field(default=2, gt=0, alias="RECEIVER_WORKERS")
    dagster_code_server_host: str = Field(default="127.0.0.1", alias="DAGSTER_CODE_SERVER_HOST")
    dagster_code_server_port: int = Field(default=4000, alias="DAGSTER_CODE_SERVER_PORT")
    # Upper bounds of the application-database pools, per process (docs/deployment.md,
    # Database connections): a receiver process (each uvicorn worker); a dispatcher (its
    # workers share the pool, holding a connection only inside a transaction, never
    # across a vendor call); the Dagster code server and each run. Each process also
    # keeps a few connections of its own beside its pool (listen, lease, sender, writer).
    receiver_db_pool_size: int = Field(default=4, ge=1, alias="RECEIVER_DB_POOL_SIZE")
    dispatcher_db_pool_size: int = Field(default=16, ge=2, alias="DISPATCHER_DB_POOL_SIZE")
    dagster_db_pool_size: int = Field(default=2, ge=1, alias="DAGSTER_DB_POOL_SIZE")
    # The process's name on its database connections: libpq's own variable, which the
    # production layout and the systemd units set per process (see connection_name).
    process_name: str | None = Field(default=None, alias="PGAPPNAME")
    # `up`: the local stand-ins' ports, and which vendors to use ("standins" or "real";
    # unset: the stand-ins unless a vendor base URL is set).
    shopmonkey_standin_port: int = Field(default=8701, alias="SHOPMONKEY_STANDIN_PORT")
    twilio_standin_port: int = Field(default=8702, alias="TWILIO_STANDIN_PORT")
    sendgrid_standin_port: int = Field(default=8703, alias="SENDGRID_STANDIN_PORT")
    tekmetric_standin_port: int = Field(default=8704, alias="TEKMETRIC_STANDIN_PORT")
    vendors: Literal["standins", "real"] | None = Field(default=None, alias="LEAD_VENDORS")
    # `up`'s supervisor: the longest wait before restarting a process that keeps exiting.
    restart_max_delay_seconds: float = Field(default=30.0, gt=0, alias="RESTART_MAX_DELAY_SECONDS")
    max_webhook_body_bytes: int = Field(default=256 * 1024, alias="MAX_WEBHOOK_BODY_BYTES")
    # The 30-second backup poll sensor's state when no operator has set one in the UI
    # ("stopped" e.g. in test sessions, which start it explicitly).
    poll_sensor_default_status: Literal["running", "stopped"] = Field(default="running",
                                                                     alias="POLL_SENSOR_DEFAULT_STATUS")
    # The backup poll at scale (docs/poll.md): how many partitions share the shops (one
    # sensor each, a shop in exactly one), and per poller how many shops are in flight
    # (= connections to the CRM) and how many database connections it may hold.
    poll_shards: int = Field(default=1, ge=1, le=64, alias="POLL_SHARDS")
    poll_concurrency: int = Field(default=64, ge=1, le=256, alias="POLL_CONCURRENCY")
    poll_db_connections: int = Field(default=8, ge=1, le=64, alias="POLL_DB_CONNECTIONS")
    # Signs unsubscribe links. Unset: a random key is kept in DATA_DIR/app_secret_key.
    app_secret_key: SecretStr | None = Field(default=None, alias="APP_SECRET_KEY")
    # Encrypts the shops' secrets at rest: Fernet keys, comma-separated, newest first.
    # Unset: a generated key is kept in DATA_DIR/encryption_key (local/embedded use).
    lead_encryption_key: SecretStr | None = Field(default=None, alias="LEAD_ENCRYPTION_KEY")
    # Requests per shop and vendor on /webhooks/{vendor}/{shop}/...: a misbehaving sender
    # gets 429 + Retry-After instead of loading the database.
    webhook_rate_limit: str = Field(default="600/minute", alias="WEBHOOK_RATE_LIMIT")
    # Bearer token for GET /metrics; unset: /metrics answers only to loopback clients.
    metrics_token: SecretStr | None = Field(default=None, alias="METRICS_TOKEN")
    # The host name SendGrid Inbound Parse receives mail for (MX -> mx.sendgrid.net). Set:
    # every email carries Reply-To: reply+<signed token>@<this domain>, and a reply stops the
    # lead's sequence (docs/replies.md). Unset: no reply address, replies reach the shop's
    # sender address and stop nothing.
    inbound_parse_domain: str | None = Field(default=None, alias="INBOUND_PARSE_DOMAIN")
    # Largest Inbound Parse post accepted. SendGrid's own limit is 30 MB per message with
    # its attachments, so the default never refuses what SendGrid can post.
    inbound_parse_max_bytes: int = Field(default=32 * 1024 * 1024, alias="INBOUND_PARSE_MAX_BYTES")

    @field_validator("inbound_parse_domain")
    @classmethod
    def _host_name(cls, value: str | None) -> str | None:
        value = (value or "").strip().lower().rstrip(".")
        if not value:
            return None
        if not _HOST_NAME.fullmatch(value):
            raise ValueError(f"INBOUND_PARSE_DOMAIN {value!r} is not a host name (e.g. reply.example.com)")
        return value

    @field_validator("public_base_url", "shopmonkey_base_url", "twilio_api_base_url", "sendgrid_api_base_url",
                     "tekmetric_base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        return base_url(value, cls.model_fields[info.field_name].alias)
    # Operations (docs/operations.md). Alerts are off while their variables are unset; the
    # Dagster code location reads them as EnvVar (orchestrator_dagster/alerts.py).
    alert_webhook_url: SecretStr | None = Field(default=None, alias="ALERT_WEBHOOK_URL")
    alert_email_to: str | None = Field(default=None, alias="ALERT_EMAIL_TO")
    alert_email_from: str | None = Field(default=None, alias="ALERT_EMAIL_FROM")
    alert_sendgrid_api_key: SecretStr | None = Field(default=None, alias="ALERT_SENDGRID_API_KEY")
    # Unset: the local webserver (127.0.0.1:DAGSTER_PORT).
    dagster_ui_url: str = Field(default=None, alias="DAGSTER_UI_URL", validate_default=False)
    # First hourly touch-point window; unset: the day the Dagster instance first loaded the code.
    touchpoints_start_date: str | None = Field(default=None, alias="TOUCHPOINTS_START_DATE")
    run_retention_days: int = Field(default=30, gt=0, alias="RUN_RETENTION_DAYS")
    inbox_retention_days: int = Field(default=365, gt=0, alias="INBOX_RETENTION_DAYS")

    @model_validator(mode="after")
    def _local_addresses(self) -> "Settings":
        # Defaults that follow the ports, so RECEIVER_PORT=9000 alone still gives callback
        # and unsubscribe links that reach the receiver.
        if self.public_base_url is None:
            host = "127.0.0.1" if self.receiver_host in ("0.0.0.0", "::", "") else self.receiver_host
            self.public_base_url = f"http://{host}:{self.receiver_port}"
        if self.dagster_ui_url is None:
            self.dagster_ui_url = f"http://127.0.0.1:{self.dagster_port}"
        return self

    def secret_key(self) -> str:
        from lead_orchestrator import redaction

        if self.app_secret_key is not None:
            value = self.app_secret_key.get_secret_value()
        else:
            value = _generated(self.data_dir / "app_secret_key", lambda: secrets.token_urlsafe(32))
        redaction.register(value)
        return value

    def encryption_keys(self) -> list[str]:
        """The Fernet keys for the shops' secrets, the one to encrypt with first."""
        from lead_orchestrator.store.secret_box import new_key, parse_keys

        if self.lead_encryption_key is not None:
            return parse_keys(self.lead_encryption_key.get_secret_value())
        return parse_keys(_generated(self.encryption_key_file, new_key))

    @property
    def encryption_key_file(self) -> Path:
        return self.data_dir / "encryption_key"

    @property
    def uses_real_vendors(self) -> bool:
        return (
            self.shopmonkey_base_url == SHOPMONKEY_REAL_URL
            or self.twilio_api_base_url == TWILIO_REAL_URL
            or self.sendgrid_api_base_url == SENDGRID_REAL_URL
        )


def _generated(path: Path, make) -> str:
    """A key kept in a file readable by its owner only, created on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked: a process starting at the same
        # moment sees either no file or the complete key, never an empty one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won; use its key
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


def load_settings() -> Settings:
    """Settings read from the environment now; ConfigError (one line per bad variable) if
    any is unusable. Each entry point (a CLI command, the receiver's app, the Dagster code
    location) calls this once and passes the object on: nothing caches it for the process."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def connection_name(purpose: str) -> str:
    """The application_name of a connection: the process's own name (PGAPPNAME), then what
    the connection is for, so pg_stat_activity can be counted per process and per use
    (docs/deployment.md). Connections opened without a name (Dagster's storage) get
    PGAPPNAME alone from libpq."""
    # Read where libpq reads it (the environment), like libpq itself for the connections
    # we do not name: a connection's name follows the process, not a settings object.
    process = os.environ.get("PGAPPNAME", "").strip()
    return f"{process}/{purpose}"[:63] if process else purpose


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        variable = ".".join(str(part) for part in error["loc"])
        lines.append(message if message.startswith(variable) else f"{variable}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
