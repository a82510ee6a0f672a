"""Prometheus metrics of the receiver (served at GET /metrics)."""
from __future__ import annotations

from prometheus_client import Counter

WEBHOOKS = Counter("lead_webhooks_total", "Webhook deliveries by source and result", ["source", "result"])
