"""Dagster resources: the database and the vendor clients, configured from EnvVar in
definitions.py. The objects they hand out are plain project classes, so the business
logic they feed is tested without Dagster."""
from __future__ import annotations

import os

from dagster import ConfigurableResource

from lead_orchestrator.store.db import Database
from lead_orchestrator.settings import TEKMETRIC_REAL_URL, base_url, get_settings
from lead_orchestrator.services.shop_clients import Vendors

_databases: dict[str, Database] = {}


class DatabaseResource(ConfigurableResource):
    """The application database (connections act as lead_app, so RLS applies)."""

    database_url: str

    def database(self) -> Database:
        # One pool per process: sensors tick often, and a run may use it from many ops.
        if self.database_url not in _databases:
            size = get_settings().dagster_db_pool_size
            _databases[self.database_url] = Database(self.database_url, max_size=size, name="dagster").open()
        return _databases[self.database_url]


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

    def vendors(self) -> Vendors:
        # The same check and normalisation as the Settings object (these come from EnvVar).
        return Vendors(
            shopmonkey_base_url=base_url(self.shopmonkey_base_url, "SHOPMONKEY_BASE_URL"),
            twilio_base_url=base_url(self.twilio_api_base_url, "TWILIO_API_BASE_URL"),
            sendgrid_base_url=base_url(self.sendgrid_api_base_url, "SENDGRID_API_BASE_URL"),
            tekmetric_base_url=base_url(self.tekmetric_base_url or os.environ.get("TEKMETRIC_BASE_URL")
                                        or TEKMETRIC_REAL_URL, "TEKMETRIC_BASE_URL"),
            public_base_url=base_url(self.public_base_url, "PUBLIC_BASE_URL"),
            secret_key=self.app_secret_key,
            inbound_parse_domain=self.inbound_parse_domain.strip().lower().rstrip(".") or None,
        )
