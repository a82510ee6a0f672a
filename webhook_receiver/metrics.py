"""Prometheus metrics of the receiver (served at GET /metrics)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOKS = Counter("lead_webhooks_total", "Webhook deliveries by source and result", ["source", "result"])
INBOX_BATCH = Histogram("lead_inbox_batch_events", "Events stored per inbox transaction (group commit)",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
INBOX_COMMIT = Histogram("lead_inbox_commit_seconds", "Time to store and commit one inbox batch",
                         buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
# The per-shop rate limit (shop_budget.py): a lease is one statement for many requests.
RATE_LEASES = Counter("lead_webhook_rate_leases_total", "Budget leases asked of PostgreSQL by the per-shop rate limit",
                      ["result"])  # granted | refused | failed
RATE_LIMITED = Counter("lead_webhook_rate_limited_total", "Webhook requests answered 429 by the per-shop rate limit")
