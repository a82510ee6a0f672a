"""The one settings object: every environment variable the product reads is declared here.

A `.env` file in the working directory may set them. Unset vendor base URLs mean the
vendors' real hosts; an unset DATABASE_URL means an embedded PostgreSQL under DATA_DIR.
"""
from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SHOPMONKEY_REAL_URL = "https://api.shopmonkey.cloud"
TWILIO_REAL_URL = "https://api.twilio.com"
SENDGRID_REAL_URL = "https://api.sendgrid.com"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    shopmonkey_base_url: str = Field(default=SHOPMONKEY_REAL_URL, alias="SHOPMONKEY_BASE_URL")
    twilio_api_base_url: str = Field(default=TWILIO_REAL_URL, alias="TWILIO_API_BASE_URL")
    sendgrid_api_base_url: str = Field(default=SENDGRID_REAL_URL, alias="SENDGRID_API_BASE_URL")
    dagster_home: Path | None = Field(default=None, alias="DAGSTER_HOME")

    data_dir: Path = Field(default=Path(".data"), alias="LEAD_DATA_DIR")
    # Where Twilio/SendGrid/ShopMonkey reach the receiver (status callbacks, unsubscribe links).
    public_base_url: str = Field(default="http://127.0.0.1:8000", alias="PUBLIC_BASE_URL")
    receiver_host: str = Field(default="127.0.0.1", alias="RECEIVER_HOST")
    receiver_port: int = Field(default=8000, alias="RECEIVER_PORT")
    dagster_port: int = Field(default=3000, alias="DAGSTER_PORT")
    max_webhook_body_bytes: int = Field(default=256 * 1024, alias="MAX_WEBHOOK_BODY_BYTES")
    webhook_tolerance_seconds: int = Field(default=300, alias="WEBHOOK_TOLERANCE_SECONDS")
    # The 30-second backup poll sensor's state when no operator has set one in the UI
    # ("stopped" e.g. in test sessions, which start it explicitly).
    poll_sensor_default_status: Literal["running", "stopped"] = Field(default="running",
                                                                     alias="POLL_SENSOR_DEFAULT_STATUS")
    # Signs unsubscribe links. Unset: a random key is kept in DATA_DIR/app_secret_key.
    app_secret_key: SecretStr | None = Field(default=None, alias="APP_SECRET_KEY")

    def secret_key(self) -> str:
        if self.app_secret_key is not None:
            return self.app_secret_key.get_secret_value()
        path = self.data_dir / "app_secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    @property
    def uses_real_vendors(self) -> bool:
        return (
            self.shopmonkey_base_url == SHOPMONKEY_REAL_URL
            or self.twilio_api_base_url == TWILIO_REAL_URL
            or self.sendgrid_api_base_url == SENDGRID_REAL_URL
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
