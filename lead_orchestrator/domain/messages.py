"""What a touch says: merge fields of a lead, the rendered SMS (with the opt-out line in
the first one a lead receives) and the email (with the shop's postal address, an
unsubscribe link and one-click `List-Unsubscribe` headers, and Reply-To the lead's reply
address when the deployment receives replies). Used by the sender and by
`lead-orchestrator preview`, so a preview shows exactly what would be sent."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from lead_orchestrator.domain.sequences import Step, template_for
from lead_orchestrator.domain.templates import OPT_OUT_TEXT, format_cents, render

# A body that already tells the reader how to opt out does not get a second line.
_OPT_OUT_STATED = re.compile(r"\b(reply|text)\s+stop\b", re.IGNORECASE)


class Shop(Protocol):
    """What a message needs of the shop that sends it (store.shops.Shop has it all)."""

    name: str
    shop_phone: str | None
    postal_address: str | None
    settings: dict[str, Any]


@dataclass(frozen=True)
class Message:
    channel: str
    body: str
    subject: str | None = None
    headers: dict[str, str] | None = None
    reply_to: tuple[str, str] | None = None  # (address, display name): email only


def merge_fields(shop: Shop, lead: dict) -> dict[str, str]:
    return {
        "first_name": lead.get("first_name") or "there",
        "last_name": lead.get("last_name") or "",
        "vehicle": lead.get("vehicle_name") or "vehicle",
        "shop_name": shop.name,
        "shop_phone": shop.shop_phone or "",
        "estimate_number": lead.get("order_number") or "",
        "estimate_total": format_cents(lead.get("total_cents")),
        "link": (shop.settings or {}).get("link", ""),
    }


def sample_lead() -> dict:
    """The customer `preview` renders for."""
    return {"first_name": "Dana", "last_name": "Lopez", "vehicle_name": "2018 Toyota Camry",
            "order_number": "10482", "total_cents": 84950}


def compose(shop: Shop, step: Step, lead: dict, *, first_sms: bool, unsubscribe_url: str | None,
            reply_to: str | None = None) -> Message:
    """The message of one step for one lead. `first_sms`: no SMS of this lead has gone
    out yet, so this one must say how to opt out. `reply_to`: the lead's reply address
    (lead_orchestrator.messaging.reply_address), so that the customer's answer reaches us; shown
    under the shop's name."""
    template = template_for(shop.settings or {}, step.template)
    fields = merge_fields(shop, lead)
    body = render(template.body, fields)
    if step.channel == "sms":
        if first_sms and not _OPT_OUT_STATED.search(body):
            body = f"{body} {OPT_OUT_TEXT}"
        return Message("sms", body)
    subject = render(template.subject, fields) if template.subject else f"Your estimate from {shop.name}"
    return Message("email", body + email_footer(shop, unsubscribe_url), subject=subject,
                   headers=unsubscribe_headers(unsubscribe_url), reply_to=(reply_to, shop.name) if reply_to else None)


def email_footer(shop: Shop, unsubscribe_url: str | None) -> str:
    """CAN-SPAM: who sent it, their postal address, and a working way to unsubscribe."""
    lines = ["", "", "--", shop.name, shop.postal_address or ""]
    if unsubscribe_url:
        lines.append(f"Unsubscribe: {unsubscribe_url}")
    return "\n".join(lines)


def unsubscribe_headers(unsubscribe_url: str | None) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: the mailbox provider POSTs to the URL."""
    if not unsubscribe_url:
        return {}
    return {"List-Unsubscribe": f"<{unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
