"""In-memory ShopMonkey tenants (one per API key) and the knobs tests turn.

Each shop owns its orders, customers, vehicles and workflow statuses; another key sees
none of them (404). Timestamps are ISO-8601 UTC with milliseconds and `Z`, and strictly
increase across the whole stand-in so that (id, updatedDate) identifies a version.
"""
from __future__ import annotations

import collections
import copy
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from standins.outbox import Outbox
from standins.outgoing import OutgoingCalls
from standins.shopmonkey_webhooks import WebhookDelivery, WebhookSender, check_secret, new_secret

DOCS = "https://shopmonkey.dev/overview/errors"
WORKFLOW_COLUMNS = ("Estimates", "Approved", "In Progress", "Ready for Pickup", "Completed")


class ShopMonkeyError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return {"success": False, "code": self.code, "message": self.message, "documentation_url": DOCS}


def new_id() -> str:
    return secrets.token_hex(12)  # 24 hex characters, like ShopMonkey's ids


@dataclass
class Shop:
    api_key: str
    company_id: str
    location_id: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    revoked: bool = False
    orders: dict[str, dict] = field(default_factory=dict)
    customers: dict[str, dict] = field(default_factory=dict)
    vehicles: dict[str, dict] = field(default_factory=dict)
    workflow_statuses: list[dict] = field(default_factory=list)
    next_number: int = 10001


@dataclass
class Injected:
    status: int | None  # None: only hang, then answer normally
    hang_seconds: float
    api_key: str | None  # None: any request


@dataclass
class PageEdit:
    """An order edited while a client pages through a list: after `after_pages` list
    requests of the key, before the next one is answered (the paging trap)."""

    api_key: str
    order_id: str
    fields: dict
    after_pages: int
    emit_webhook: bool = False
    seen_pages: int = 0
    fired_at: float | None = None  # time.monotonic() when applied


class ShopMonkeyState:
    def __init__(self) -> None:
        self.shops: dict[str, Shop] = {}
        self.deliveries = Outbox()  # WebhookDelivery objects
        self._lock = threading.RLock()
        self._outgoing = OutgoingCalls("shopmonkey")
        self.webhooks = WebhookSender(self._outgoing, self.deliveries)  # tune retry timing here
        self._last_stamp = datetime.now(timezone.utc) - timedelta(seconds=1)
        # Never reset: tests sharing one stand-in tell their customers apart by phone/email.
        self._customer_seq = itertools.count(100)
        self.reset()

    def reset(self) -> None:
        """Forget shops, data, deliveries, injected failures, rate limits and counters."""
        with self._lock:
            self.shops.clear()
            self._order_shop: dict[str, str] = {}
            self._injected: collections.deque[Injected] = collections.deque()
            self._rate_limit: tuple[int, float] | None = None
            self._key_limits: dict[str, tuple[int, float]] = {}
            self._hits: dict[str, collections.deque[float]] = {}
            self.page_edits: list[PageEdit] = []
            self.reset_request_counts()
        self.deliveries.clear()

    def close(self) -> None:
        self._outgoing.close()

    # ----- shops and knobs -----
    def add_shop(self, api_key: str, webhook_url: str | None = None, webhook_secret: str | None = None,
                 *, company_id: str | None = None, location_id: str | None = None) -> Shop:
        """Register (or update) a shop. A webhook URL without a secret gets a new whsec_ secret."""
        if webhook_secret is not None:
            check_secret(webhook_secret)
        with self._lock:
            shop = self.shops.get(api_key)
            if shop is None:
                shop = Shop(api_key, company_id or new_id(), location_id or new_id())
                shop.workflow_statuses = [{"id": new_id(), "name": n, "position": i}
                                          for i, n in enumerate(WORKFLOW_COLUMNS)]
                self.shops[api_key] = shop
            shop.revoked = False
            if webhook_url is not None:
                shop.webhook_url = webhook_url
            if webhook_secret is not None or (shop.webhook_url and not shop.webhook_secret):
                shop.webhook_secret = webhook_secret or new_secret()
            return shop

    def revoke_key(self, api_key: str) -> None:
        with self._lock:
            self._shop(api_key).revoked = True

    def restore_key(self, api_key: str) -> None:
        """The revoked key works again (the shop fixed it on ShopMonkey's side)."""
        with self._lock:
            self._shop(api_key).revoked = False

    def inject_failures(self, count: int = 1, status: int | None = 503, *, hang_seconds: float = 0.0,
                        api_key: str | None = None) -> None:
        """The next `count` API requests wait `hang_seconds`, then answer `status`
        (or normally when status is None)."""
        with self._lock:
            self._injected.extend(Injected(status, hang_seconds, api_key) for _ in range(count))

    def set_rate_limit(self, requests: int | None, window_seconds: float = 1.0, *,
                       api_key: str | None = None) -> None:
        """At most `requests` API calls per key in any `window_seconds`; None lifts the limit.
        With `api_key`, the limit applies to that key only (and replaces the general one for it)."""
        with self._lock:
            if api_key is None:
                self._rate_limit = (requests, window_seconds) if requests else None
                self._hits.clear()
            else:
                if requests:
                    self._key_limits[api_key] = (requests, window_seconds)
                else:
                    self._key_limits.pop(api_key, None)
                self._hits.pop(api_key, None)

    def edit_between_pages(self, api_key: str, order_id: str, fields: dict, *, after_pages: int = 1,
                           emit_webhook: bool = False) -> PageEdit:
        """Edit the order after the key's next `after_pages` list requests, before the one
        after them is answered: a row moves while a client pages through the list."""
        if after_pages < 1:
            raise ValueError("after_pages is at least 1")
        with self._lock:
            self._shop(api_key)
            if self._order_shop.get(order_id) != api_key:
                raise KeyError(f"order {order_id!r} does not belong to that key")
            edit = PageEdit(api_key, order_id, dict(fields), after_pages, emit_webhook)
            self.page_edits.append(edit)
            return edit

    def list_requested(self, api_key: str) -> None:
        """Called by the list route before it reads the rows: applies the edits now due."""
        due = []
        with self._lock:
            for edit in self.page_edits:
                if edit.api_key == api_key and edit.fired_at is None:
                    if edit.seen_pages >= edit.after_pages:
                        edit.fired_at = time.monotonic()
                        due.append(edit)
                    else:
                        edit.seen_pages += 1
        for edit in due:
            self.update_order(edit.order_id, edit.fields, emit_webhook=edit.emit_webhook)

    def request_counts(self) -> dict:
        with self._lock:
            return {"total": self._counts["total"], "rate_limited": self._counts["rate_limited"],
                    "by_key": dict(self._by_key), "by_path": dict(self._by_path),
                    "by_key_path": {k: dict(v) for k, v in self._by_key_path.items()}}

    def reset_request_counts(self) -> None:
        with self._lock:
            self._counts = {"total": 0, "rate_limited": 0}
            self._by_key: collections.Counter[str] = collections.Counter()
            self._by_path: collections.Counter[str] = collections.Counter()
            self._by_key_path: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    # ----- data -----
    def create_order(self, api_key: str, *, order: dict | None = None, customer: dict | None = None,
                     vehicle: dict | None = None, with_customer: bool = True, with_vehicle: bool = True,
                     emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        """Create a customer, a vehicle and an estimate order in one go; the dicts override
        generated fields. Returns {"order", "customer", "vehicle", "delivery"}; delivery is
        None when no webhook was sent (emit_webhook=False simulates a dropped webhook)."""
        with self._lock:
            shop = self._shop(api_key)
            stamp = self._stamp()
            cust = veh = None
            if with_customer:
                cust = _default_customer(stamp, next(self._customer_seq) % 10000) | (customer or {})
                shop.customers[cust["id"]] = cust
            if with_vehicle:
                veh = _default_vehicle() | (vehicle or {})
                shop.vehicles[veh["id"]] = veh
            row = _default_order(shop, cust, veh, stamp) | (order or {})
            shop.next_number += 1
            shop.orders[row["id"]] = row
            self._order_shop[row["id"]] = api_key
            result = {"order": copy.deepcopy(row), "customer": copy.deepcopy(cust), "vehicle": copy.deepcopy(veh)}
        result["delivery"] = self._emit(api_key, "INSERT", row, None, emit_webhook, wait_webhook)
        return result

    def update_order(self, order_id: str, fields: dict, *, emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        with self._lock:
            api_key, row = self._order_row(order_id)
            diff = [k for k, v in fields.items() if row.get(k) != v and k not in ("id", "updatedDate")]
            row.update({k: v for k, v in fields.items() if k != "id"})
            row["updatedDate"] = fields.get("updatedDate") or self._stamp()
            snapshot = copy.deepcopy(row)
        delivery = self._emit(api_key, "UPDATE", snapshot, diff, emit_webhook, wait_webhook)
        return {"order": snapshot, "diff": diff, "delivery": delivery}

    def delete_order(self, order_id: str, *, emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        """Soft delete: the row stays readable with deleted=true, as ShopMonkey keeps it."""
        with self._lock:
            api_key, row = self._order_row(order_id)
            row["deleted"] = True
            row["updatedDate"] = self._stamp()
            snapshot = copy.deepcopy(row)
        delivery = self._emit(api_key, "DELETE", snapshot, None, emit_webhook, wait_webhook)
        return {"order": snapshot, "delivery": delivery}

    def send_webhook(self, order_id: str, operation: str = "INSERT", diff: list[str] | None = None,
                     *, wait: bool = True) -> WebhookDelivery:
        """(Re)send a webhook for the order as it is now; with wait=True return after the last attempt."""
        with self._lock:
            api_key, row = self._order_row(order_id)
            snapshot = copy.deepcopy(row)
        delivery = self._emit(api_key, operation, snapshot, diff, True, wait)
        if delivery is None:
            raise ValueError(f"shop {api_key!r} has no webhook_url")
        return delivery

    def get_order(self, order_id: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._order_row(order_id)[1])

    # ----- used by the API routes -----
    def rows(self, shop: Shop, table: str) -> list[dict]:
        # Shallow copies: updates replace values, they never mutate nested lists in place.
        with self._lock:
            source = shop.workflow_statuses if table == "workflow_status" else self._table(shop, table).values()
            return [dict(r) for r in source]

    def row(self, shop: Shop, table: str, row_id: str) -> dict | None:
        with self._lock:
            found = self._table(shop, table).get(row_id)
            return copy.deepcopy(found) if found is not None else None

    @staticmethod
    def _table(shop: Shop, table: str) -> dict[str, dict]:
        return {"order": shop.orders, "customer": shop.customers, "vehicle": shop.vehicles}[table]

    def count_request(self, api_key: str | None, path: str) -> None:
        key = api_key or "<none>"
        with self._lock:
            self._counts["total"] += 1
            self._by_key[key] += 1
            self._by_path[path] += 1
            self._by_key_path[key][path] += 1

    def take_injected(self, api_key: str | None) -> Injected | None:
        with self._lock:
            for item in self._injected:
                if item.api_key is None or item.api_key == api_key:
                    self._injected.remove(item)
                    return item
        return None

    def authorize(self, api_key: str | None) -> Shop:
        with self._lock:
            shop = self.shops.get(api_key or "")
            if shop is None or shop.revoked:
                raise ShopMonkeyError(401, "UNAUTHORIZED", "Unauthorized: missing, unknown or revoked API key")
            self._check_rate(shop.api_key)
            return shop

    def _check_rate(self, api_key: str) -> None:
        rule = self._key_limits.get(api_key, self._rate_limit)
        if rule is None:
            return
        limit, window = rule
        now = time.monotonic()
        hits = self._hits.setdefault(api_key, collections.deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            self._counts["rate_limited"] += 1
            wait = max(1, int(hits[0] + window - now + 0.999))
            raise ShopMonkeyError(429, "TOO_MANY_REQUESTS", "Too many requests, please slow down",
                                  {"Retry-After": str(wait)})
        hits.append(now)

    # ----- helpers -----
    def _shop(self, api_key: str) -> Shop:
        shop = self.shops.get(api_key)
        if shop is None:
            raise KeyError(f"unknown shop api key {api_key!r}; add_shop() first")
        return shop

    def _order_row(self, order_id: str) -> tuple[str, dict]:
        api_key = self._order_shop.get(order_id)
        if api_key is None:
            raise KeyError(f"unknown order {order_id!r}")
        return api_key, self.shops[api_key].orders[order_id]

    def _stamp(self) -> str:
        now = datetime.now(timezone.utc)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._last_stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
        return self._last_stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _emit(self, api_key: str, operation: str, row: dict, diff: list[str] | None, emit: bool,
              wait: bool) -> WebhookDelivery | None:
        with self._lock:
            shop = self.shops[api_key]
            url, secret = shop.webhook_url, shop.webhook_secret
        if not emit or not url or not secret:
            return None
        body: dict[str, Any] = {"apiVersion": "3", "operation": operation, "table": "order", "data": row}
        if operation == "UPDATE":
            body["diff"] = diff or []
        return self.webhooks.send(url, secret, body, wait=wait)


def _default_customer(stamp: str, n: int) -> dict:
    return {
        "id": new_id(), "firstName": "Dana", "lastName": "Lopez", "companyName": None,
        "customerType": "Customer", "marketingOptIn": True, "preferredContactMethod": "All",
        "email": None, "phone": None,  # null in practice: contacts live in the lists below
        "emails": [{"id": new_id(), "email": f"dana.lopez.{n}@example.com", "primary": True, "subscribed": True}],
        "phoneNumbers": [{"id": new_id(), "number": f"+1512555{n:04d}", "extension": None, "primary": True,
                          "type": "Mobile", "optIn": True}],
        "address1": "100 Congress Ave", "city": "Austin", "state": "TX", "postalCode": "78701",
        "country": "US", "createdDate": stamp, "updatedDate": stamp,
    }


def _default_vehicle() -> dict:
    return {
        "id": new_id(), "year": 2018, "make": "Toyota", "model": "Camry", "submodel": "SE",
        "vin": "4T1B11HK5JU" + secrets.token_hex(3).upper(), "licensePlate": "ABC1234",
        "mileage": 61250, "owners": [],
    }


def _default_order(shop: Shop, cust: dict | None, veh: dict | None, stamp: str) -> dict:
    return {
        "id": new_id(), "number": str(shop.next_number), "status": "Estimate",
        "workflowStatusId": shop.workflow_statuses[0]["id"],
        "customerId": cust["id"] if cust else None, "vehicleId": veh["id"] if veh else None,
        "companyId": shop.company_id, "locationId": shop.location_id,
        "authorized": False, "authorizedDate": None, "invoiced": False, "paid": False,
        "archived": False, "deleted": False, "appointmentDates": [], "totalCostCents": 84950,
        "generatedCustomerName": f"{cust['firstName']} {cust['lastName']}" if cust else None,
        "generatedVehicleName": " ".join(str(veh[k]) for k in ("year", "make", "model", "submodel") if veh.get(k)) if veh else None,
        "complaint": "Grinding noise when braking", "phoneNumberId": None, "emailId": None,
        "createdDate": stamp, "updatedDate": stamp, "messageCount": 0,
    }
