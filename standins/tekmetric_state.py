"""In-memory Tekmetric: partner apps, the shops connected to them, repair orders with
their customers and vehicles, and the knobs tests turn.

Ids are integers, global across shops (as Tekmetric's are). A token belongs to a partner
app and reads every shop connected to it; other shops answer 403. Timestamps are
ISO-8601 UTC with milliseconds and `Z`, strictly increasing across the stand-in.

Guesses where the contract is silent (each one the harder case for a client):
deleting an order sets `deletedDate` and status 7 but leaves `updatedDate` alone; the
list's default page size is 20 and its default order is by id; the status codes other
than WORKINPROGRESS are made up; a request refused with 429 does not count against the
budget, every other authenticated request (token requests included) does.
"""
from __future__ import annotations

import collections
import copy
import itertools
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from standins.faults import FaultsControl, InjectedFaults
from standins.outbox import Outbox
from standins.outgoing import OutgoingCalls
from standins.tekmetric_webhooks import Delivery, WebhookEmitter

BUDGET_PER_MINUTE = 600
PAGE_MAX = 100
PAGE_DEFAULT = 20
STATUSES = {1: ("ESTIMATE", "Estimate"), 2: ("WORKINPROGRESS", "Work-in-Progress"), 3: ("COMPLETE", "Complete"),
            4: ("SAVEDFORLATER", "Saved for Later"), 5: ("POSTED", "Posted"),
            6: ("ACCOUNTSRECEIVABLE", "Accounts Receivable"), 7: ("DELETED", "Deleted")}
DELETED = 7
# The sentence a status change is announced with (partners saw these verbs).
STATUS_EVENTS = {3: "completed", 5: "posted", 7: "deleted"}
DATE_FILTERS = {"start": "createdDate", "end": "createdDate", "updatedDateStart": "updatedDate",
                "updatedDateEnd": "updatedDate", "postedDateStart": "postedDate", "postedDateEnd": "postedDate",
                "deletedDateStart": "deletedDate", "deletedDateEnd": "deletedDate"}
SORTS = {"createdDate": lambda ro, state: ro["createdDate"],
         "repairOrderNumber": lambda ro, state: ro["repairOrderNumber"],
         "customer.firstName": lambda ro, state: state.customer_name(ro, "firstName"),
         "customer.lastName": lambda ro, state: state.customer_name(ro, "lastName")}


class TekmetricError(Exception):
    """An answer with `body` as JSON, or an empty body when body is None."""

    def __init__(self, status: int, body: dict | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


def error_body(message: str) -> dict:
    return {"type": "ERROR", "message": message, "data": None, "details": {}}


def oauth_error(status: int, error: str, description: str) -> TekmetricError:
    return TekmetricError(status, {"error": error, "error_description": description})


@dataclass
class App:
    client_id: str
    client_secret: str
    token: str | None = None
    refused: bool = False  # the credentials themselves are refused (invalid_client)
    shop_ids: set[int] = field(default_factory=set)


@dataclass
class Shop:
    id: int
    name: str
    webhook_url: str | None = None  # exactly as registered, token query included
    webhook_style: str = "flat"  # "flat": data is the order; "nested": data.repairOrder
    webhook_shop_id_zero: bool = False  # some deliveries carry shopId 0
    next_number: int = 1001


class TekmetricState(FaultsControl):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.deliveries = Outbox()  # standins.tekmetric_webhooks.Delivery objects
        self._outgoing = OutgoingCalls("tekmetric")
        self.webhooks = WebhookEmitter(self._outgoing, self.deliveries)
        self._last_stamp = datetime.now(timezone.utc) - timedelta(seconds=1)
        # Never reset: tests sharing one stand-in tell their records apart by id and phone.
        self._ids = {kind: itertools.count(start) for kind, start in
                     (("order", 50001), ("customer", 20001), ("vehicle", 30001), ("job", 70001), ("phone", 90001),
                      ("shop", 1))}
        self.reset()

    def reset(self) -> None:
        """Forget apps, shops, data, deliveries, injected faults, budgets and counters."""
        with self._lock:
            self.apps: dict[str, App] = {}
            self.shops: dict[int, Shop] = {}
            self.orders: dict[int, dict] = {}
            self.customers: dict[int, dict] = {}
            self.vehicles: dict[int, dict] = {}
            self.modes = InjectedFaults()
            self._budget = (BUDGET_PER_MINUTE, 60.0)
            self._hits: dict[str, collections.deque[float]] = {}
            self.reset_request_counts()
        self.webhooks.reset()
        self.deliveries.clear()

    def close(self) -> None:
        self._outgoing.close()

    # ----- apps, shops, knobs -------------------------------------------------------
    def add_app(self, client_id: str, client_secret: str) -> App:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required")
        with self._lock:
            app = self.apps.get(client_id)
            if app is None:
                app = self.apps[client_id] = App(client_id, client_secret)
            app.client_secret, app.refused = client_secret, False
            return app

    def add_shop(self, shop_id: int | None = None, *, client_id: str | None = None, name: str | None = None,
                 webhook_url: str | None = None, webhook_style: str | None = None,
                 webhook_shop_id_zero: bool | None = None) -> Shop:
        """Create (or update) a shop and connect it to `client_id`'s app (to every app
        when None), as a shop does under Shop Settings → Integrations."""
        if webhook_style not in (None, "flat", "nested"):
            raise ValueError("webhook_style is 'flat' or 'nested'")
        with self._lock:
            apps = [self._app(client_id)] if client_id is not None else list(self.apps.values())
            if shop_id is None:
                shop_id = next(i for i in self._ids["shop"] if i not in self.shops)
            shop = self.shops.get(shop_id)
            if shop is None:
                shop = self.shops[shop_id] = Shop(shop_id, name or f"Shop {shop_id}")
            if name:
                shop.name = name
            if webhook_url is not None:
                shop.webhook_url = webhook_url or None
            if webhook_style is not None:
                shop.webhook_style = webhook_style
            if webhook_shop_id_zero is not None:
                shop.webhook_shop_id_zero = webhook_shop_id_zero
            for app in apps:
                app.shop_ids.add(shop_id)
            return shop

    def disconnect_shop(self, shop_id: int, client_id: str | None = None) -> None:
        """The shop leaves the app's scope (403 from then on); the token stays valid."""
        with self._lock:
            self._shop(shop_id)
            for app in [self._app(client_id)] if client_id else self.apps.values():
                app.shop_ids.discard(shop_id)

    def revoke_token(self, client_id: str, *, refuse_credentials: bool = False) -> None:
        """The app's token stops working (401, empty body); the next token request gets a
        new one, unless the credentials are refused too (invalid_client)."""
        with self._lock:
            app = self._app(client_id)
            app.token = None
            app.refused = refuse_credentials

    def set_budget(self, requests: int | None, window_seconds: float = 60.0) -> None:
        """At most `requests` per app in any `window_seconds` (default 600 a minute);
        None lifts the limit."""
        with self._lock:
            self._budget = (requests, window_seconds) if requests else None
            self._hits.clear()

    def request_counts(self) -> dict:
        with self._lock:
            return {"total": self._counts["total"], "rate_limited": self._counts["rate_limited"],
                    "by_app": dict(self._by_app), "by_path": dict(self._by_path), "by_shop": dict(self._by_shop),
                    "peak_in_window": dict(self._peak), "budget": self.budget()}

    def budget(self) -> dict | None:
        with self._lock:
            if self._budget is None:
                return None
            return {"requests": self._budget[0], "window_seconds": self._budget[1]}

    def reset_request_counts(self) -> None:
        with self._lock:
            self._counts = {"total": 0, "rate_limited": 0}
            self._by_app: collections.Counter[str] = collections.Counter()
            self._by_path: collections.Counter[str] = collections.Counter()
            self._by_shop: collections.Counter[str] = collections.Counter()
            self._peak: dict[str, int] = {}

    # ----- data -----------------------------------------------------------------------
    def create_order(self, shop_id: int, *, order: dict | None = None, customer: dict | None = None,
                     vehicle: dict | None = None, jobs: list[dict] | None = None, with_customer: bool = True,
                     with_vehicle: bool = True, emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        """A customer, a vehicle and an estimate (status 1) with two jobs in one go; the
        dicts override generated fields. Returns {"order", "customer", "vehicle",
        "deliveries"} (deliveries empty when no webhook went out)."""
        with self._lock:
            shop = self._shop(shop_id)
            stamp = self._stamp()
            cust = veh = None
            if with_customer:
                cust = _default_customer(next(self._ids["customer"]), shop.id, stamp, self._ids["phone"]) \
                    | (customer or {})
                self.customers[cust["id"]] = cust
            if with_vehicle:
                veh = _default_vehicle(next(self._ids["vehicle"]), shop.id, cust, stamp) | (vehicle or {})
                self.vehicles[veh["id"]] = veh
            order_id = next(self._ids["order"])
            job_rows = [_default_job(next(self._ids["job"]), order_id, j, stamp)
                        for j in (jobs if jobs is not None else _DEFAULT_JOBS)]
            row = _default_order(order_id, shop, cust, veh, job_rows, stamp) | (order or {})
            _set_status(row, row["repairOrderStatus"])
            shop.next_number += 1
            self.orders[row["id"]] = row
            result = {"order": copy.deepcopy(row), "customer": copy.deepcopy(cust), "vehicle": copy.deepcopy(veh)}
        result["deliveries"] = self._emit(row["id"], f"Repair Order #{row['repairOrderNumber']} created",
                                          emit_webhook, wait_webhook)
        return result

    def update_order(self, order_id: int, fields: dict, *, event: str | None = None, emit_webhook: bool = True,
                     wait_webhook: bool = False) -> dict:
        """Changes fields (`repairOrderStatus` may be given as an id) and stamps
        `updatedDate`. The webhook's sentence follows the change unless `event` is given."""
        with self._lock:
            row = self._order(order_id)
            old_status = row["repairOrderStatus"]["id"]
            row.update({k: v for k, v in fields.items() if k not in ("id", "repairOrderStatus")})
            if "repairOrderStatus" in fields:
                _set_status(row, fields["repairOrderStatus"])
            row["updatedDate"] = fields.get("updatedDate") or self._stamp()
            new_status = row["repairOrderStatus"]["id"]
            if new_status == DELETED and not row.get("deletedDate"):
                row["deletedDate"] = self._stamp()
            if event is None:
                verb = STATUS_EVENTS.get(new_status, "status updated") if new_status != old_status else "updated"
                event = f"Repair Order #{row['repairOrderNumber']} {verb}"
            snapshot = copy.deepcopy(row)
        return {"order": snapshot, "deliveries": self._emit(order_id, event, emit_webhook, wait_webhook)}

    def answer_jobs(self, order_id: int, authorized: bool | None, job_ids: Iterable[int] | None = None, *,
                    emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        """The customer approves (True) or declines (False) jobs (all when job_ids is
        None); None withdraws the answer."""
        with self._lock:
            row = self._order(order_id)
            stamp = self._stamp()
            wanted = set(job_ids) if job_ids is not None else None
            for job in row["jobs"]:
                if wanted is None or job["id"] in wanted:
                    job["authorized"] = authorized
                    job["authorizedDate"] = stamp if authorized is not None else None
            row["updatedDate"] = stamp
            approved = sum(j["authorized"] is True for j in row["jobs"])
            declined = sum(j["authorized"] is False for j in row["jobs"])
            event = f"Repair Order #{row['repairOrderNumber']}: customer approved {approved} job(s) and " \
                    f"declined {declined} job(s)"
            snapshot = copy.deepcopy(row)
        return {"order": snapshot, "deliveries": self._emit(order_id, event, emit_webhook, wait_webhook)}

    def delete_order(self, order_id: int, *, emit_webhook: bool = True, wait_webhook: bool = False) -> dict:
        """Soft delete: status 7 and `deletedDate`; `updatedDate` is left as it was."""
        with self._lock:
            row = self._order(order_id)
            _set_status(row, DELETED)
            row["deletedDate"] = self._stamp()
            snapshot = copy.deepcopy(row)
        event = f"Repair Order #{row['repairOrderNumber']} deleted"
        return {"order": snapshot, "deliveries": self._emit(order_id, event, emit_webhook, wait_webhook)}

    def send_webhook(self, order_id: int, event: str | None = None, *, wait: bool = True) -> list[Delivery]:
        """(Re)send the order as it is now; an error if its shop has no webhook URL."""
        with self._lock:
            row = self._order(order_id)
            shop = self.shops[row["shopId"]]
            if not shop.webhook_url:
                raise ValueError(f"shop {shop.id} has no webhook_url")
        return self._emit(order_id, event or f"Repair Order #{row['repairOrderNumber']} updated", True, wait)

    def get_order(self, order_id: int) -> dict:
        with self._lock:
            return copy.deepcopy(self._order(order_id))

    # ----- used by the API routes --------------------------------------------------------
    def count_request(self, path: str, app: str | None, shop: str | None) -> None:
        with self._lock:
            self._counts["total"] += 1
            self._by_path[path] += 1
            self._by_app[app or "<none>"] += 1
            if shop:
                self._by_shop[shop] += 1

    def issue_token(self, client_id: str | None, client_secret: str | None, grant_type: str | None) -> dict:
        with self._lock:
            app = self.apps.get(client_id or "")
            if app is None or app.refused or not secrets.compare_digest(app.client_secret, client_secret or ""):
                raise oauth_error(401, "invalid_client", "Bad client credentials")
            self._spend(app.client_id)
            if grant_type != "client_credentials":
                raise oauth_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}")
            if app.token is None:  # the same token every time until it is revoked
                app.token = secrets.token_hex(16)
            return {"access_token": app.token, "token_type": "bearer",
                    "scope": " ".join(str(s) for s in sorted(app.shop_ids))}

    def authorize(self, token: str | None) -> App:
        """The app a bearer token belongs to, its budget spent by one request."""
        with self._lock:
            app = next((a for a in self.apps.values() if token and a.token == token), None)
            if app is None:
                raise TekmetricError(401)  # a bad bearer: empty body
            self._spend(app.client_id)
            return app

    def check_scope(self, app: App, shop_id: Any) -> None:
        with self._lock:
            if shop_id not in app.shop_ids:
                raise TekmetricError(403, error_body("Access Denied"))

    def record(self, app: App, kind: str, record_id: int) -> dict:
        """One order, customer or vehicle, if the app may read its shop."""
        with self._lock:
            row = {"order": self.orders, "customer": self.customers, "vehicle": self.vehicles}[kind].get(record_id)
            if row is None:
                raise TekmetricError(404, error_body(f"{kind.capitalize()} not found"))
            self.check_scope(app, row["shopId"])
            return copy.deepcopy(row)

    def list_orders(self, app: App, shop_id: int, keep: Callable[[dict], bool], sort: str | None,
                    descending: bool, page: int, size: int) -> dict:
        with self._lock:
            self.check_scope(app, shop_id)
            rows = [r for r in self.orders.values() if r["shopId"] == shop_id and keep(r)]
            key = SORTS.get(sort or "")
            rows.sort(key=(lambda r: (key(r, self) or "", r["id"])) if key else (lambda r: r["id"]),
                      reverse=descending)
            return page_envelope([copy.deepcopy(r) for r in rows], page, size, sorted_by=key is not None)

    def customer_name(self, order: dict, part: str) -> str:
        return (self.customers.get(order.get("customerId")) or {}).get(part) or ""

    # ----- helpers ---------------------------------------------------------------------
    def _spend(self, client_id: str) -> None:
        """One request against the app's budget: 429 with an empty body when over it."""
        if self._budget is None:
            return
        limit, window = self._budget
        now = self._clock()
        hits = self._hits.setdefault(client_id, collections.deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            self._counts["rate_limited"] += 1
            raise TekmetricError(429)
        hits.append(now)
        self._peak[client_id] = max(self._peak.get(client_id, 0), len(hits))

    def _app(self, client_id: str) -> App:
        app = self.apps.get(client_id)
        if app is None:
            raise KeyError(f"unknown partner app {client_id!r}; add_app() first")
        return app

    def _shop(self, shop_id: int) -> Shop:
        shop = self.shops.get(shop_id)
        if shop is None:
            raise KeyError(f"unknown shop {shop_id!r}; add_shop() first")
        return shop

    def _order(self, order_id: int) -> dict:
        row = self.orders.get(order_id)
        if row is None:
            raise KeyError(f"unknown repair order {order_id!r}")
        return row

    def _stamp(self) -> str:
        now = datetime.now(timezone.utc)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._last_stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
        return self._last_stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _emit(self, order_id: int, event: str, emit: bool, wait: bool) -> list[Delivery]:
        with self._lock:
            row = copy.deepcopy(self.orders[order_id])
            shop = self.shops[row["shopId"]]
            url, style, zero = shop.webhook_url, shop.webhook_style, shop.webhook_shop_id_zero
        if not emit or not url:
            return []
        if zero:
            row["shopId"] = 0
        data = {"repairOrder": row} if style == "nested" else row
        return self.webhooks.emit(url, {"event": event, "data": data}, wait=wait)


def page_envelope(rows: list[dict], page: int, size: int, *, sorted_by: bool) -> dict:
    """A Spring Data page of `rows` (all matching rows) for 0-based `page` of `size`."""
    total = len(rows)
    pages = math.ceil(total / size) if total else 0
    content = rows[page * size:(page + 1) * size]
    sort = {"sorted": sorted_by, "unsorted": not sorted_by, "empty": not sorted_by}
    return {
        "content": content,
        "pageable": {"sort": sort, "pageNumber": page, "pageSize": size, "offset": page * size,
                     "paged": True, "unpaged": False},
        "totalPages": pages, "totalElements": total, "last": page >= pages - 1, "first": page == 0,
        "size": size, "number": page, "sort": sort, "numberOfElements": len(content), "empty": not content,
    }


def _set_status(row: dict, status: Any) -> None:
    status_id = status.get("id") if isinstance(status, dict) else status
    if status_id not in STATUSES:
        raise ValueError(f"unknown repair order status {status!r}; Tekmetric's are {sorted(STATUSES)}")
    code, name = STATUSES[status_id]
    row["repairOrderStatus"] = {"id": status_id, "code": code, "name": name}


_DEFAULT_JOBS = [{"name": "Front brake pads and rotors", "subtotal": 48950},
                 {"name": "Brake fluid exchange", "subtotal": 12900}]


def _default_customer(customer_id: int, shop_id: int, stamp: str, phone_ids) -> dict:
    n = customer_id % 10000
    return {
        "id": customer_id, "firstName": "Dana", "lastName": "Lopez", "email": f"dana.lopez.{n}@example.com",
        # As typed into Tekmetric: not E.164.
        "phone": [{"id": next(phone_ids), "number": f"303-555-{n:04d}", "type": "Cell", "primary": True}],
        "customerType": {"id": 1, "code": "PERSON", "name": "Person"},
        "okForMarketing": False,  # the only consent flag, and it is about marketing
        "address": {"id": customer_id, "address1": "1600 Champa St", "address2": None, "city": "Denver",
                    "state": "CO", "zip": "80202", "fullAddress": "1600 Champa St, Denver, CO 80202"},
        "notes": None, "shopId": shop_id, "createdDate": stamp, "updatedDate": stamp, "deletedDate": None,
    }


def _default_vehicle(vehicle_id: int, shop_id: int, customer: dict | None, stamp: str) -> dict:
    return {
        "id": vehicle_id, "customerId": customer["id"] if customer else None, "year": 2018, "make": "Toyota",
        "model": "Camry", "subModel": "SE", "engine": "2.5L L4", "color": "Silver", "licensePlate": "ABC1234",
        "state": "CO", "vin": "4T1B11HK5JU" + secrets.token_hex(3).upper(), "shopId": shop_id,
        "createdDate": stamp, "updatedDate": stamp, "deletedDate": None,
    }


def _default_job(job_id: int, order_id: int, job: dict, stamp: str) -> dict:
    return {"id": job_id, "repairOrderId": order_id, "name": "Inspection", "authorized": None,
            "authorizedDate": None, "selected": True, "archived": False, "subtotal": 0, "createdDate": stamp} | job


def _default_order(order_id: int, shop: Shop, cust: dict | None, veh: dict | None, jobs: list[dict],
                   stamp: str) -> dict:
    return {
        "id": order_id, "repairOrderNumber": shop.next_number, "shopId": shop.id, "repairOrderStatus": 1,
        "customerId": cust["id"] if cust else None, "vehicleId": veh["id"] if veh else None,
        "appointmentStartTime": None, "milesIn": 61250, "milesOut": None,
        "totalSales": sum(j.get("subtotal") or 0 for j in jobs),  # integer cents
        "jobs": jobs, "customerConcerns": [{"id": order_id, "concern": "Grinding noise when braking"}],
        "createdDate": stamp, "updatedDate": stamp, "deletedDate": None, "postedDate": None, "completedDate": None,
    }
