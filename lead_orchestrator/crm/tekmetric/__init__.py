"""Tekmetric adapter: OAuth client-credentials client, repair orders as estimates,
webhook hints, and the per-partner-app request budget. The one place Tekmetric's JSON
keys are read (tests/test_tekmetric_adapter.py checks that no other module does)."""
from lead_orchestrator.crm.tekmetric.adapter import TekmetricAdapter
from lead_orchestrator.crm.tekmetric.app import app_budget, partner_app_client
from lead_orchestrator.crm.tekmetric.budget import PollPlan, plan_poll, safe_per_minute, shops_served
from lead_orchestrator.crm.tekmetric.client import TekmetricClient
from lead_orchestrator.crm.tekmetric.limiter import SlidingWindowLimiter
from lead_orchestrator.crm.tekmetric.mapping import CRM
from lead_orchestrator.crm.tekmetric.webhooks import new_webhook_token, token_matches, token_sha256

__all__ = ["CRM", "PollPlan", "SlidingWindowLimiter", "TekmetricAdapter", "TekmetricClient", "app_budget",
           "new_webhook_token", "partner_app_client", "plan_poll", "safe_per_minute", "shops_served", "token_matches",
           "token_sha256"]
