"""Which CRM adapter serves a shop, and how to read back what the inbox stored for it.

Services never build a CRM client: they ask `adapter_for(shop, clients, pacer=...)`
(through `Vendors.crm_adapter`), which looks the shop's CRM up in `BUILDERS`. A builder
takes the shop, the deployment's client factory (`services.shop_clients.Vendors`, passed
in: crm/ imports nothing above it) and the shop's pacer, and returns a `CrmAdapter`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from lead_orchestrator.crm.base import ChangeHint, CrmAdapter, kind_of_operation
from lead_orchestrator.crm.shopmonkey.adapter import ShopMonkeyAdapter
from lead_orchestrator.crm.shopmonkey.mapping import hint_from_envelope

DEFAULT_CRM = "shopmonkey"  # every shop connected before a second CRM existed


class UnknownCrm(ValueError):
    """The shop names a CRM this deployment has no adapter for."""


def crm_of(shop: Any) -> str:
    """The shop's CRM. (Hook: `Shop.crm` arrives with the Tekmetric shops' migration.)"""
    return getattr(shop, "crm", None) or DEFAULT_CRM


def _shopmonkey(shop: Any, clients: Any, *, pacer=None, http=None) -> CrmAdapter:
    return ShopMonkeyAdapter(clients.shopmonkey(shop, http=http, pacer=pacer))


Builder = Callable[..., CrmAdapter]
# crm name -> builder(shop, clients, *, pacer, http). "tekmetric" is added with its shops.
BUILDERS: dict[str, Builder] = {
    "shopmonkey": _shopmonkey,
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


def hint_from_stored_body(crm: str, body: Mapping[str, Any] | None, *, estimate_id: str,
                          operation: str) -> ChangeHint:
    """A stored body read by its CRM's reader; without one, what the event's columns say
    (the estimate and whether it was deleted, no version)."""
    reader = STORED_BODY_READERS.get(crm)
    if reader is not None:
        return reader(body, estimate_id=estimate_id, operation=operation)
    return ChangeHint(crm=crm, estimate_id=estimate_id, kind=kind_of_operation(operation),
                      updated_at=None)
