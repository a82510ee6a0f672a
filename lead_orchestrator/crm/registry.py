"""Which CRM adapter serves a shop, and how to read back what the inbox stored for it.

Services never build a CRM client: they ask `adapter_for(shop, clients, pacer=...)`
(through `Vendors.crm_adapter`), which looks the shop's CRM up in `BUILDERS`. A builder
takes the shop, the deployment's client factory (`services.shop_clients.Vendors`, passed
in: crm/ imports nothing above it) and the shop's pacer, and returns a `CrmAdapter`; the
client factory raises MissingCredentials for what the shop lacks. The receiver asks
`webhook_reader_for(shop)` for CRMs whose webhooks the adapter reads (no API client
needed to read one).

Pacing: ShopMonkey limits each shop's key, so its calls go through the shop's
`crm/pace.py` pacer. Tekmetric's budget is the partner app's, every shop together, so a
shop's pacer does not apply: the app's client (one per process, `Vendors.tekmetric`)
keeps this process under the budget with its limiter, and a limiter shared between
processes plugs in there (`TekmetricClient(limiter=...)`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from lead_orchestrator.crm.base import ChangeHint, CrmAdapter, kind_of_operation
from lead_orchestrator.crm.shopmonkey.adapter import ShopMonkeyAdapter
from lead_orchestrator.crm.shopmonkey.mapping import hint_from_envelope
from lead_orchestrator.crm.tekmetric.adapter import TekmetricAdapter

DEFAULT_CRM = "shopmonkey"  # every shop connected before a second CRM existed


class UnknownCrm(ValueError):
    """The shop names a CRM this deployment has no adapter for."""


def crm_of(shop: Any) -> str:
    """The shop's CRM (`Shop.crm`)."""
    return getattr(shop, "crm", None) or DEFAULT_CRM


def _shopmonkey(shop: Any, clients: Any, *, pacer=None, http=None) -> CrmAdapter:
    return ShopMonkeyAdapter(clients.shopmonkey(shop, http=http, pacer=pacer))


def _tekmetric(shop: Any, clients: Any, *, pacer=None, http=None) -> CrmAdapter:
    """`pacer` (the shop's) and `http` are not used: the partner app's client is shared."""
    credentials = shop.credentials
    return TekmetricAdapter(clients.tekmetric(shop), credentials.shop_id, credentials.webhook_token_sha256)


def _tekmetric_webhooks(shop: Any) -> CrmAdapter:
    return TekmetricAdapter(None, shop.credentials.shop_id, shop.credentials.webhook_token_sha256)


Builder = Callable[..., CrmAdapter]
# crm name -> builder(shop, clients, *, pacer, http)
BUILDERS: dict[str, Builder] = {
    "shopmonkey": _shopmonkey,
    "tekmetric": _tekmetric,
}

# crm name -> the adapter that reads the shop's webhooks, for CRMs whose webhooks the
# receiver hands to the adapter (ShopMonkey's hot route checks and reads its own).
WEBHOOK_READERS: dict[str, Callable[[Any], CrmAdapter]] = {
    "tekmetric": _tekmetric_webhooks,
}

# How to read a stored webhook body whose event holds no neutral hint (bodies stored
# by a CRM's own receiver route, as ShopMonkey's hot route does; see store.inbox).
STORED_BODY_READERS: dict[str, Callable[..., ChangeHint]] = {
    "shopmonkey": hint_from_envelope,
}


def adapter_for(shop: Any, clients: Any, *, pacer=None, http=None) -> CrmAdapter:
    """The adapter for the shop's CRM. `pacer` spaces the shop's requests across every
    process; `http` is a shared connection pool (the poll). Raises UnknownCrm, and
    whatever the builder raises for missing credentials (MissingCredentials)."""
    crm = crm_of(shop)
    builder = BUILDERS.get(crm)
    if builder is None:
        raise UnknownCrm(f"shop {getattr(shop, 'slug', shop)!r}: no adapter for CRM {crm!r}")
    return builder(shop, clients, pacer=pacer, http=http)


def webhook_reader_for(shop: Any) -> CrmAdapter:
    reader = WEBHOOK_READERS.get(crm_of(shop))
    if reader is None:
        raise UnknownCrm(f"shop {getattr(shop, 'slug', shop)!r}: no webhook reader for CRM {crm_of(shop)!r}")
    return reader(shop)


def hint_from_stored_body(crm: str, body: Mapping[str, Any] | None, *, estimate_id: str,
                          operation: str) -> ChangeHint:
    """A stored body read by its CRM's reader; without one, what the event's columns say
    (the estimate and whether it was deleted, no version)."""
    reader = STORED_BODY_READERS.get(crm)
    if reader is not None:
        return reader(body, estimate_id=estimate_id, operation=operation)
    return ChangeHint(crm=crm, estimate_id=estimate_id, kind=kind_of_operation(operation),
                      updated_at=None)
