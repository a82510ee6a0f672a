"""`replay SHOP`: give a shop's parked or dead inbox events (or ones waiting out a
backoff) another run now. Safe to repeat: nothing is ever sent twice."""
from __future__ import annotations

import datetime as dt

import click
import psycopg

from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.services.replay import REPLAYABLE, replay_events
from lead_orchestrator.cli.context import command_box, command_settings
from lead_orchestrator.store.shops import get_shop


def _moment(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date or time (e.g. 2026-12-01 or 2026-12-01T09:30)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@click.command(help="Re-drive a shop's inbox events that are parked (waiting for credentials) or dead "
                    "(given up), optionally only one order or a time range of arrival. Safe to run twice: "
                    "no message is ever sent twice.")
@click.argument("slug")
@click.option("--order", "order_id", help="Only the events of this CRM order id.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(REPLAYABLE),
              help="Which events (repeatable). Default: parked and dead. 'pending' cuts a backoff short.")
@click.option("--since", help="Only events received at or after this time (ISO, UTC unless stated).")
@click.option("--until", help="Only events received before this time (ISO, UTC unless stated).")
def replay(slug: str, order_id: str | None, statuses: tuple[str, ...], since: str | None, until: str | None) -> None:
    start, end = _moment(since), _moment(until)
    with database_url_for(command_settings()) as (url, _):
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            shop = get_shop(conn, slug, command_box())
            if shop is None:
                raise click.ClickException(f"no shop named {slug!r}")
            count = replay_events(conn, shop.id, statuses=statuses or ("parked", "dead"), order_id=order_id,
                                  since=start, until=end)
    click.echo(f"{count} event(s) of {slug} back in the queue" if count else
               f"nothing to replay for {slug} (no matching {'/'.join(statuses or ('parked', 'dead'))} events)")
