"""Parsing a webhook's JSON body into something PostgreSQL will store as jsonb.

json.loads accepts more than jsonb does, and some of it would surface as a database
error (a 5xx) instead of a clear 4xx: NUL characters and lone surrogates in strings,
NaN/Infinity and 1e999, and nesting deep enough to exhaust the recursion limit. All
of these are refused here, before anything is stored.

Most bodies can hold none of them, and that is seen without visiting every string (the
walk over every value was the largest single cost of a webhook on the receiver's hot
path): a NUL or a lone surrogate in a parsed string can only come from a `\\u` escape
(the text itself is UTF-8, and raw control characters are invalid JSON), an infinite
number is noticed as it is parsed, and nesting cannot be deeper than the number of
opening brackets. A body that might hold one gets the full walk, as before, so every
answer is the same.
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


class _NotFinite(Exception):
    """A number too large for a float: the body takes the full check (not a ValueError,
    which would read as invalid JSON)."""


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NotFinite
    return value


def parse_json_object(text: str, *, max_depth: int = MAX_DEPTH) -> dict:
    try:
        value = _loads(text, _finite_float, max_depth)
    except _NotFinite:
        value = _loads(text, float, max_depth)
        unusual = True
    else:
        unusual = "\\u" in text or not _utf8(text)
    if not isinstance(value, dict):
        raise PayloadError(422, "invalid_payload", "body: the JSON must be an object")
    if unusual:
        _check_storable(value, max_depth)
    elif text.count("{") + text.count("[") > max_depth:  # an upper bound of the depth
        _check_depth(value, max_depth)
    return value


def _loads(text: str, parse_float, max_depth: int):
    try:
        return json.loads(text, parse_constant=_no_constants, parse_float=parse_float)
    except RecursionError:
        raise PayloadError(422, "invalid_payload", f"the JSON is nested deeper than {max_depth} levels") from None
    except ValueError:
        raise PayloadError(400, "invalid_json", "the body is not valid JSON") from None


def _utf8(text: str) -> bool:
    """Whether the text itself holds no lone surrogate (never so when it was decoded from
    UTF-8; isascii() answers at once for most bodies)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_depth(root, max_depth: int) -> None:
    """_check_storable for a value that holds no string or number it would refuse."""
    stack = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise PayloadError(422, "invalid_payload", f"the JSON is nested deeper than {max_depth} levels")
        for item in (value.values() if isinstance(value, dict) else value):
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))


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
