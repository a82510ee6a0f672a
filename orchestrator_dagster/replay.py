"""The replay job: an operator re-drives parked or dead inbox events from the Dagster UI
(Launchpad config: shops, statuses, an order, a time range of arrival). The events go
back to the queue; the dispatcher (or the inbox sensor's ingest run) processes them."""
import datetime as dt
from typing import Optional

from dagster import Config, OpExecutionContext, in_process_executor, job, op
from pydantic import Field

from lead_orchestrator.services.replay import replay_events
from lead_orchestrator.store.shops import tenant_id_for_slug
from orchestrator_dagster.resources import DatabaseResource


class ReplayConfig(Config):
    # Kept as plain defaults: Dagster builds the Launchpad's config schema from them.
    shops: list[str] = Field(default=[], description="Shop slugs; empty means every active shop.")
    statuses: list[str] = Field(default=["parked", "dead"],
                                description="Any of parked, dead, pending ('pending' cuts a backoff short).")
    order_id: Optional[str] = Field(default=None, description="Only this CRM order's events.")
    received_since: Optional[str] = Field(default=None, description="ISO time; only events received at or after it.")
    received_until: Optional[str] = Field(default=None, description="ISO time; only events received before it.")


def _moment(value: Optional[str]) -> Optional[dt.datetime]:
    if not value:
        return None
    moment = dt.datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@op
def replay_inbox_events(context: OpExecutionContext, config: ReplayConfig, database: DatabaseResource) -> None:
    db = database.database()
    with db.system_tx() as conn:
        if config.shops:
            ids = {slug: tenant_id_for_slug(conn, slug) for slug in config.shops}
            unknown = [slug for slug, tid in ids.items() if tid is None]
            if unknown:
                raise ValueError(f"no active shop named {', '.join(unknown)}")
        else:
            ids = {str(r["id"]): r["id"] for r in conn.execute("SELECT active_tenant_ids() AS id").fetchall()}
    total = 0
    for name, tenant_id in ids.items():
        with db.tenant_tx(tenant_id) as conn:
            count = replay_events(conn, tenant_id, statuses=tuple(config.statuses), order_id=config.order_id,
                                  since=_moment(config.received_since), until=_moment(config.received_until))
        if count:
            context.log.info(f"shop {name}: {count} event(s) back in the queue")
        total += count
    context.log.info(f"replayed {total} event(s) over {len(ids)} shop(s)")


@job(description="Re-drive parked or dead inbox events (config: shops, statuses, order, time range). "
                 "Safe to run twice: no message is sent twice.", executor_def=in_process_executor)
def replay_job():
    replay_inbox_events()
