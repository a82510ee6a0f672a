"""`poll`: the backup poll outside Dagster, for a poll partition of its own (a process
per shard: more CPU than the code server's one interpreter) or a shop polled by hand.
Claims keep it off the shops a poll sensor or another poller is polling."""
from __future__ import annotations

import click

from lead_orchestrator.cli.context import command_box, command_settings
from lead_orchestrator.runtime.database import database_url_for

TICK_SECONDS = 5.0


def _shard(value: str):
    from lead_orchestrator.services.poll import Shard

    try:
        index, count = (int(part) for part in value.split("/"))
        return Shard(index - 1, count)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give the shard as I/N with 1 <= I <= N, e.g. 2/4") from None


@click.command(help="Poll the CRMs of the shops whose slot has come, every 5 s until stopped (or --once): "
                    "all shops, or one shard of them (--shard I/N: those whose tenant id modulo N is I-1). "
                    "--shop polls the named shops once, due or not.")
@click.option("--shard", "shard_text", default="1/1", show_default=True, help="This poller's shard, I/N.")
@click.option("--once", is_flag=True, help="One tick, then exit.")
@click.option("--shop", "slugs", multiple=True, help="Poll this shop now (repeatable); implies --once.")
def poll(shard_text: str, once: bool, slugs: tuple[str, ...]) -> None:
    import signal
    import threading
    import time

    import psycopg
    from psycopg.rows import dict_row

    from lead_orchestrator.services.poll import PollConfig, new_http_client, poll_cycle
    from lead_orchestrator.services.shop_clients import vendors_from_settings
    from lead_orchestrator.store.db import Database
    from lead_orchestrator.store.shops import get_shop

    shard = _shard(shard_text)
    settings = command_settings()
    config = PollConfig(concurrency=settings.poll_concurrency)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with database_url_for(settings) as (url, _):
        tenant_ids = None
        if slugs:
            with psycopg.connect(url, row_factory=dict_row) as conn:
                shops = {slug: get_shop(conn, slug, command_box()) for slug in slugs}
            unknown = [slug for slug, shop in shops.items() if shop is None]
            if unknown:
                raise click.ClickException(f"no such shop: {', '.join(unknown)}")
            tenant_ids = [shop.id for shop in shops.values()]
        db = Database(url, max_size=settings.poll_db_connections, name="poll", box=command_box()).open()
        try:
            with new_http_client(config) as http:
                vendors = vendors_from_settings(settings, db)
                while not stop.is_set():
                    started = time.monotonic()
                    cycle = poll_cycle(db, vendors, http=http, config=config, shard=shard, tenant_ids=tenant_ids)
                    click.echo(cycle.summary())
                    if once or tenant_ids is not None:
                        return
                    stop.wait(max(0.0, TICK_SECONDS - (time.monotonic() - started)))
        finally:
            db.close()
