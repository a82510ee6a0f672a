"""The storable-JSON check answers exactly as the full walk over every value does.

parse_json_object skips the walk for bodies that cannot hold what jsonb refuses (no
`\\u` escape, finite numbers, fewer opening brackets than the depth limit); these tests
hold it to the walk's answers: the same value, or the same status, code and message."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from webhook_receiver import payloads
from webhook_receiver.payloads import MAX_DEPTH, PayloadError, parse_json_object


def walked(text: str, max_depth: int = MAX_DEPTH):
    """What the check answered before the shortcut: parse, then walk every value."""
    try:
        value = json.loads(text, parse_constant=payloads._no_constants)
    except RecursionError:
        return ("error", 422, "invalid_payload", f"the JSON is nested deeper than {max_depth} levels")
    except ValueError:
        return ("error", 400, "invalid_json", "the body is not valid JSON")
    if not isinstance(value, dict):
        return ("error", 422, "invalid_payload", "body: the JSON must be an object")
    try:
        payloads._check_storable(value, max_depth)
    except PayloadError as exc:
        return ("error", exc.status, exc.code, exc.message)
    return ("ok", value)


def answered(text: str, max_depth: int = MAX_DEPTH):
    try:
        return ("ok", parse_json_object(text, max_depth=max_depth))
    except PayloadError as exc:
        return ("error", exc.status, exc.code, exc.message)


def nested(depth: int, inner: str = "1") -> str:
    text = inner
    for level in range(depth - 1):
        text = f'{{"k{level}":[{text}]}}' if level % 2 else f'{{"k{level}":{text}}}'
    return f'{{"top":{text}}}' if not text.startswith("{") else text


HOSTILE = [
    '{"a":"plain"}',
    '{"a":"nul \\u0000 inside"}',
    '{"nul \\u0000 key":1}',
    '{"a":"lone \\ud800 surrogate"}',
    '{"a":"pair \\ud83d\\ude00 is fine"}',
    '{"a":"escaped backslash then u: \\\\u0000"}',
    '{"a":"caf\u00e9 and \u65e5\u672c"}',
    '{"a":1e999}',
    '{"a":-1e999}',
    '{"a":[1.5, 2e308, "x"]}',
    '{"a":1e308, "b":0.1}',
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":-Infinity}',
    '{"a":1e999, "b":"\\u0000"}',
    '{"a":1e999, "b":' + "[" * 40 + "]" * 40 + "}",
    '{"a":' + "[" * 40 + '"\\u0000"' + "]" * 40 + "}",
    '{"a":"' + "[" * 50 + '"}',
    '{"a":' + "[" * 31 + "]" * 31 + "}",
    '{"a":' + "[" * 32 + "]" * 32 + "}",
    "{" + ",".join(f'"k{i}":{{"x":[{i}]}}' for i in range(40)) + "}",
    '{"a":' + "[" * 5000 + "]" * 5000 + "}",
    '["not", "an", "object"]',
    '"text"',
    "{not json",
    '{"a":"raw \x01 control"}',
    "",
]


@pytest.mark.parametrize("text", HOSTILE + [nested(d) for d in (30, 31, 32, 33, 34, 60)])
def test_same_answer_as_the_full_walk(text):
    assert answered(text) == walked(text)


def test_a_text_holding_a_lone_surrogate_itself_is_refused_as_before():
    # Not possible for a body decoded from UTF-8, but the function takes any text.
    text = '{"a":"\ud800"}'
    assert answered(text) == walked(text) == ("error", 422, "invalid_payload",
                                              "strings may not contain unpaired surrogates")


def test_a_smaller_depth_limit_is_kept():
    text = '{"a":{"b":{"c":{}}}}'
    assert answered(text, max_depth=3) == walked(text, max_depth=3)
    assert answered(text, max_depth=3)[0] == "error"
    assert answered(text, max_depth=4) == ("ok", json.loads(text))


_TEXTS = st.sampled_from(["", "a", "\x00", "\ud800", "\udfff", "\u00e9", "\\u0000", "[", "{", "\U0001f600"])
_STRINGS = st.lists(_TEXTS, max_size=4).map("".join)
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), _STRINGS,
                    st.floats(allow_nan=False, allow_infinity=True))
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_STRINGS, inner, max_size=3)),
                       max_leaves=40)


@hsettings(max_examples=400, deadline=None, database=None, derandomize=True,
           suppress_health_check=list(HealthCheck))
@given(st.dictionaries(_STRINGS, _VALUES, max_size=4), st.integers(min_value=2, max_value=8),
       st.booleans())
def test_generated_bodies_get_the_same_answer(value, max_depth, ascii_only):
    # Infinity is written as 1e999 (json.dumps would write the constant, which is refused
    # as invalid JSON before any check); lone surrogates go in as \u escapes.
    text = json.dumps(value, ensure_ascii=ascii_only).replace("Infinity", "1e999")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True).replace("Infinity", "1e999")
    assert answered(text, max_depth) == walked(text, max_depth)
