"""One Tekmetric shop behind the CRM port (`lead_orchestrator.crm.base.CrmAdapter`).

The partner app's client (token, budget hold-back) is shared by all of the app's shops;
an adapter adds the shop id and the digest of the shop's webhook URL token. Without a
client (`client=None`) an adapter only reads webhooks: what the receiver needs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Callable, Mapping

from lead_orchestrator.crm.app_budget import AppBudget
from lead_orchestrator.crm.base import ChangeHint, ChangeScan, Estimate, InvalidWebhook, utc_iso
from lead_orchestrator.crm.tekmetric.client import TekmetricClient
from lead_orchestrator.crm.tekmetric.mapping import CRM, parse_customer, parse_repair_order, parse_vehicle
from lead_orchestrator.crm.tekmetric.webhooks import parse_webhook, token_matches
from lead_orchestrator.crm.errors import CrmError, CrmNotFound

# Offset paging is only safe on a stable order: `createdDate` never changes, so an order
# edited while we page stays where it was (Tekmetric cannot sort by updatedDate).
LIST_ORDER = {"sort": "createdDate", "sortDirection": "ASC"}


# `changes_since(deletions_since=...)` left out: the deletion query starts where the change query does.
SAME_WINDOW = object()


class TekmetricAdapter:
    crm = CRM
    # Deletions need a query of their own (the trap, below): a poll may run it less often
    # than the change query, from where it last ran (`deletions_since`; budget.py).
    deletions_separate = True

    def __init__(self, client: TekmetricClient | None, shop_id: str | int,
                 webhook_token_sha256: str | None = None) -> None:
        if str(shop_id).strip() in ("", "0"):
            raise ValueError("a Tekmetric shop id is required")
        self.client = client
        self.shop_id = str(shop_id)
        self._webhook_token_sha256 = webhook_token_sha256

    def fetch_estimate(self, estimate_id: str, *, deadline: float | None = None,
                       hint: ChangeHint | None = None) -> Estimate:
        self._need_client()
        order = self.client.get(f"/repair-orders/{_path_id(estimate_id)}", deadline=deadline)
        estimate = parse_repair_order(order)
        if estimate.shop_ref != self.shop_id:
            # One partner app reads many shops: an order of another shop (or one that does
            # not say whose it is) must never become this shop's lead.
            raise CrmNotFound(f"Tekmetric repair order {estimate_id} is not shop {self.shop_id}'s", 404)
        customer = self._optional(f"/customers/{estimate.customer_id}", parse_customer, estimate.customer_id, deadline)
        vehicle = self._optional(f"/vehicles/{estimate.vehicle_id}", parse_vehicle, estimate.vehicle_id, deadline)
        return dataclasses.replace(estimate, customer=customer, vehicle=vehicle)

    def _need_client(self) -> None:
        if self.client is None:
            raise CrmError("this Tekmetric adapter reads webhooks only: it was built without a client")

    def _optional(self, path: str, parse: Callable, ref: str | None, deadline: float | None):
        if ref is None:
            return None
        try:
            return parse(self.client.get(path, deadline=deadline))
        except CrmNotFound:
            return None  # removed since: the estimate is still answered for what it has

    @property
    def shared_budget(self) -> AppBudget | None:
        """The partner app's request budget when it is shared by every process (the poll
        plans each shop's cadence inside it); None with a limiter of this process only."""
        limiter = getattr(self.client, "limiter", None)  # a webhook reader has no client
        return limiter if isinstance(limiter, AppBudget) else None

    def changes_since(self, since: dt.datetime, *, deadline: float | None = None,
                      deletions_since: dt.datetime | None | object = SAME_WINDOW) -> ChangeScan:
        """Two queries, because of Tekmetric's trap: `updatedDateStart` combined with
        `deletedDateStart` returns *only* deleted orders, so deletions are asked for on
        their own. The next watermark (`read_below`) is the newest `updatedDate` the first
        query returned; the deletions never move it. It is withheld (None) when a query
        failed, and when the list shrank while it was paged (an order left it, so every
        order behind it moved forward one place and one may have been skipped): the next
        scan reads the same window again. `deletions_since`: where the deletion query
        starts (default `since`); None leaves it out."""
        self._need_client()
        before = self.client.requests_sent_by_this_thread()
        found: dict[tuple[str, dt.datetime], Estimate] = {}
        malformed: list[str] = []
        newest: dt.datetime | None = None
        stable = True
        error: CrmError | None = None
        try:
            stable = self._scan({"updatedDateStart": utc_iso(since)}, since, found, malformed, deadline)
            stamps = [e.updated_at for e in found.values() if e.deleted_at is None]
            newest = max(stamps) if stamps else None
            deleted_from = since if deletions_since is SAME_WINDOW else deletions_since
            if deleted_from is not None:
                self._scan({"deletedDateStart": utc_iso(deleted_from)}, deleted_from, found, malformed, deadline)
        except CrmError as exc:
            if not found:
                raise
            error = exc
        rows = tuple(sorted(found.values(), key=lambda e: (e.updated_at, e.id)))
        read_below = newest if error is None and stable else None
        return ChangeScan(rows, self.client.requests_sent_by_this_thread() - before, read_below, error,
                          tuple(malformed))

    def _scan(self, window: dict[str, str], since: dt.datetime, found: dict, malformed: list[str],
              deadline: float | None) -> bool:
        """Reads every page into `found`; False when the list shrank while it was read.
        A row that cannot be read is skipped with its reason in `malformed`: it cannot be
        acted on, and it must not hold the watermark back for every other order."""
        totals: list[int] = []
        params = {"shop": self.shop_id, **window, **LIST_ORDER}
        for page in self.client.pages("/repair-orders", params, deadline=deadline):
            if isinstance(page.get("totalElements"), int):
                totals.append(page["totalElements"])
            for row in page["content"]:
                try:
                    estimate = parse_repair_order(row)
                except CrmError as exc:
                    malformed.append(str(exc))
                    continue
                # The API is not trusted to have filtered: our own window and shop check.
                if estimate.updated_at >= since and estimate.shop_ref == self.shop_id:
                    found.setdefault((estimate.id, estimate.updated_at), estimate)
        return all(later >= totals[0] for later in totals[1:])

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], *, url_token: str | None) -> ChangeHint | None:
        if not token_matches(url_token, self._webhook_token_sha256):
            raise InvalidWebhook("Tekmetric webhook: wrong or missing URL token", 401)
        return parse_webhook(body, shop_id=self.shop_id)


def _path_id(estimate_id: str) -> str:
    """Tekmetric ids are numbers; anything else would change the path we ask for."""
    value = str(estimate_id).strip()
    if not value.isdigit():
        raise CrmNotFound(f"Tekmetric repair order {estimate_id!r}: not a Tekmetric id", 404)
    return value
