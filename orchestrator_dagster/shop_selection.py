"""Which shops a run works on: the `shops` its config names, or every active shop."""
from __future__ import annotations

from lead_orchestrator.store.shops import tenant_id_for_slug
from lead_orchestrator.services.touch_sweep import active_tenant_ids


def named_tenant_ids(db, slugs: list[str]) -> list[int] | None:
    """The tenant ids of the named shops (None when none is named: every active shop).
    A name that is no active shop fails the run with that name, before anything is done."""
    if not slugs:
        return None
    with db.system_tx() as conn:
        tenant_ids = [tenant_id_for_slug(conn, slug) for slug in slugs]
    unknown = [slug for slug, tid in zip(slugs, tenant_ids) if tid is None]
    if unknown:
        raise ValueError(f"no active shop named {', '.join(unknown)}")
    return tenant_ids


def tenant_ids_to_run(db, slugs: list[str]) -> list[int]:
    named = named_tenant_ids(db, slugs)
    return active_tenant_ids(db) if named is None else named
