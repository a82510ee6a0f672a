"""Applies the plain-SQL migrations in `sql/` with yoyo-migrations.

yoyo is a small, maintained tool that runs plain .sql files in order, records what was
applied (table `_yoyo_migration`) and holds a lock while it works, so two processes
starting at once cannot apply a file twice. Applying is idempotent: run it at every start.
"""
from __future__ import annotations

from pathlib import Path

from yoyo import get_backend, read_migrations

from lead_orchestrator.store.db import libpq_url
from lead_orchestrator.store.secret_box import SecretBox


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "sql", here.parent / "sql"):  # source checkout, then wheel
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the sql/ migrations folder is missing from this installation")


def apply_migrations(database_url: str, box: SecretBox) -> list[str]:
    """Applies pending migrations, then encrypts any shop secret still stored in plain
    text (rows from before encryption at rest) with `box`; returns the ids applied by
    this call."""
    import psycopg
    from psycopg.rows import dict_row

    from lead_orchestrator.store.secret_rotation import encrypt_plaintext_secrets

    backend = get_backend("postgresql+psycopg://" + libpq_url(database_url).partition("://")[2])
    migrations = read_migrations(str(migrations_dir()))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
        with psycopg.connect(libpq_url(database_url), row_factory=dict_row) as conn:
            encrypt_plaintext_secrets(conn, box)
    return [m.id for m in pending]
