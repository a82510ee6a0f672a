"""Alerts to people: a Slack-compatible incoming-webhook post and/or an email through
the deployment's SendGrid account, each saying what, which shop, since when, and where
to look in the Dagster UI.

No storm: the caller keeps the conditions it has alerted on (`open` below, e.g. in a
sensor cursor); a condition is announced once when it appears and once when it clears.
A send that reached no channel leaves the condition unannounced, so the next tick tries
again.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import httpx

from lead_orchestrator import redaction

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Alert:
    key: str  # names the condition, e.g. "check:stuck_events:joes-garage"
    what: str
    shop: str  # a shop's slug, or "all shops"
    detail: str
    since: dt.datetime | None
    link: str
    severity: str = "ERROR"  # ERROR | WARN
    cleared: bool = False

    @property
    def headline(self) -> str:
        state = "cleared" if self.cleared else self.severity
        return f"[{state}] {self.what} — shop {self.shop}"

    def lines(self) -> list[str]:
        since = f"{self.since.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if self.since else "unknown"
        return [self.headline, f"Shop: {self.shop}", f"Since: {since}", f"Detail: {self.detail}",
                f"Dagster UI: {self.link}"]


def slack_payload(alert: Alert) -> dict:
    """An incoming-webhook body Slack (and Mattermost, Teams' Slack-compatible hooks, ...)
    accepts: `text` for notifications and clients without blocks, `blocks` for layout."""
    lines = alert.lines()
    body = "\n".join(f"*{line.split(': ', 1)[0]}:* {line.split(': ', 1)[1]}" for line in lines[1:])
    return {
        "text": "\n".join(lines),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": lines[0][:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": body[:3000]}},
        ],
    }


@dataclass(frozen=True)
class AlertChannels:
    """Where alerts go; each channel is off while its settings are missing."""

    webhook_url: str | None = None
    email_to: tuple[str, ...] = ()
    email_from: str | None = None
    sendgrid_api_key: str | None = None
    sendgrid_base_url: str | None = None

    def __post_init__(self):
        redaction.register(self.webhook_url)  # a Slack hook URL is a credential
        redaction.register(self.sendgrid_api_key)

    @property
    def email_enabled(self) -> bool:
        return bool(self.email_to and self.email_from and self.sendgrid_api_key)

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url) or self.email_enabled


def send(channels: AlertChannels, alert: Alert, *, http: httpx.Client | None = None) -> bool:
    """Posts and/or emails the alert. True if at least one channel took it."""
    delivered = False
    if channels.webhook_url:
        delivered |= _post(channels.webhook_url, slack_payload(alert), http)
    if channels.email_enabled:
        delivered |= _email(channels, alert)
    return delivered


def _post(url: str, payload: dict, http: httpx.Client | None) -> bool:
    try:
        response = (http or httpx).post(url, json=payload, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        log.warning("alert webhook unreachable: %s", redaction.redact(f"{type(exc).__name__}: {exc}"))
        return False
    if response.is_success:
        return True
    log.warning("alert webhook answered %s", response.status_code)
    return False


def _email(channels: AlertChannels, alert: Alert) -> bool:
    from lead_orchestrator.messaging.senders import OutgoingEmail, SendGridSender

    sender = SendGridSender(channels.sendgrid_api_key, channels.sendgrid_base_url)
    delivered = False
    for to in channels.email_to:
        result = sender.send(OutgoingEmail(to=to, sender=channels.email_from, sender_name="Lead Orchestrator alerts",
                                           subject=alert.headline[:200], text="\n".join(alert.lines())))
        if result.outcome == "sent":
            delivered = True
        else:
            log.warning("alert email to %s not sent: %s %s", to, result.code, redaction.redact(result.detail or ""))
    return delivered


def changes(open_conditions: dict[str, str], current: dict[str, Alert]) -> tuple[list[Alert], list[str]]:
    """What to announce: conditions that appeared (not yet open) and the keys of open
    ones that cleared."""
    appeared = [alert for key, alert in sorted(current.items()) if key not in open_conditions]
    cleared = sorted(key for key in open_conditions if key not in current)
    return appeared, cleared
