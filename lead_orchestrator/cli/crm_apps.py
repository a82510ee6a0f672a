"""`crm-app`: the deployment's CRM partner apps (Tekmetric), and what `shops add/update`
needs for a Tekmetric shop: the check that the shop connected the app, and the webhook
URL to paste into Tekmetric."""
from __future__ import annotations

import json

import click
import psycopg

from lead_orchestrator.cli.context import command_box, command_settings
from lead_orchestrator.store.crm_apps import APP_CRMS, get_crm_app, set_crm_app
from lead_orchestrator.store.migrations import apply_migrations
from lead_orchestrator.runtime.database import database_url_for

WEBHOOK_PATH = "/webhooks/tekmetric/"


def tekmetric_webhook_url(token: str) -> str:
    return f"{command_settings().public_base_url}{WEBHOOK_PATH}{token}"


def check_tekmetric_scope(conn: psycopg.Connection, shop_id: int) -> None:
    """Asks Tekmetric (the partner app's token) whether shop `shop_id` connected the app;
    a ClickException saying what to do when it did not, or when that cannot be known."""
    from lead_orchestrator.crm.errors import CrmError
    from lead_orchestrator.crm.tekmetric.client import TekmetricClient

    app = get_crm_app(conn, "tekmetric", command_box())
    if app is None:
        raise click.ClickException("no Tekmetric partner app is configured: run `crm-app set tekmetric "
                                   "--client-id … --client-secret …` first (or give --skip-scope-check)")
    try:
        with TekmetricClient(command_settings().tekmetric_base_url, app.client_id,
                             app.client_secret.get_secret_value(), timeout=10.0) as client:
            scope = client.scope()
    except CrmError as exc:
        raise click.ClickException(f"could not ask Tekmetric which shops the partner app may read ({exc}); "
                                   "check TEKMETRIC_BASE_URL and the app's credentials, or give "
                                   "--skip-scope-check") from None
    if str(shop_id) not in scope:
        shown = ", ".join(sorted(scope, key=lambda s: (len(s), s))) or "none"
        raise click.ClickException(
            f"Tekmetric shop {shop_id} has not connected the partner app {app.client_id!r} (the shops it may "
            f"read: {shown}). The shop connects it in Tekmetric under Shop Settings → Integrations; then run "
            "this again.")


@click.group("crm-app", help="The deployment's CRM partner app (Tekmetric): one client id and secret read "
                             "every shop that connected it. Stored encrypted in the database.")
def crm_app() -> None:
    pass


@crm_app.command("set", help="Store (or replace) the partner app's client id and secret. Events that Tekmetric "
                             "shops parked while it was missing or refused go back to the queue.")
@click.argument("crm", type=click.Choice(APP_CRMS))
@click.option("--client-id", required=True)
@click.option("--client-secret", required=True, help="Never printed back; stored encrypted.")
def crm_app_set(crm: str, client_id: str, client_secret: str) -> None:
    with database_url_for(command_settings()) as (url, _):
        apply_migrations(url, command_box())
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            try:
                released = set_crm_app(conn, crm, client_id, client_secret, command_box())
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"crm": crm, "client_id": client_id.strip(), "client_secret": "set",
                           "parked_events_released": released}, indent=2))


@crm_app.command("show", help="The partner app's client id (the secret only as set / not set).")
@click.argument("crm", type=click.Choice(APP_CRMS))
def crm_app_show(crm: str) -> None:
    with database_url_for(command_settings()) as (url, _):
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            app = get_crm_app(conn, crm, command_box())
    click.echo(json.dumps({"crm": crm, "client_id": app.client_id if app else None,
                           "client_secret": "set" if app else "not set",
                           "base_url": command_settings().tekmetric_base_url}, indent=2))
