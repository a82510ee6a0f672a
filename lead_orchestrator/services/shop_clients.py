"""Builds per-shop vendor clients from a shop's credentials and the deployment's base
URLs (the shop's CRM adapter through `crm.registry`), and the public URLs the vendors
call back (status callbacks, unsubscribe) and the addresses customers reply to
(docs/replies.md)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from itsdangerous import URLSafeSerializer

from lead_orchestrator.messaging.senders import SendGridSender, TwilioSender
from lead_orchestrator.messaging.reply_address import reply_address
from lead_orchestrator.crm import registry
from lead_orchestrator.crm.base import CrmAdapter
from lead_orchestrator.crm.shopmonkey.client import ShopMonkeyClient
from lead_orchestrator.crm.tekmetric.app import partner_app_client
from lead_orchestrator.crm.tekmetric.client import TekmetricClient
from lead_orchestrator.settings import TEKMETRIC_REAL_URL
from lead_orchestrator.store.shops import Shop, TekmetricCredentials


class MissingCredentials(RuntimeError):
    pass


@dataclass
class Vendors:
    shopmonkey_base_url: str
    twilio_base_url: str | None
    sendgrid_base_url: str | None
    public_base_url: str
    secret_key: str = field(repr=False)  # signs unsubscribe links: never in a repr or log
    inbound_parse_domain: str | None = None  # INBOUND_PARSE_DOMAIN; None: emails carry no reply address
    send_timeout: float | None = None  # seconds per Twilio/SendGrid call (None: the SDK clients' default)
    tekmetric_base_url: str = TEKMETRIC_REAL_URL
    # The database, when the process has one: a Tekmetric partner app's request budget is
    # then shared with every other process through it (crm/app_budget.py), not counted
    # for this process alone.
    db: object | None = field(default=None, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def shopmonkey(self, shop: Shop, *, http=None, pacer=None) -> ShopMonkeyClient:
        """`pacer`: the shop's crm_pace.CrmPacer (shared by every caller in every process)."""
        key = _secret(shop, "shopmonkey_api_key")
        if http is not None:  # a shared connection pool (the poll): cheap to build, nothing to cache
            return ShopMonkeyClient(self.shopmonkey_base_url, key, http=http, pacer=pacer)
        return self._cached(("sm", shop.id, key, pacer is not None),
                            lambda: ShopMonkeyClient(self.shopmonkey_base_url, key, pacer=pacer))

    def tekmetric(self, shop: Shop) -> TekmetricClient:
        """The client of the deployment's Tekmetric partner app (the shop carries it): one
        per process, shared by every shop and thread, since the app's token and its
        hold-back after a 429 are the app's, not a shop's. Its limiter keeps this process
        under the app's per-minute budget; sharing that budget between processes is the
        per-app limiter's hook (TekmetricClient(limiter=)), docs/tekmetric.md "The request
        budget"."""
        credentials = shop.credentials
        if not isinstance(credentials, TekmetricCredentials) or credentials.shop_id is None:
            raise MissingCredentials(f"shop {shop.slug} has no Tekmetric shop id")
        app = credentials.app
        if app is None:
            raise MissingCredentials("no Tekmetric partner app is configured for this deployment "
                                     "(`lead-orchestrator crm-app set tekmetric --client-id … --client-secret …`)")
        secret = app.client_secret.get_secret_value()
        if self.db is None:
            return self._cached(("tm", self.tekmetric_base_url, app.client_id, secret),
                                lambda: TekmetricClient(self.tekmetric_base_url, app.client_id, secret))
        return self._cached(("tm", self.tekmetric_base_url, app.client_id, secret, "shared"),
                            lambda: partner_app_client(self.db, self.tekmetric_base_url, app.client_id, secret))

    def crm_adapter(self, shop: Shop, *, pacer=None, http=None) -> CrmAdapter:
        """The shop's CRM behind the port (crm.registry picks it by the shop's CRM);
        `pacer` and `http` as for `shopmonkey`. MissingCredentials as the clients raise it."""
        return registry.adapter_for(shop, self, pacer=pacer, http=http)

    def sms(self, shop: Shop) -> TwilioSender:
        token = _secret(shop, "twilio_auth_token")
        if not shop.twilio_account_sid or not shop.twilio_sender:
            raise MissingCredentials(f"shop {shop.slug} has no Twilio account SID or sender")
        return self._cached(("tw", shop.id, token, shop.twilio_sender),
                            lambda: TwilioSender(shop.twilio_account_sid, token, shop.twilio_sender,
                                                 self.twilio_base_url, timeout=self.send_timeout))

    def email(self, shop: Shop) -> SendGridSender:
        key = _secret(shop, "sendgrid_api_key")
        return self._cached(("sg", shop.id, key),
                            lambda: SendGridSender(key, self.sendgrid_base_url, timeout=self.send_timeout))

    def finder(self, shop: Shop, channel: str) -> TwilioSender | SendGridSender:
        """The client that can say whether the vendor has a message whose answer was lost."""
        return self.sms(shop) if channel == "sms" else self.email(shop)

    def status_callback_url(self, shop: Shop, touch_id: int | None = None) -> str:
        # The touch id in the URL lets a callback find its touch even when it arrives
        # before the send's outcome is committed; Twilio signs the URL with its query.
        base = f"{self.public_base_url}/webhooks/twilio/{shop.slug}/status"
        return f"{base}?touch={touch_id}" if touch_id is not None else base

    def unsubscribe_url(self, shop: Shop, email: str) -> str:
        return f"{self.public_base_url}/unsubscribe/{unsubscribe_token(self.secret_key, shop.id, email)}"

    def reply_address(self, shop: Shop, lead_id: int) -> str | None:
        if not self.inbound_parse_domain:
            return None
        return reply_address(self.secret_key, self.inbound_parse_domain, shop.id, lead_id)

    def _cached(self, key, build):
        # Workers ask for the same shop's client at once at the start of a burst: build
        # each client once, not once per worker that missed the cache.
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def close(self) -> None:
        for client in self._cache.values():
            if isinstance(client, (ShopMonkeyClient, TekmetricClient)):
                client.close()
        self._cache.clear()


def _secret(shop: Shop, name: str) -> str:
    value = getattr(shop, name)
    if value is None or not value.get_secret_value():
        raise MissingCredentials(f"shop {shop.slug} has no {name.replace('_', ' ')}")
    return value.get_secret_value()


def unsubscribe_token(secret_key: str, tenant_id: int, email: str) -> str:
    return URLSafeSerializer(secret_key, salt="unsubscribe").dumps([tenant_id, email])


def read_unsubscribe_token(secret_key: str, token: str) -> tuple[int, str] | None:
    from itsdangerous import BadSignature

    try:
        tenant_id, email = URLSafeSerializer(secret_key, salt="unsubscribe").loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    return int(tenant_id), str(email)


def vendors_from_settings(settings, db=None) -> Vendors:
    """`db`: the process's database, through which a Tekmetric app's budget is shared."""
    return Vendors(
        db=db,
        shopmonkey_base_url=settings.shopmonkey_base_url,
        twilio_base_url=settings.twilio_api_base_url,
        sendgrid_base_url=settings.sendgrid_api_base_url,
        tekmetric_base_url=settings.tekmetric_base_url,
        public_base_url=settings.public_base_url,
        secret_key=settings.secret_key(),
        inbound_parse_domain=settings.inbound_parse_domain,
    )
