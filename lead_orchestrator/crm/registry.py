"""Which CRM adapter serves a shop (`Shop.crm`), behind the CRM port (`crm/base.py`).

Services ask `adapter_for(shop, clients, pacer=...)`; the receiver asks
`webhook_reader_for(shop)` (reading a webhook needs no API client). A builder takes the
shop, the deployment's client factory (`services.shop_clients.Vendors`, passed in: crm/
imports nothing above it) and the shop's pacer, and returns a `CrmAdapter`; the client
factory raises MissingCredentials for what the shop lacks.

Pacing: ShopMonkey limits each shop's key, so its calls go through the shop's
`crm/pace.py` pacer. Tekmetric's budget is the partner app's, every shop together, so a
shop's pacer does not apply: the app's client (one per process, `Vendors.tekmetric`)
keeps this process under the budget with its limiter, and a limiter shared between
processes plugs in there (`TekmetricClient(limiter=...)`).
"""
from __future__ import annotations

from typing import Any, Callable

from lead_orchestrator.crm.base import CrmAdapter
from lead_orchestrator.crm.tekmetric.adapter import TekmetricAdapter

DEFAULT_CRM = "shopmonkey"  # every shop connected before a second CRM existed


class UnknownCrm(ValueError):
    """The shop names a CRM this deployment has no adapter for."""


def crm_of(shop: Any) -> str:
    return getattr(shop, "crm", None) or DEFAULT_CRM


def _tekmetric(shop: Any, clients: Any, *, pacer=None, http=None) -> CrmAdapter:
    """`pacer` (the shop's) and `http` are not used: the app's client is shared."""
    credentials = shop.credentials
    return TekmetricAdapter(clients.tekmetric(shop), credentials.shop_id, credentials.webhook_token_sha256)


def _tekmetric_webhooks(shop: Any) -> CrmAdapter:
    return TekmetricAdapter(None, shop.credentials.shop_id, shop.credentials.webhook_token_sha256)


Builder = Callable[..., CrmAdapter]
# crm name -> builder(shop, clients, *, pacer, http)
BUILDERS: dict[str, Builder] = {
    "tekmetric": _tekmetric,
}
# crm name -> the adapter that reads the shop's webhooks (no API client), for CRMs whose
# webhooks the receiver hands to the adapter (ShopMonkey's route checks its own).
WEBHOOK_READERS: dict[str, Callable[[Any], CrmAdapter]] = {
    "tekmetric": _tekmetric_webhooks,
}


def adapter_for(shop: Any, clients: Any, *, pacer=None, http=None) -> CrmAdapter:
    """The adapter for the shop's CRM. Raises UnknownCrm, and whatever the client factory
    raises for missing credentials (MissingCredentials)."""
    builder = BUILDERS.get(crm_of(shop))
    if builder is None:
        raise UnknownCrm(f"shop {getattr(shop, 'slug', shop)!r}: no adapter for CRM {crm_of(shop)!r}")
    return builder(shop, clients, pacer=pacer, http=http)


def webhook_reader_for(shop: Any) -> CrmAdapter:
    reader = WEBHOOK_READERS.get(crm_of(shop))
    if reader is None:
        raise UnknownCrm(f"shop {getattr(shop, 'slug', shop)!r}: no webhook reader for CRM {crm_of(shop)!r}")
    return reader(shop)
