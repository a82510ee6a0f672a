"""The project's own JSON Schemas (draft 2020-12) of the vendor requests it sends.

They ship inside the package and are the single source the stand-ins validate with, so a
test run never needs the vendors' full OpenAPI files.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker

_EMAIL = re.compile(
    r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

# Our own checkers: jsonschema's "email" only looks for an "@", and its "uri" check is
# silently skipped unless an optional package is installed.
FORMATS = FormatChecker(formats=())


@FORMATS.checks("email")
def _is_email(value: object) -> bool:
    return not isinstance(value, str) or bool(_EMAIL.match(value))


@FORMATS.checks("uri")
def _is_http_url(value: object) -> bool:
    # Twilio: "URL must contain a valid hostname and underscores are not allowed".
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    host = parts.hostname or ""
    return parts.scheme in ("http", "https") and bool(host) and "_" not in host


def load_schema(name: str) -> dict:
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)
