"""The adapter for a shop's CRM (`Shop.crm`), behind the CRM port (`crm/base.py`).

`adapter_for(shop, vendors, pacer=...)` is what ingest and the poll call; `webhook_reader_for(shop)`
is what the receiver calls (reading a webhook needs no API client). Each CRM registers a
builder in `BUILDERS`.

Pacing: ShopMonkey's calls go through the shop's `crm/pace.py` pacer (ShopMonkey limits
each shop's key). Tekmetric's budget belongs to the partner app, all shops together, so
a shop's pacer does not apply: the app's client (one per process, `Vendors.tekmetric`)
holds this process under the budget with its limiter, and a limiter shared between
processes plugs in there (`TekmetricClient(limiter=...)`).
"""
from __future__ import annotations

from typing import Callable

from lead_orchestrator.crm.base import CrmAdapter
from lead_orchestrator.crm.tekmetric.adapter import TekmetricAdapter
from lead_orchestrator.services.shop_clients import MissingCredentials, Vendors
from lead_orchestrator.store.shops import Shop, TekmetricCredentials


def crm_of(shop) -> str:
    return getattr(shop, "crm", "shopmonkey")


def tekmetric_adapter(shop: Shop, vendors: Vendors, *, pacer=None) -> TekmetricAdapter:
    """`pacer` (the shop's crm_pace pacer) is not used: Tekmetric's limit is the app's."""
    credentials = _tekmetric_credentials(shop)
    if credentials.app is None:
        raise MissingCredentials("no Tekmetric partner app is configured for this deployment "
                                 "(`lead-orchestrator crm-app set tekmetric --client-id … --client-secret …`)")
    return TekmetricAdapter(vendors.tekmetric(credentials.app), credentials.shop_id,
                            credentials.webhook_token_sha256)


def tekmetric_webhook_reader(shop: Shop) -> TekmetricAdapter:
    credentials = _tekmetric_credentials(shop)
    return TekmetricAdapter(None, credentials.shop_id, credentials.webhook_token_sha256)


def _tekmetric_credentials(shop: Shop) -> TekmetricCredentials:
    credentials = shop.credentials
    if not isinstance(credentials, TekmetricCredentials) or credentials.shop_id is None:
        raise MissingCredentials(f"shop {shop.slug} has no Tekmetric shop id")
    return credentials


BUILDERS: dict[str, Callable[..., CrmAdapter]] = {"tekmetric": tekmetric_adapter}
WEBHOOK_READERS: dict[str, Callable[[Shop], CrmAdapter]] = {"tekmetric": tekmetric_webhook_reader}


def adapter_for(shop: Shop, vendors: Vendors, *, pacer=None) -> CrmAdapter:
    try:
        build = BUILDERS[crm_of(shop)]
    except KeyError:
        raise MissingCredentials(f"shop {shop.slug}: no adapter for CRM {crm_of(shop)!r}") from None
    return build(shop, vendors, pacer=pacer)


def webhook_reader_for(shop: Shop) -> CrmAdapter:
    return WEBHOOK_READERS[crm_of(shop)](shop)
