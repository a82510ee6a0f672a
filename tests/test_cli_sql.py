"""`sql`: psql as the read-only analyst role (or the owner with --admin), or a URL that
psql and psycopg accept when psql is absent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from lead_orchestrator.cli import sql as cli_sql
from lead_orchestrator.cli.main import main


@pytest.fixture
def cli(database_url, settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LEAD_DATA_DIR", str(settings.data_dir))
    yield lambda *args: CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_the_printed_url_reads_as_the_analyst(cli, make_shop):
    shop = make_shop()
    result = cli("sql", "--print-url")
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "lead_analyst"
        # The views come first on the search path.
        assert conn.execute("SELECT count(*) FROM shop_health WHERE shop = %s", (shop.slug,)).fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT webhook_secret FROM public.shopmonkey_credentials")
    with psycopg.connect(cli("sql", "--admin", "--print-url").output.strip()) as conn:
        assert conn.execute("SELECT webhook_secret IS NOT NULL FROM public.shopmonkey_credentials c "
                            "JOIN public.tenants t ON t.id = c.tenant_id WHERE t.slug = %s",
                            (shop.slug,)).fetchone()[0]


def test_without_psql_it_prints_the_url(cli, monkeypatch):
    monkeypatch.setattr(cli_sql, "find_psql", lambda embedded: None)
    result = cli("sql")
    assert result.exit_code == 0
    url, _ = result.output.split("\n", 1)
    assert url.startswith("postgresql://") and "role%3Dlead_analyst" in url
    assert "psql is not installed" in result.output


def test_it_runs_psql_with_the_arguments_given(database_url, make_shop, settings):
    shop = make_shop()
    env = {**os.environ, "DATABASE_URL": database_url, "LEAD_DATA_DIR": str(settings.data_dir)}
    cli = Path(sys.executable).parent / "lead-orchestrator"
    done = subprocess.run([str(cli), "sql", "--", "-At", "-c", "SELECT current_user, count(*) FROM shop_health "
                           f"WHERE shop = '{shop.slug}'"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lead_analyst|1"
    refused = subprocess.run([str(cli), "sql", "--", "-c", "DELETE FROM analytics.shops"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "permission denied" in refused.stderr


def test_the_psql_shipped_with_the_embedded_server_is_found():
    bundled = cli_sql.bundled_psql()
    assert bundled and Path(bundled).is_file()
    assert cli_sql.find_psql(embedded=True) == bundled
