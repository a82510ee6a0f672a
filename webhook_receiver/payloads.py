"""Parsing a webhook's JSON body into something PostgreSQL will store as jsonb.

json.loads accepts more than jsonb does, and some of it would surface as a database
error (a 5xx) instead of a clear 4xx: NUL characters and lone surrogates in strings,
NaN/Infinity and 1e999, and nesting deep enough to exhaust the recursion limit. All
of these are refused here, before anything is stored.
"""
from __future__ import annotations

import json
import math

MAX_DEPTH = 32


class PayloadError(ValueError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json_object(text: str, *, max_depth: int = MAX_DEPTH) -> dict:
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise PayloadError(422, "invalid_payload", f"the JSON is nested deeper than {max_depth} levels") from None
    except ValueError:
        raise PayloadError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise PayloadError(422, "invalid_payload", "body: the JSON must be an object")
    _check_storable(value, max_depth)
    return value


def _check_storable(root, max_depth: int) -> None:
    stack = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise PayloadError(422, "invalid_payload", f"the JSON is nested deeper than {max_depth} levels")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if key is not None:
                    _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            _check_text(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise PayloadError(422, "invalid_payload", "a number is too large to store")


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise PayloadError(422, "invalid_payload", "strings may not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(422, "invalid_payload", "strings may not contain unpaired surrogates") from None
