"""Checks that a store module's row dataclass is its table: a field per column, in column
order, typed as the column and `| None` exactly where the column is nullable."""
from __future__ import annotations

import dataclasses

# How information_schema names a column's type, and the annotation a row field has for it
# (the store modules use `from __future__ import annotations`: annotations are strings).
ANNOTATIONS = {"bigint": "int", "integer": "int", "text": "str", "boolean": "bool",
               "timestamp with time zone": "dt.datetime"}


def assert_row_matches_table(admin, row_type: type, table: str) -> None:
    columns = admin.execute(
        """SELECT column_name, is_nullable, data_type FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position""", (table,)).fetchall()
    fields = {f.name: f.type for f in dataclasses.fields(row_type)}
    assert list(fields) == [c["column_name"] for c in columns]
    optional = {name for name, annotation in fields.items() if annotation.endswith("| None")}
    assert optional == {c["column_name"] for c in columns if c["is_nullable"] == "YES"}
    assert {name: annotation.removesuffix(" | None") for name, annotation in fields.items()} == \
        {c["column_name"]: ANNOTATIONS[c["data_type"]] for c in columns}
