"""Dagster resources: the database and the vendor clients, configured from EnvVar in
definitions.py. The objects they hand out are plain project classes, so the business
logic they feed is tested without Dagster."""
from __future__ import annotations

import os

from dagster import ConfigurableResource

from lead_orchestrator.store.db import Database
from lead_orchestrator.settings import TEKMETRIC_REAL_URL, base_url
from lead_orchestrator.store.secret_box import SecretBox, parse_keys
from lead_orchestrator.services.shop_clients import Vendors

_databases: dict[str, Database] = {}


class DatabaseResource(ConfigurableResource):
    """The application database (connections act as lead_app, so RLS applies) and the
    keys to the shop secrets stored in it."""

    database_url: str
    encryption_keys: str  # LEAD_ENCRYPTION_KEY: comma-separated Fernet keys, the newest first
    pool_size: int = 2  # DAGSTER_DB_POOL_SIZE (docs/deployment.md counts the connections)

    def database(self) -> Database:
        # One pool per process: sensors tick often, and a run may use it from many ops.
        if self.database_url not in _databases:
            _databases[self.database_url] = Database(self.database_url, max_size=self.pool_size, name="dagster",
                                                     box=SecretBox(parse_keys(self.encryption_keys))).open()
        return _databases[self.database_url]


class RetentionPolicy(ConfigurableResource):
    """How long finished runs (and runless check evaluations) and done inbox events are kept."""

    run_retention_days: int = 30
    inbox_retention_days: int = 365


class VendorsResource(ConfigurableResource):
    """ShopMonkey, Tekmetric, Twilio and SendGrid endpoints; per-shop credentials (and the
    Tekmetric partner app) come from the shop."""

    shopmonkey_base_url: str
    twilio_api_base_url: str
    sendgrid_api_base_url: str
    public_base_url: str
    app_secret_key: str
    inbound_parse_domain: str = ""  # empty: emails carry no reply address
    # Empty: TEKMETRIC_BASE_URL as the process running the code finds it (read when used,
    # not when the definitions are imported), else Tekmetric's real host.
    tekmetric_base_url: str = ""

    def vendors(self, db: Database | None = None) -> Vendors:
        """`db`: the run's database, through which a Tekmetric partner app's request budget
        is shared with every other process (crm/app_budget.py)."""
        # The same check and normalisation as the Settings object (these come from EnvVar).
        return Vendors(
            db=db,
            shopmonkey_base_url=base_url(self.shopmonkey_base_url, "SHOPMONKEY_BASE_URL"),
            twilio_base_url=base_url(self.twilio_api_base_url, "TWILIO_API_BASE_URL"),
            sendgrid_base_url=base_url(self.sendgrid_api_base_url, "SENDGRID_API_BASE_URL"),
            tekmetric_base_url=base_url(self.tekmetric_base_url or os.environ.get("TEKMETRIC_BASE_URL")
                                        or TEKMETRIC_REAL_URL, "TEKMETRIC_BASE_URL"),
            public_base_url=base_url(self.public_base_url, "PUBLIC_BASE_URL"),
            secret_key=self.app_secret_key,
            inbound_parse_domain=self.inbound_parse_domain.strip().lower().rstrip(".") or None,
        )
