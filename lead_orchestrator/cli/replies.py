"""`lead-orchestrator replies SLUG`: how a shop receives its customers' email replies
(docs/replies.md), and where the shop's copy of each reply goes."""
from __future__ import annotations

import json

import click
import psycopg

from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.services.email_replies import FORWARD_SETTING, reply_setup, valid_forward_address
from lead_orchestrator.cli.context import command_box, command_settings
from lead_orchestrator.store.shops import ShopChanges, get_shop, update_shop


@click.command(help="Show how a shop receives email replies; --forward-to sets where the shop's copy of each "
                    "reply goes (default: its SendGrid sender address).")
@click.argument("slug")
@click.option("--forward-to", help="Address that receives the copies (the service writers' mailbox).")
@click.option("--forward-to-sender", is_flag=True, help="Send the copies to the shop's SendGrid sender address again.")
def replies(slug: str, forward_to: str | None, forward_to_sender: bool) -> None:
    settings = command_settings()
    with database_url_for(settings) as (url, _):
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            shop = get_shop(conn, slug, command_box())
            if shop is None:
                raise click.ClickException(f"no shop named {slug!r}")
            if forward_to or forward_to_sender:
                values = {k: v for k, v in (shop.settings or {}).items() if k != FORWARD_SETTING}
                if forward_to:
                    try:
                        values[FORWARD_SETTING] = valid_forward_address(forward_to, settings.inbound_parse_domain)
                    except ValueError as exc:
                        raise click.BadParameter(str(exc), param_hint="--forward-to") from None
                shop = update_shop(conn, slug, ShopChanges(settings=values), command_box())
    click.echo(json.dumps({"shop": slug, **reply_setup(settings, shop)}, indent=2))
