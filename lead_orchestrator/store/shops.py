"""Shops (tenants): their settings, read inside a tenant transaction, and the admin
operations behind the `shops` CLI.

What an administrator gives is checked here (`ShopChanges`), so the CLI and any other
entry point refuse the same mistakes: Twilio account SIDs (AC + 32 hex digits), senders
(E.164 or a Messaging Service SID, MG + 32 hex digits), SendGrid key shape (SG.…), e-mail
senders, IANA time zones; and an active shop must be able to send something (SMS or
email), else it is refused, saying what is missing.

Secret fields are pydantic SecretStr so that they print as '**********' in logs,
exceptions, reprs and CLI output. In the table they are Fernet ciphertext
(lead_orchestrator.store.secret_box): every writer here encrypts, every reader decrypts.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from lead_orchestrator.store.inbox import release_after_new_credentials
from lead_orchestrator.store.secret_box import SecretBox, default_box

SECRET_FIELDS = ("shopmonkey_api_key", "webhook_secret", "twilio_auth_token", "sendgrid_api_key")
EDITABLE_FIELDS = (
    "name", "time_zone", "active", "shop_phone", "postal_address", "shopmonkey_api_key",
    "webhook_secret", "twilio_account_sid", "twilio_auth_token", "twilio_sender",
    "sendgrid_api_key", "sendgrid_sender", "send_window_start", "send_window_end",
    "max_lead_age_days", "settings", "sendgrid_event_public_key",
)


# What a shop needs to send through each channel (touches.py: email also needs the
# postal address its footer must carry).
SMS_FIELDS = ("twilio_account_sid", "twilio_auth_token", "twilio_sender")
EMAIL_FIELDS = ("sendgrid_api_key", "sendgrid_sender", "postal_address")
TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")
MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-f]{32}")
# SendGrid keys are "SG." and two base64url parts joined by a dot; only the shape that
# catches a wrong paste (another vendor's key, a truncated one) is checked.
SENDGRID_API_KEY = re.compile(r"SG\.[A-Za-z0-9_.-]{16,}")
EMAIL_ADDRESS = re.compile(r"[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


class ShopCannotSend(ValueError):
    """An active shop without a complete SMS or email configuration."""


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

    # hide_input_in_errors: a ValidationError must never quote a secret it was given.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str | None = None
    time_zone: str | None = None
    active: bool | None = None
    shop_phone: str | None = None
    postal_address: str | None = None
    shopmonkey_api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_sender: str | None = None
    sendgrid_api_key: SecretStr | None = None
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

    @field_validator("twilio_sender")
    @classmethod
    def _e164_or_service(cls, value: str | None) -> str | None:
        if value is not None and value.strip().startswith("MG"):  # a Messaging Service SID is a valid sender
            return _matching(value, MESSAGING_SERVICE_SID, "a Messaging Service SID ('MG' and 32 hexadecimal digits)")
        return _e164(value)

    @field_validator("shop_phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return _e164(value)

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        return _matching(value, TWILIO_ACCOUNT_SID,
                         "a Twilio account SID ('AC' and 32 hexadecimal digits, as shown in the Twilio Console)")

    @field_validator("sendgrid_api_key")
    @classmethod
    def _sendgrid_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Never quotes the value: it is a secret.
        if value is not None and not SENDGRID_API_KEY.fullmatch(value.get_secret_value().strip()):
            raise ValueError("not a SendGrid API key (they start with 'SG.')")
        return SecretStr(value.get_secret_value().strip()) if value is not None else None

    @field_validator("sendgrid_sender")
    @classmethod
    def _email_sender(cls, value: str | None) -> str | None:
        value = _matching(value, EMAIL_ADDRESS, "an e-mail address (e.g. service@yourshop.com)")
        if value is None:
            return None
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}"

    @model_validator(mode="after")
    def _window_in_order(self) -> "ShopChanges":
        if self.send_window_start and self.send_window_end and self.send_window_start >= self.send_window_end:
            raise ValueError("send_window_start must be earlier than send_window_end")
        return self

    def present(self) -> dict[str, Any]:
        """The fields given, secrets still wrapped in SecretStr."""
        return {name: value for name in type(self).model_fields if (value := getattr(self, name)) is not None}

    def check_can_send(self, current: Shop | None = None) -> None:
        """Refuses (ShopCannotSend) a shop that would be active yet unable to send
        anything: creating one (`current` None), or a change of an existing shop that
        activates it or touches what it sends with. Other changes of an existing shop
        that cannot send (made before this check) pass, so they can still be fixed."""
        given = self.present()
        values = {**(dict(current) if current is not None else {}), **given}
        if not values.get("active", True):
            return
        if current is not None and not set(given) & {"active", *SMS_FIELDS, *EMAIL_FIELDS}:
            return
        missing_sms = [name for name in SMS_FIELDS if not _is_set(values.get(name))]
        missing_email = [name for name in EMAIL_FIELDS if not _is_set(values.get(name))]
        if missing_sms and missing_email:
            raise ShopCannotSend(
                "an active shop must be able to send SMS or email: SMS needs " + ", ".join(missing_sms)
                + "; email needs " + ", ".join(missing_email) + ". Give them, or keep the shop inactive "
                "until it can send (active=false; --inactive in the CLI).")


def _matching(value: str | None, pattern: re.Pattern, what: str) -> str | None:
    """`value` without surrounding blanks if it matches `pattern`; else "… is not {what}"."""
    if value is None:
        return None
    value = value.strip()
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not {what}")
    return value


def _e164(value: str | None) -> str | None:
    if value is None:
        return value
    from lead_orchestrator.domain.contact_points import normalize_phone

    normalized = normalize_phone(value)
    if normalized is None:
        raise ValueError(f"{value!r} is not a valid phone number (E.164, e.g. +15125550100)")
    return normalized


def _is_set(value: Any) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return bool(value and str(value).strip())


_COLUMNS = ", ".join(("id", "slug") + EDITABLE_FIELDS)


def _encrypted(values: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    out = dict(values)
    for name in SECRET_FIELDS:
        if name in out:
            value = out[name]
            out[name] = box.encrypt(value.get_secret_value() if isinstance(value, SecretStr) else value)
    return out


def shop_from_row(row: dict[str, Any], box: SecretBox | None = None) -> Shop:
    """A Shop from a `tenants` row, its secrets decrypted."""
    box = box or default_box()
    values = dict(row)
    for name in SECRET_FIELDS:
        if name in values:
            values[name] = box.decrypt(values[name], what=f"shop {row.get('slug')!r} {name}")
    return Shop(**values)


def load_shop(conn: psycopg.Connection, tenant_id: int, box: SecretBox | None = None) -> Shop | None:
    """Reads the current tenant's shop (RLS hides every other one)."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE id = %s", (tenant_id,)).fetchone()
    return shop_from_row(row, box) if row else None


def tenant_id_for_slug(conn: psycopg.Connection, slug: str) -> int | None:
    row = conn.execute("SELECT tenant_id_for_slug(%s) AS id", (slug,)).fetchone()
    return row["id"] if row else None


# --- admin operations (owner role; used by the CLI and the demo set-up) -------------

def create_shop(conn: psycopg.Connection, slug: str, name: str, changes: ShopChanges,
                box: SecretBox | None = None) -> Shop:
    box = box or default_box()
    changes.check_can_send()
    values = _encrypted({"slug": slug, **changes.present(), "name": name}, box)
    cols = ", ".join(values)
    marks = ", ".join(f"%({c})s" for c in values)
    row = conn.execute(
        f"INSERT INTO tenants ({cols}) VALUES ({marks}) RETURNING {_COLUMNS}", _adapt(values)
    ).fetchone()
    return shop_from_row(row, box)


def update_shop(conn: psycopg.Connection, slug: str, changes: ShopChanges,
                box: SecretBox | None = None) -> Shop | None:
    box = box or default_box()
    values = _encrypted(changes.present(), box)
    if not values:
        return get_shop(conn, slug, box)
    current = get_shop(conn, slug, box)
    if current is None:
        return None
    changes.check_can_send(current)
    sets = ", ".join(f"{c} = %({c})s" for c in values)
    with conn.transaction():
        row = conn.execute(
            f"UPDATE tenants SET {sets}, updated_at = now() WHERE slug = %(slug)s RETURNING {_COLUMNS}",
            _adapt({**values, "slug": slug}),
        ).fetchone()
        if row and "shopmonkey_api_key" in values:
            release_after_new_credentials(conn, row["id"])
    return shop_from_row(row, box) if row else None


def get_shop(conn: psycopg.Connection, slug: str, box: SecretBox | None = None) -> Shop | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE slug = %s", (slug,)).fetchone()
    return shop_from_row(row, box) if row else None


def list_shops(conn: psycopg.Connection, box: SecretBox | None = None) -> list[Shop]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY slug").fetchall()
    return [shop_from_row(r, box) for r in rows]


def _adapt(values: dict[str, Any]) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    return {k: Jsonb(v) if isinstance(v, dict) else v for k, v in values.items()}
