"""Shops (tenants): their settings, read inside a tenant transaction, and the admin
operations behind the `shops` CLI.

Secret fields are pydantic SecretStr so that they print as '**********' in logs,
exceptions, reprs and CLI output.
"""
from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

SECRET_FIELDS = ("shopmonkey_api_key", "webhook_secret", "twilio_auth_token", "sendgrid_api_key")
EDITABLE_FIELDS = (
    "name", "time_zone", "active", "shop_phone", "postal_address", "shopmonkey_api_key",
    "webhook_secret", "twilio_account_sid", "twilio_auth_token", "twilio_sender",
    "sendgrid_api_key", "sendgrid_sender", "send_window_start", "send_window_end",
    "max_lead_age_days", "settings", "sendgrid_event_public_key",
)


class Shop(BaseModel):
    """One shop's configuration as the application sees it."""

    model_config = ConfigDict(frozen=True)

    id: int
    slug: str
    name: str
    time_zone: str = "America/Chicago"
    active: bool = True
    shop_phone: str | None = None
    postal_address: str | None = None
    shopmonkey_api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_sender: str | None = None
    sendgrid_api_key: SecretStr | None = None
    sendgrid_sender: str | None = None
    send_window_start: dt.time = dt.time(8, 0)
    send_window_end: dt.time = dt.time(21, 0)
    max_lead_age_days: int = 7
    settings: dict[str, Any] = Field(default_factory=dict)
    sendgrid_event_public_key: str | None = None  # verifies SendGrid's signed Event Webhook

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


class ShopChanges(BaseModel):
    """What an administrator may set on a shop; validated before anything is written."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    time_zone: str | None = None
    active: bool | None = None
    shop_phone: str | None = None
    postal_address: str | None = None
    shopmonkey_api_key: str | None = None
    webhook_secret: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_sender: str | None = None
    sendgrid_api_key: str | None = None
    sendgrid_sender: str | None = None
    send_window_start: dt.time | None = None
    send_window_end: dt.time | None = None
    max_lead_age_days: int | None = Field(default=None, gt=0, le=365)
    settings: dict[str, Any] | None = None
    sendgrid_event_public_key: str | None = None

    @field_validator("sendgrid_event_public_key")
    @classmethod
    def _ecdsa_key(cls, value: str | None) -> str | None:
        if value:
            from sendgrid.helpers.eventwebhook import EventWebhook

            value = "".join(value.split())
            try:
                EventWebhook().convert_public_key_to_ecdsa(value)
            except (ValueError, TypeError):
                raise ValueError("not a SendGrid event webhook verification key "
                                 "(base64 DER public key, as shown in SendGrid's settings)") from None
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (use an IANA name like America/Chicago)")
        return value

    @field_validator("twilio_sender", "shop_phone")
    @classmethod
    def _e164_or_service(cls, value: str | None) -> str | None:
        if value is None or value.startswith("MG"):
            return value  # a Messaging Service SID is a valid sender
        from lead_orchestrator.contact_points import normalize_phone

        normalized = normalize_phone(value)
        if normalized is None:
            raise ValueError(f"{value!r} is not a valid phone number (E.164, e.g. +15125550100)")
        return normalized

    def present(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


_COLUMNS = ", ".join(("id", "slug") + EDITABLE_FIELDS)


def load_shop(conn: psycopg.Connection, tenant_id: int) -> Shop | None:
    """Reads the current tenant's shop (RLS hides every other one)."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE id = %s", (tenant_id,)).fetchone()
    return Shop(**row) if row else None


def tenant_id_for_slug(conn: psycopg.Connection, slug: str) -> int | None:
    row = conn.execute("SELECT tenant_id_for_slug(%s) AS id", (slug,)).fetchone()
    return row["id"] if row else None


# --- admin operations (owner role; used by the CLI and the demo set-up) -------------

def create_shop(conn: psycopg.Connection, slug: str, name: str, changes: ShopChanges) -> Shop:
    values = {"slug": slug, "name": name, **changes.present()}
    values["name"] = name
    cols = ", ".join(values)
    marks = ", ".join(f"%({c})s" for c in values)
    row = conn.execute(
        f"INSERT INTO tenants ({cols}) VALUES ({marks}) RETURNING {_COLUMNS}", _adapt(values)
    ).fetchone()
    return Shop(**row)


def update_shop(conn: psycopg.Connection, slug: str, changes: ShopChanges) -> Shop | None:
    values = changes.present()
    if not values:
        return get_shop(conn, slug)
    sets = ", ".join(f"{c} = %({c})s" for c in values)
    row = conn.execute(
        f"UPDATE tenants SET {sets}, updated_at = now() WHERE slug = %(slug)s RETURNING {_COLUMNS}",
        _adapt({**values, "slug": slug}),
    ).fetchone()
    return Shop(**row) if row else None


def get_shop(conn: psycopg.Connection, slug: str) -> Shop | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE slug = %s", (slug,)).fetchone()
    return Shop(**row) if row else None


def list_shops(conn: psycopg.Connection) -> list[Shop]:
    return [Shop(**r) for r in conn.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY slug").fetchall()]


def _adapt(values: dict[str, Any]) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    return {k: Jsonb(v) if isinstance(v, dict) else v for k, v in values.items()}
