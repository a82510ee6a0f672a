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

A shop runs one CRM (`Shop.crm`), and its CRM credentials have that CRM's shape
(`Shop.credentials`): `ShopMonkeyCredentials` (API key, webhook secret) or
`TekmetricCredentials` (the Tekmetric shop id, the digest of the webhook URL token, and
the deployment's partner app). Each CRM's are stored in a table of their own
(sql/0017_crm_credentials.sql); `shop.shopmonkey_api_key` and `shop.webhook_secret` still
read a ShopMonkey shop's.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from lead_orchestrator.store.inbox import release_after_new_credentials
from lead_orchestrator.store.secret_box import SecretBox

CRMS = ("shopmonkey", "tekmetric")
Crm = Literal["shopmonkey", "tekmetric"]
# The secrets a shop holds, as Shop attributes (whatever table keeps them).
SECRET_FIELDS = ("shopmonkey_api_key", "webhook_secret", "twilio_auth_token", "sendgrid_api_key")
# Columns of `tenants` (the CRM's credentials are in their own tables: CRM_FIELDS).
TENANT_SECRET_COLUMNS = ("twilio_auth_token", "sendgrid_api_key")
EDITABLE_FIELDS = (
    "name", "time_zone", "active", "shop_phone", "postal_address",
    "twilio_account_sid", "twilio_auth_token", "twilio_sender",
    "sendgrid_api_key", "sendgrid_sender", "send_window_start", "send_window_end",
    "max_lead_age_days", "settings", "sendgrid_event_public_key",
)
# ShopChanges field -> (the CRM it belongs to, its column in that CRM's credentials table).
CRM_FIELDS = {
    "shopmonkey_api_key": ("shopmonkey", "api_key"),
    "webhook_secret": ("shopmonkey", "webhook_secret"),
    "tekmetric_shop_id": ("tekmetric", "shop_id"),
}
CRM_SECRET_COLUMNS = {"shopmonkey": ("api_key", "webhook_secret"), "tekmetric": ()}


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


class ShopWrongCrm(ValueError):
    """Credentials that are not the shop's CRM's, or a CRM's required credential missing."""


class ShopMonkeyCredentials(BaseModel):
    model_config = ConfigDict(frozen=True)

    crm: Literal["shopmonkey"] = "shopmonkey"
    api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None  # verifies ShopMonkey's signed webhooks


class TekmetricApp(BaseModel):
    """The deployment's Tekmetric partner app (`crm_apps`): one client id and secret read
    every connected shop (docs/tekmetric.md)."""

    model_config = ConfigDict(frozen=True)

    client_id: str
    client_secret: SecretStr


class TekmetricCredentials(BaseModel):
    model_config = ConfigDict(frozen=True)

    crm: Literal["tekmetric"] = "tekmetric"
    shop_id: int | None = None  # the shop's id in Tekmetric (what the partner app's token scopes)
    # SHA-256 (hex) of the shop's webhook URL token; the token itself is never stored.
    webhook_token_sha256: str | None = Field(default=None, repr=False)
    app: TekmetricApp | None = None  # None until `crm-app set tekmetric` has run


CrmCredentials = ShopMonkeyCredentials | TekmetricCredentials


class Shop(BaseModel):
    """One shop's configuration as the application sees it."""

    model_config = ConfigDict(frozen=True)

    id: int
    slug: str
    name: str
    crm: Crm = "shopmonkey"
    credentials: CrmCredentials = Field(default_factory=ShopMonkeyCredentials, discriminator="crm")
    time_zone: str = "America/Chicago"
    active: bool = True
    shop_phone: str | None = None
    postal_address: str | None = None
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

    @model_validator(mode="after")
    def _credentials_of_its_crm(self) -> "Shop":
        if self.credentials.crm != self.crm:
            raise ValueError(f"a {self.crm} shop cannot hold {self.credentials.crm} credentials")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def credentials_fix(self) -> str:
        """How an operator replaces what the shop's CRM refused or lacks (for `why`, `status`)."""
        if self.crm == "tekmetric":
            return (f"`./dev cli crm-app set tekmetric --client-id … --client-secret …` (the partner app), or "
                    f"`./dev cli shops update {self.slug} --tekmetric-shop-id …`")
        return f"`./dev cli shops update {self.slug} --shopmonkey-api-key …`"

    @property
    def shopmonkey_api_key(self) -> SecretStr | None:
        return self.credentials.api_key if isinstance(self.credentials, ShopMonkeyCredentials) else None

    @property
    def webhook_secret(self) -> SecretStr | None:
        return self.credentials.webhook_secret if isinstance(self.credentials, ShopMonkeyCredentials) else None


class ShopChanges(BaseModel):
    """What an administrator may set on a shop; validated before anything is written."""

    # hide_input_in_errors: a ValidationError must never quote a secret it was given.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str | None = None
    crm: Crm | None = None
    time_zone: str | None = None
    active: bool | None = None
    shop_phone: str | None = None
    postal_address: str | None = None
    shopmonkey_api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    tekmetric_shop_id: int | None = Field(default=None, gt=0)
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

    def check_crm(self, current: Shop | None = None) -> Crm:
        """The CRM the shop will run; refuses (ShopWrongCrm) credentials of another CRM, and
        a Tekmetric shop without its Tekmetric shop id."""
        crm = self.crm or (current.crm if current is not None else "shopmonkey")
        given = self.present()
        foreign = [name for name in given if name in CRM_FIELDS and CRM_FIELDS[name][0] != crm]
        if foreign:
            options = ", ".join("--" + name.replace("_", "-") for name in foreign)
            raise ShopWrongCrm(f"{options} {'is' if len(foreign) == 1 else 'are'} not for a {crm} shop")
        if crm == "tekmetric" and "tekmetric_shop_id" not in given and (
                current is None or current.crm != "tekmetric" or current.credentials.shop_id is None):
            raise ShopWrongCrm("a Tekmetric shop needs its Tekmetric shop id (--tekmetric-shop-id; Tekmetric "
                               "shows it under Shop Settings, and the partner app's token lists it in its scope)")
        return crm

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


# A shop with its CRM's credentials, and its CRM's partner app (through the definer
# function: the application may not read crm_apps itself). One round trip.
_SELECT = ("SELECT " + ", ".join(f"t.{c}" for c in ("id", "slug", "crm") + EDITABLE_FIELDS) + """,
       sm.api_key AS sm_api_key, sm.webhook_secret AS sm_webhook_secret,
       tk.shop_id AS tm_shop_id, tk.webhook_token_sha256 AS tm_webhook_token_sha256,
       app.client_id AS app_client_id, app.client_secret AS app_client_secret
  FROM tenants t
  LEFT JOIN shopmonkey_credentials sm ON sm.tenant_id = t.id
  LEFT JOIN tekmetric_credentials tk ON tk.tenant_id = t.id
  LEFT JOIN LATERAL crm_app_credentials(t.crm) app ON t.crm <> 'shopmonkey'""")
_CREDENTIAL_KEYS = ("sm_api_key", "sm_webhook_secret", "tm_shop_id", "tm_webhook_token_sha256",
                    "app_client_id", "app_client_secret")
CREDENTIALS_TABLES = {"shopmonkey": "shopmonkey_credentials", "tekmetric": "tekmetric_credentials"}


def _encrypted(values: dict[str, Any], box: SecretBox, secrets: tuple[str, ...]) -> dict[str, Any]:
    out = dict(values)
    for name in secrets:
        if name in out:
            value = out[name]
            out[name] = box.encrypt(value.get_secret_value() if isinstance(value, SecretStr) else value)
    return out


def shop_from_row(row: dict[str, Any], box: SecretBox) -> Shop:
    """A Shop from a `_SELECT` row, its secrets decrypted."""
    values = {k: v for k, v in row.items() if k not in _CREDENTIAL_KEYS}
    slug = row.get("slug")
    for name in TENANT_SECRET_COLUMNS:
        if name in values:
            values[name] = box.decrypt(values[name], what=f"shop {slug!r} {name}")
    if row["crm"] == "tekmetric":
        app = None
        if row.get("app_client_id"):
            app = TekmetricApp(client_id=row["app_client_id"], client_secret=box.decrypt(
                row["app_client_secret"], what="the Tekmetric partner app's client secret"))
        values["credentials"] = TekmetricCredentials(shop_id=row.get("tm_shop_id"), app=app,
                                                     webhook_token_sha256=row.get("tm_webhook_token_sha256"))
    else:
        values["credentials"] = ShopMonkeyCredentials(
            api_key=box.decrypt(row.get("sm_api_key"), what=f"shop {slug!r} shopmonkey_api_key"),
            webhook_secret=box.decrypt(row.get("sm_webhook_secret"), what=f"shop {slug!r} webhook_secret"))
    return Shop(**values)


def load_shop(conn: psycopg.Connection, tenant_id: int, box: SecretBox) -> Shop | None:
    """Reads the shop (in a tenant transaction, RLS hides every other one)."""
    row = conn.execute(f"{_SELECT} WHERE t.id = %s", (tenant_id,)).fetchone()
    return shop_from_row(row, box) if row else None


def tenant_id_for_slug(conn: psycopg.Connection, slug: str) -> int | None:
    row = conn.execute("SELECT tenant_id_for_slug(%s) AS id", (slug,)).fetchone()
    return row["id"] if row else None


def tenant_id_for_tekmetric_token(conn: psycopg.Connection, token: str) -> int | None:
    """The active Tekmetric shop whose webhook URL carries `token` (found by its digest)."""
    from lead_orchestrator.crm.tekmetric.webhooks import token_sha256

    row = conn.execute("SELECT tenant_id_for_tekmetric_token(%s) AS id", (token_sha256(token),)).fetchone()
    return row["id"] if row else None


# --- admin operations (owner role; used by the CLI and the demo set-up) -------------

def create_shop(conn: psycopg.Connection, slug: str, name: str, changes: ShopChanges, box: SecretBox) -> Shop:
    changes.check_can_send()
    crm = changes.check_crm()
    given = {k: v for k, v in changes.present().items() if k not in CRM_FIELDS}
    values = _encrypted({"slug": slug, **given, "name": name, "crm": crm}, box, TENANT_SECRET_COLUMNS)
    cols = ", ".join(values)
    marks = ", ".join(f"%({c})s" for c in values)
    with conn.transaction():
        row = conn.execute(f"INSERT INTO tenants ({cols}) VALUES ({marks}) RETURNING id", _adapt(values)).fetchone()
        _write_credentials(conn, row["id"], crm, changes, box)
        return load_shop(conn, row["id"], box)


def update_shop(conn: psycopg.Connection, slug: str, changes: ShopChanges, box: SecretBox) -> Shop | None:
    current = get_shop(conn, slug, box)
    if current is None or not changes.present():
        return current
    changes.check_can_send(current)
    crm = changes.check_crm(current)
    given = {k: v for k, v in changes.present().items() if k not in CRM_FIELDS and k != "crm"}
    values = _encrypted(given, box, TENANT_SECRET_COLUMNS)
    with conn.transaction():
        if crm != current.crm:
            # Another CRM: the old one's credentials go (its table's rows must name a shop of
            # that CRM), then the shop switches.
            conn.execute(f"DELETE FROM {CREDENTIALS_TABLES[current.crm]} WHERE tenant_id = %s", (current.id,))
            values["crm"] = crm
        sets = "".join(f"{c} = %({c})s, " for c in values)
        conn.execute(f"UPDATE tenants SET {sets}updated_at = now() WHERE id = %(id)s",
                     _adapt({**values, "id": current.id}))
        if _write_credentials(conn, current.id, crm, changes, box) or crm != current.crm:
            release_after_new_credentials(conn, current.id)
        return load_shop(conn, current.id, box)


def _write_credentials(conn: psycopg.Connection, tenant_id: int, crm: str, changes: ShopChanges,
                       box: SecretBox) -> bool:
    """Stores the CRM credentials `changes` gives (the others stay); True if any was given."""
    given = {CRM_FIELDS[k][1]: v for k, v in changes.present().items() if k in CRM_FIELDS}
    if not given:
        return False
    values = _encrypted(given, box, CRM_SECRET_COLUMNS[crm])
    cols = ", ".join(values)
    conn.execute(
        f"INSERT INTO {CREDENTIALS_TABLES[crm]} (tenant_id, {cols}) "
        f"VALUES (%(tenant_id)s, {', '.join(f'%({c})s' for c in values)}) "
        f"ON CONFLICT (tenant_id) DO UPDATE SET "
        + "".join(f"{c} = EXCLUDED.{c}, " for c in values) + "updated_at = now()",
        {**values, "tenant_id": tenant_id})
    return True


def new_tekmetric_webhook_token(conn: psycopg.Connection, slug: str, box: SecretBox) -> str:
    """Gives the Tekmetric shop a new webhook URL token and returns it: the only time it
    is seen (only its digest is stored). The previous URL stops working at once."""
    from lead_orchestrator.crm.tekmetric.webhooks import new_webhook_token, token_sha256

    shop = get_shop(conn, slug, box)
    if shop is None:
        raise LookupError(f"no shop named {slug!r}")
    if shop.crm != "tekmetric":
        raise ShopWrongCrm(f"shop {slug!r} runs {shop.crm}: only Tekmetric shops have a webhook URL token")
    token = new_webhook_token()
    conn.execute("UPDATE tekmetric_credentials SET webhook_token_sha256 = %s, updated_at = now() "
                 "WHERE tenant_id = %s", (token_sha256(token), shop.id))
    return token


def get_shop(conn: psycopg.Connection, slug: str, box: SecretBox) -> Shop | None:
    row = conn.execute(f"{_SELECT} WHERE t.slug = %s", (slug,)).fetchone()
    return shop_from_row(row, box) if row else None


def list_shops(conn: psycopg.Connection, box: SecretBox) -> list[Shop]:
    rows = conn.execute(f"{_SELECT} ORDER BY t.slug").fetchall()
    return [shop_from_row(r, box) for r in rows]


def _adapt(values: dict[str, Any]) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    return {k: Jsonb(v) if isinstance(v, dict) else v for k, v in values.items()}
