"""One Tekmetric partner app in a process: its client, whose requests pass the app's
request budget shared with every other process of the deployment (crm/app_budget.py),
and whose poll cadences come from the app's plan (budget.py)."""
from __future__ import annotations

from lead_orchestrator.crm.app_budget import AppBudget, app_key
from lead_orchestrator.crm.tekmetric.budget import BUDGET_PER_MINUTE, plan_poll
from lead_orchestrator.crm.tekmetric.client import TekmetricClient
from lead_orchestrator.crm.tekmetric.mapping import CRM


def app_budget(db, client_id: str, *, budget_per_minute: int = BUDGET_PER_MINUTE, **kwargs) -> AppBudget:
    """The app's shared budget: 600 requests a minute (300 on the sandbox)."""
    return AppBudget(db, app_key(CRM, client_id), budget_per_minute, planner=plan_poll, **kwargs)


def partner_app_client(db, base_url: str, client_id: str, client_secret: str, *,
                       budget_per_minute: int = BUDGET_PER_MINUTE, **client_kwargs) -> TekmetricClient:
    """The client to share by every shop and thread of this process."""
    return TekmetricClient(base_url, client_id, client_secret,
                           limiter=app_budget(db, client_id, budget_per_minute=budget_per_minute), **client_kwargs)
