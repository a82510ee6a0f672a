"""Database access: a connection pool whose connections act as role `lead_app`, so
row-level security applies, and transactions that name their tenant.

`tenant_tx(tenant_id)` is the only way application code reaches tenant data;
`system_tx()` has no tenant and can only call the SECURITY DEFINER functions that
return identifiers across tenants. Admin work (migrations, the shops CLI) uses
`admin_connect()`, which keeps the owner's role.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from lead_orchestrator import redaction

APP_ROLE = "lead_app"


def libpq_url(url: str) -> str:
    """psycopg wants a plain postgresql:// URL; accept SQLAlchemy-style driver suffixes."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    return f"{'postgresql' if base == 'postgres' else base}{sep}{rest}"


def sqlalchemy_psycopg2_url(url: str) -> str:
    """Dagster's storage goes through SQLAlchemy; name psycopg2 explicitly (SQLAlchemy 2.1
    would otherwise pick psycopg 3, which dagster-postgres does not support)."""
    return "postgresql+psycopg2://" + libpq_url(url).partition("://")[2]


def _act_as_app_role(conn: psycopg.Connection) -> None:
    conn.execute(f"SET ROLE {APP_ROLE}")
    conn.commit()


class NotAppRole(RuntimeError):
    pass


def _require_app_role(row) -> None:
    # RLS binds only roles that do not own the tables: a pooled connection whose role
    # was reset (RESET ROLE in some bug) would see every tenant, so refuse it.
    role = row["role"] if isinstance(row, dict) else row[-1]
    if role != APP_ROLE:
        raise NotAppRole(f"this connection acts as {role!r}, not {APP_ROLE!r}: row-level security would not apply")


@contextmanager
def _dropped_if_not_app_role(conn: psycopg.Connection) -> Iterator[None]:
    try:
        yield
    except NotAppRole:
        conn.close()  # the pool discards a closed connection instead of handing it out again
        raise


class Database:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, name: str = "lead"):
        self.url = libpq_url(url)
        redaction.register(urlsplit(self.url).password)  # a password in the URL never reaches a log
        self.pool = ConnectionPool(
            self.url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "application_name": name},
            configure=_act_as_app_role,
            open=False,
            timeout=10,
        )

    def open(self, wait: bool = True) -> "Database":
        self.pool.open(wait=wait, timeout=10)
        return self

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def tenant_tx(self, tenant_id: int) -> Iterator[psycopg.Connection]:
        """A transaction in which only `tenant_id`'s rows exist."""
        with self.pool.connection() as conn, _dropped_if_not_app_role(conn), conn.transaction():
            row = conn.execute("SELECT set_config('app.tenant_id', %s, true), current_user AS role",
                               (str(int(tenant_id)),)).fetchone()
            _require_app_role(row)
            yield conn

    @contextmanager
    def system_tx(self) -> Iterator[psycopg.Connection]:
        """A transaction with no tenant: tenant tables read as empty here."""
        with self.pool.connection() as conn, _dropped_if_not_app_role(conn), conn.transaction():
            _require_app_role(conn.execute("SELECT current_user AS role").fetchone())
            yield conn

    def admin_connect(self, **kwargs) -> psycopg.Connection:
        """A connection with the owner's role (migrations, shop administration)."""
        return psycopg.connect(self.url, row_factory=dict_row, **kwargs)
