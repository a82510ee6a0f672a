"""Reading as the read-only analyst role (`lead_analyst`, sql/0014_analyst_views.sql):
the views in schema `analytics` over every shop, and nothing else.

`status` reads this way, so an operator's status check cannot write anything, and
`sql` opens psql this way unless told `--admin`."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from lead_orchestrator.store.db import libpq_url

ANALYST_ROLE = "lead_analyst"
ANALYST_SEARCH_PATH = "analytics, public"


def analyst_url(url: str) -> str:
    """The same connection, acting as lead_analyst from its first statement, with the
    views first on the search path (`SELECT * FROM leads` reads analytics.leads). libpq
    sends `options` at connection start, so psql, psycopg and most PostgreSQL clients
    accept this URL. The connecting user must be a member of lead_analyst (the migrating
    user is)."""
    parts = urlsplit(libpq_url(url))
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join([*(value for key, value in query if key == "options"),
                        f"-c role={ANALYST_ROLE}", f"-c search_path={ANALYST_SEARCH_PATH.replace(' ', '')}"])
    query = [(key, value) for key, value in query if key != "options"] + [("options", options)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="/")))


@contextmanager
def analyst_connection(url: str) -> Iterator[psycopg.Connection]:
    """A read-only connection as lead_analyst (dict rows). Refuses to go on if the role
    did not take, rather than read as the owner."""
    with psycopg.connect(analyst_url(url), row_factory=dict_row, autocommit=True) as conn:
        role = conn.execute("SELECT current_user AS role").fetchone()["role"]
        if role != ANALYST_ROLE:
            raise RuntimeError(f"this connection reads as {role!r}, not {ANALYST_ROLE!r}")
        yield conn
