"""The `lead-orchestrator` command: run the stack, migrate, manage shops, run parts alone."""
from __future__ import annotations

import json
import sys

import click
import psycopg
from pydantic import ValidationError

from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.store.migrations import apply_migrations
from lead_orchestrator.cli.context import CommandContext, command_box, command_settings
from lead_orchestrator.settings import ConfigError, load_settings
from lead_orchestrator.store.shops import (CRMS, SECRET_FIELDS, ShopCannotSend, ShopChanges, ShopWrongCrm, create_shop,
                                           get_shop, list_shops, new_tekmetric_webhook_token, update_shop)


@click.group(help="Lead Orchestrator: answers new ShopMonkey and Tekmetric estimates by text and email within seconds.")
@click.pass_context
def main(ctx: click.Context) -> None:
    from lead_orchestrator import redaction

    redaction.install()
    try:
        settings = load_settings()  # configuration is input: checked before any command runs
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.obj = CommandContext(settings)


@main.command(help="Start everything: database, stand-ins (unless real vendors are chosen), receiver, "
                   "dispatcher, Dagster webserver and daemon, each restarted if it stops. Ctrl-C stops it all. "
                   "Vendors: --standins/--real-vendors, else LEAD_VENDORS, else the stand-ins unless a "
                   "vendor base URL (SHOPMONKEY_BASE_URL, …) is set.")
@click.option("--real-vendors", "vendors", flag_value="real",
              help="Use the vendor base URLs as configured (default: the real APIs); no stand-ins.")
@click.option("--standins", "vendors", flag_value="standins",
              help="Start the local stand-ins and point every shop at them.")
@click.option("--no-demo", is_flag=True, help="Do not create the demo estimate at start.")
@click.option("--production", is_flag=True,
              help="The production layout (docs/deployment.md): deploy/Procfile's command lines, a Dagster code "
                   "server of its own, RECEIVER_WORKERS receiver workers on one port, several dispatchers.")
@click.option("--dispatchers", default=2, show_default=True, type=click.IntRange(1, 16),
              help="With --production: how many dispatchers.")
def up(vendors: str | None, no_demo: bool, production: bool, dispatchers: int) -> None:
    from lead_orchestrator.runtime.stack import run_stack

    sys.exit(run_stack(command_settings(), vendors=vendors, demo=not no_demo, production=production,
                       dispatchers=dispatchers))


@main.command(help="Apply pending schema migrations (safe to run any time).")
def migrate() -> None:
    with database_url_for(command_settings()) as (url, _):
        applied = apply_migrations(url, command_box())
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")


@main.command(help="Run the fast path alone: process inbox events the moment they are stored.")
@click.option("--workers", default=32, show_default=True, help="Events processed at once.")
def dispatcher(workers: int) -> None:
    import logging
    import signal
    import threading

    from lead_orchestrator.store.db import Database
    from lead_orchestrator.runtime.dispatcher import Dispatcher
    from lead_orchestrator.services.shop_clients import vendors_from_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Twilio SDK and httpx (the ShopMonkey client) log every request at INFO: noise,
    # and CPU (a lock shared by every worker), at a thousand leads a minute.
    for chatty in ("twilio.http_client", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = command_settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with database_url_for(settings) as (url, _):
        # Workers share the pool: one holds a connection only inside a transaction.
        pool_size = min(workers + 2, settings.dispatcher_db_pool_size)
        db = Database(url, max_size=pool_size, name="dispatcher", box=command_box()).open(wait=False)  # the database may be down
        reporter = _leads_history_recorder(db) if settings.dagster_home else None
        if reporter is None:
            click.echo("DAGSTER_HOME is not set: leads materializations will not be recorded in Dagster")
        click.echo(f"dispatcher: {workers} workers, at most {pool_size} pooled database connections, "
                   "waiting for inbox events")
        try:
            Dispatcher(db, vendors_from_settings(settings, db), workers=workers, reporter=reporter).run(stop)
        finally:
            db.close()


def _leads_history_recorder(db):
    """Dagster's `leads` history for the dispatcher's results. The CLI is where the parts
    are assembled, so it is the one place in this package that reaches into
    orchestrator_dagster (lazily: the other commands never import Dagster)."""
    from orchestrator_dagster.history import BackgroundRecorder, LeadsHistory

    return BackgroundRecorder(LeadsHistory(db), "dispatcher")


@main.command("rotate-encryption-key", help=(
    "Re-encrypt every shop secret under the first key of LEAD_ENCRYPTION_KEY. Rotation: "
    "set LEAD_ENCRYPTION_KEY=NEW,OLD everywhere, run this, then remove OLD. Without "
    "LEAD_ENCRYPTION_KEY (local mode) use --generate-new-key."))
@click.option("--generate-new-key", is_flag=True,
              help="Local mode: replace the key kept in DATA_DIR/encryption_key by a new one (stop `up` first).")
@click.option("--print-new-key", is_flag=True, help="Only print a newly generated key, to put first in LEAD_ENCRYPTION_KEY.")
def rotate_encryption_key(generate_new_key: bool, print_new_key: bool) -> None:
    from lead_orchestrator.store.secret_box import SecretBox, SecretKeyError, new_key
    from lead_orchestrator.store.secret_rotation import rotate_secrets

    if print_new_key:
        click.echo(new_key())
        return
    settings = command_settings()
    if generate_new_key and settings.lead_encryption_key is not None:
        raise click.ClickException("LEAD_ENCRYPTION_KEY is set: put a new key first in it "
                                   "(`--print-new-key` makes one), keep the old one after it, and run again")
    try:
        keys = settings.encryption_keys()
        if generate_new_key:
            keys = [new_key(), *keys]
            # Old keys stay in the file until every row is re-encrypted: a crash midway loses nothing.
            _replace_file(settings.encryption_key_file, "\n".join(keys) + "\n")
        box = SecretBox(keys)
        with database_url_for(settings) as (url, _):
            apply_migrations(url, box=box)
            with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
                counts = rotate_secrets(conn, box)
    except SecretKeyError as exc:
        raise click.ClickException(str(exc)) from None
    if generate_new_key:
        _replace_file(settings.encryption_key_file, keys[0] + "\n")
    total = sum(counts.values())
    click.echo(f"re-encrypted {total} secret(s) under the first key"
               + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})" if total else ""))
    if generate_new_key:
        click.echo(f"{settings.encryption_key_file} now holds only the new key; restart running processes")
    elif len(keys) > 1:
        click.echo("every secret now reads with the first key: remove the older key(s) from "
                   "LEAD_ENCRYPTION_KEY and restart the processes")


def _replace_file(path, text: str) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


# --- shops ------------------------------------------------------------------------------

_SHOP_OPTIONS = [
    click.option("--name"), click.option("--time-zone", help="IANA zone, e.g. America/Chicago"),
    click.option("--shop-phone"), click.option("--postal-address"),
    click.option("--crm", type=click.Choice(CRMS), help="The shop's CRM (default shopmonkey)."),
    click.option("--shopmonkey-api-key"), click.option("--webhook-secret", help="ShopMonkey's webhook signing secret"),
    click.option("--tekmetric-shop-id", type=int, help="Tekmetric shops: the shop's id in Tekmetric"),
    click.option("--skip-scope-check", is_flag=True,
                 help="Tekmetric shops: do not ask Tekmetric whether the shop connected the partner app"),
    click.option("--twilio-account-sid"), click.option("--twilio-auth-token"),
    click.option("--twilio-sender", help="E.164 number or Messaging Service SID (MG…)"),
    click.option("--sendgrid-api-key"), click.option("--sendgrid-sender"),
    click.option("--sendgrid-event-public-key", help="Event webhook verification key (base64), from SendGrid's settings"),
    click.option("--send-window-start", help="HH:MM, shop time (default 08:00)"),
    click.option("--send-window-end", help="HH:MM, shop time (default 21:00)"),
    click.option("--max-lead-age-days", type=int),
    click.option("--active/--inactive", default=None),
]


def _shop_options(fn):
    for option in reversed(_SHOP_OPTIONS):
        fn = option(fn)
    return fn


def _changes(values: dict) -> ShopChanges:
    try:
        return ShopChanges(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise click.BadParameter(f"{'.'.join(map(str, first['loc']))}: {message}") from None


def _describe(shop, webhook_token: str | None = None) -> dict:
    data = shop.model_dump(mode="json", exclude={"credentials"})
    for field in SECRET_FIELDS:  # never print a secret, only whether it is set
        data[field] = "set" if getattr(shop, field) else "not set"
    if shop.crm == "tekmetric":
        from lead_orchestrator.cli.crm_apps import tekmetric_webhook_url

        data["tekmetric_shop_id"] = shop.credentials.shop_id
        data["tekmetric_partner_app"] = shop.credentials.app.client_id if shop.credentials.app else "not configured"
        # The URL carries the token, shown only when it is made: only its digest is stored.
        data["webhook_url"] = (tekmetric_webhook_url(webhook_token) if webhook_token else
                               "set (shown once; `shops update --rotate-webhook-token` makes a new one)"
                               if shop.credentials.webhook_token_sha256 else "not set")
    return data


def _say_webhook_url(shop, token: str | None) -> None:
    if token:  # on stderr, so that stdout stays the JSON
        click.echo(f"Paste this URL into Tekmetric as shop {shop.credentials.shop_id}'s webhook (it is shown "
                   f"only now):\n  {_describe(shop, token)['webhook_url']}", err=True)


@main.group(help="Add, list, show and update shops (tenants).")
def shops() -> None:
    pass


@shops.command("add", help="Add a shop with its credentials (secrets are stored encrypted and never "
                              "printed back); prints the shop as JSON.")
@click.argument("slug")
@_shop_options
def shops_add(slug: str, skip_scope_check: bool, **values) -> None:
    name = values.pop("name") or slug
    changes = _changes(values)
    token = None
    with database_url_for(command_settings()) as (url, _):
        apply_migrations(url, command_box())
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            try:
                crm = changes.check_crm()
                if crm == "tekmetric" and not skip_scope_check:
                    from lead_orchestrator.cli.crm_apps import check_tekmetric_scope

                    check_tekmetric_scope(conn, changes.tekmetric_shop_id)
                with conn.transaction():
                    shop = create_shop(conn, slug, name, changes, command_box())
                    if crm == "tekmetric":
                        token = new_tekmetric_webhook_token(conn, slug, command_box())
                        shop = get_shop(conn, slug, command_box())
            except (ShopCannotSend, ShopWrongCrm) as exc:
                raise click.ClickException(str(exc)) from None
            except psycopg.errors.UniqueViolation:
                raise click.ClickException(f"a shop named {slug!r} exists already (use `shops update`)") from None
            except psycopg.errors.CheckViolation:
                raise click.ClickException("slug must be 2-63 lowercase letters, digits or dashes") from None
    click.echo(json.dumps(_describe(shop, token), indent=2))
    _say_webhook_url(shop, token)


@shops.command("update", help="Change any of a shop's settings or credentials; prints the shop as JSON.")
@click.argument("slug")
@_shop_options
@click.option("--rotate-webhook-token", is_flag=True,
              help="Tekmetric shops: a new webhook URL (printed once); the old one stops working at once.")
def shops_update(slug: str, skip_scope_check: bool, rotate_webhook_token: bool, **values) -> None:
    changes = _changes(values)
    token = None
    with database_url_for(command_settings()) as (url, _):
        with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            try:
                current = get_shop(conn, slug, command_box())
                if current is None:
                    raise click.ClickException(f"no shop named {slug!r}")
                crm = changes.check_crm(current)
                if crm == "tekmetric" and changes.tekmetric_shop_id and not skip_scope_check:
                    from lead_orchestrator.cli.crm_apps import check_tekmetric_scope

                    check_tekmetric_scope(conn, changes.tekmetric_shop_id)
                with conn.transaction():
                    shop = update_shop(conn, slug, changes, command_box())
                    # A shop that just became a Tekmetric shop gets its URL at once.
                    if rotate_webhook_token or (crm == "tekmetric" and not shop.credentials.webhook_token_sha256):
                        token = new_tekmetric_webhook_token(conn, slug, command_box())
                        shop = get_shop(conn, slug, command_box())
            except (ShopCannotSend, ShopWrongCrm) as exc:
                raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(_describe(shop, token), indent=2))
    _say_webhook_url(shop, token)


@shops.command("list", help="One line per shop: slug, name, CRM, time zone, active or not.")
def shops_list() -> None:
    with database_url_for(command_settings()) as (url, _):
        apply_migrations(url, command_box())
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            found = list_shops(conn, command_box())
    if not found:
        click.echo("no shops yet: add one with `lead-orchestrator shops add SLUG --name ...`")
    for shop in found:
        click.echo(f"{shop.slug:24} {shop.name:30} {shop.crm:11} {shop.time_zone:20} "
                   f"{'active' if shop.active else 'inactive'}")


@shops.command("show", help="Print a shop as JSON (secrets only as set / not set).")
@click.argument("slug")
def shops_show(slug: str) -> None:
    with database_url_for(command_settings()) as (url, _):
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            shop = get_shop(conn, slug, command_box())
    if shop is None:
        raise click.ClickException(f"no shop named {slug!r}")
    from lead_orchestrator.services.email_replies import reply_setup

    click.echo(json.dumps({**_describe(shop), "email_replies": reply_setup(command_settings(), shop)}, indent=2))


# --- touch-points: sequence, templates, quiet-hours, preview, why (cli/touchpoints.py) ---
from lead_orchestrator.cli.touchpoints import COMMANDS as _TOUCHPOINT_COMMANDS  # noqa: E402

for _command in _TOUCHPOINT_COMMANDS:
    main.add_command(_command)

# --- operators: replay parked/dead inbox events (cli/replay.py) ---
from lead_orchestrator.cli.replay import replay as _replay  # noqa: E402

main.add_command(_replay)

# --- operators and analysts: status (cli/status.py), sql (cli/sql.py) ---
from lead_orchestrator.cli.sql import sql as _sql  # noqa: E402
from lead_orchestrator.cli.status import status as _status  # noqa: E402

main.add_command(_status)
main.add_command(_sql)

from lead_orchestrator.cli.replies import replies as _replies  # noqa: E402  (email replies: docs/replies.md)

main.add_command(_replies)

from lead_orchestrator.cli.crm_apps import crm_app as _crm_app  # noqa: E402  (Tekmetric's partner app)

main.add_command(_crm_app)

from lead_orchestrator.cli.poll import poll as _poll  # noqa: E402  (the backup poll as a process: docs/poll.md)

main.add_command(_poll)
