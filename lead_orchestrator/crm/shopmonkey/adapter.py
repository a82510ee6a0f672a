"""One ShopMonkey shop behind the CRM port (`lead_orchestrator.crm.base.CrmAdapter`).

A thin layer over `ShopMonkeyClient` (which keeps its retries, the shop's shared pacer
and the neutral errors): the requests are the ones ingest and the poll always made, and
`mapping.py` turns the answers into the domain's objects.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Mapping

from lead_orchestrator.crm.base import ChangeHint, ChangeKind, ChangeScan, Estimate, EstimateStatus, InvalidWebhook
from lead_orchestrator.crm.errors import CrmError, CrmNotFound
from lead_orchestrator.crm.shopmonkey.client import ShopMonkeyClient
from lead_orchestrator.crm.shopmonkey.mapping import (CRM, ESTIMATE_TABLE, contact_choice, hint_from_envelope,
                                                      needs_vehicle_fetch, parse_customer, parse_order, parse_vehicle)

_OPERATIONS = ("INSERT", "UPDATE", "DELETE")
# ShopMonkey ids are hex-like strings; anything else would change the path we ask for.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ShopMonkeyAdapter:
    crm = CRM

    def __init__(self, client: ShopMonkeyClient) -> None:
        self.client = client

    def fetch_estimate(self, estimate_id: str, *, deadline: float | None = None,
                       hint: ChangeHint | None = None) -> Estimate:
        """Order, then customer, then the vehicle only when the order does not name it.
        A closed order needs neither (its lead, if any, just ends). An order a DELETE
        named is deleted whatever it says now, and when it is gone (404) the estimate is
        rebuilt from the hint, as deleted."""
        deleted = hint is not None and hint.kind is ChangeKind.DELETED
        if not _ID.fullmatch(str(estimate_id)):
            raise CrmNotFound(f"ShopMonkey order {estimate_id!r}: not a ShopMonkey id", 404)
        try:
            order = self.client.get_order(estimate_id, deadline=deadline)
        except CrmNotFound:
            if not deleted:
                raise  # perhaps not visible yet: the caller retries
            return deleted_estimate(hint)
        estimate = parse_order(order, deleted=deleted)
        if estimate.closing_reason is not None:
            return estimate
        customer = None
        if estimate.customer_id:
            phone_id, email_id = contact_choice(order)
            customer = parse_customer(self.client.get_customer(estimate.customer_id, deadline=deadline),
                                      phone_id=phone_id, email_id=email_id)
        vehicle = estimate.vehicle
        if needs_vehicle_fetch(order):
            try:
                vehicle = parse_vehicle(self.client.get_vehicle(estimate.vehicle_id, deadline=deadline))
            except CrmNotFound:
                vehicle = None  # removed since: the estimate is answered without it
        return dataclasses.replace(estimate, customer=customer, vehicle=vehicle)

    def changes_since(self, since: dt.datetime, *, deadline: float | None = None) -> ChangeScan:
        """The client's keyset scan (its paging, its fallback to offset paging when the
        API ignores the filter or the sort, its `read_below`), each row as an estimate."""
        before = self.client.requests_made
        try:
            scan = self.client.scan_orders_updated_since(since, deadline=deadline)
        except CrmError as exc:  # nothing was read
            exc.requests = self.client.requests_made - before
            raise
        estimates: list[Estimate] = []
        malformed: list[str] = []
        for row in scan.rows:
            try:
                estimates.append(parse_order(row))
            except CrmError as exc:
                malformed.append(str(exc))
        return ChangeScan(tuple(estimates), scan.requests, scan.read_below, scan.error, tuple(malformed),
                          received=scan.received)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], *, url_token: str | None) -> ChangeHint | None:
        """Reads a delivery's body. The signature (Standard Webhooks HMAC) is checked by
        the receiver's ShopMonkey route before the body is stored (webhook_receiver/
        routers/shopmonkey.py); `url_token` is not used by ShopMonkey. None for a table
        other than orders (customers, vehicles: nothing an estimate is fetched for)."""
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidWebhook("ShopMonkey webhook: body is not JSON", 400) from None
        if not isinstance(envelope, dict) or envelope.get("operation") not in _OPERATIONS \
                or not isinstance(envelope.get("table"), str) or not isinstance(envelope.get("data"), dict):
            raise InvalidWebhook('ShopMonkey webhook: expected {"operation", "table", "data": object}', 400)
        if envelope["table"] != ESTIMATE_TABLE:
            return None
        hint = hint_from_envelope(envelope)
        if not hint.estimate_id:
            raise InvalidWebhook("ShopMonkey webhook: an order without its id", 400)
        return hint


def deleted_estimate(hint: ChangeHint) -> Estimate:
    """What is known of an estimate that is gone: the hint's id and stamps."""
    return Estimate(crm=CRM, id=hint.estimate_id, number="", shop_ref="", status=EstimateStatus.DELETED,
                    created_at=hint.created_at, updated_at=hint.updated_at, total_cents=None, customer_id=None,
                    vehicle_id=None, deleted_at=hint.updated_at)
