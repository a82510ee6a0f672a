"""One test body for every CRM: a driver per CRM creates an estimate in its stand-in (which
sends the webhook to the receiver), approves it, and says whom the customer is."""
from __future__ import annotations

from dataclasses import dataclass

from lead_orchestrator.domain.contact_points import normalize_phone


@dataclass(frozen=True)
class MadeEstimate:
    order_id: str
    phone: str  # E.164, as the Twilio stand-in's outbox shows it
    email: str
    delivered: tuple[int, ...]  # the HTTP answers the webhook deliveries got


class ShopMonkeyDriver:
    crm = "shopmonkey"

    def __init__(self, standins, shop) -> None:
        self.state, self.key = standins.shopmonkey, shop.shopmonkey_api_key.get_secret_value()

    def create_estimate(self) -> MadeEstimate:
        made = self.state.create_order(self.key, wait_webhook=True)
        customer = made["customer"]
        return MadeEstimate(made["order"]["id"], customer["phoneNumbers"][0]["number"],
                            customer["emails"][0]["email"], (made["delivery"].as_dict()["final_status"],))

    def approve(self, order_id: str) -> None:
        self.state.update_order(order_id, {"authorized": True}, wait_webhook=True)


class TekmetricDriver:
    crm = "tekmetric"

    def __init__(self, standins, shop) -> None:
        self.state, self.shop_id = standins.tekmetric, shop.credentials.shop_id

    def create_estimate(self) -> MadeEstimate:
        made = self.state.create_order(self.shop_id, wait_webhook=True)
        customer = made["customer"]
        return MadeEstimate(str(made["order"]["id"]), normalize_phone(customer["phone"][0]["number"]),
                            customer["email"], tuple(d.status for d in made["deliveries"]))

    def approve(self, order_id: str) -> None:
        self.state.answer_jobs(int(order_id), True, wait_webhook=True)


DRIVERS = {"shopmonkey": ShopMonkeyDriver, "tekmetric": TekmetricDriver}
