"""The JSON-object automaton accepts exactly the prefixes of JSON objects."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slmforge.runtime.json_mode import JsonPrefix


def accepts(text: str) -> bool:
    return JsonPrefix().after(text) is not None


def complete(text: str) -> bool:
    prefix = JsonPrefix()
    state = prefix.after(text)
    if state is None:
        return False
    prefix.state = state
    return prefix.complete


VALID = [
    "{}",
    '{ "a" : 1 } ',
    '{"a": [1, -2.5e+3, 0, 0.25, true, false, null, "x\\u00e9\\n"], "b": {"c": []}}',
    '{"nested": [[[]], [{}], {"k": "v"}]}',
    '{"e": 1E5, "f": -0.0e-1}',
]
INVALID = [
    "[1, 2]",  # json_object: the top level must be an object
    '"text"',
    "{a: 1}",
    '{"a" 1}',
    '{"a": 01}',
    '{"a": 1,}',
    '{"a": tru}',
    '{"a": "\\x"}',
    '{"a": "\\u12G4"}',
    '{"a": -}',
    '{"a": 1.}',
    '{"a": 1} x',
    '{"a":\t"line\nbreak"}',  # a raw newline inside a string
    "{,}",
]


@pytest.mark.parametrize("text", [' {"a": 1}', '{"a":' + " " * 17 + "1}"])
def test_whitespace_is_bounded(text: str) -> None:
    """Valid JSON, but refused: leading or endless whitespace is how JSON mode never ends."""
    assert isinstance(json.loads(text), dict)
    assert not accepts(text)


@pytest.mark.parametrize("text", VALID)
def test_valid_objects_are_accepted_and_complete(text: str) -> None:
    json.loads(text)  # the case itself is valid JSON
    assert complete(text.rstrip())
    for cut in range(len(text.rstrip())):
        assert accepts(text[:cut]), f"prefix {text[:cut]!r} rejected"


@pytest.mark.parametrize("text", INVALID)
def test_invalid_text_is_rejected(text: str) -> None:
    assert not complete(text)
    try:
        parsed = json.loads(text)
    except ValueError:
        return
    assert not isinstance(parsed, dict)  # valid JSON, but not an object


def test_incomplete_object_is_a_prefix_but_not_complete() -> None:
    assert accepts('{"a": [1, 2')
    assert not complete('{"a": [1, 2')
    assert not complete('{"a": 12')  # a number at the end may still grow


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.booleans())
def test_every_serialized_object_is_accepted(obj: dict, ascii_only: bool) -> None:
    text = json.dumps(obj, ensure_ascii=ascii_only, indent=None if ascii_only else 2)
    assert complete(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet='{}[]":,0123456789-+.eEtrufalsn \\', max_size=14))
def test_acceptance_agrees_with_the_json_module(text: str) -> None:
    try:
        parsed = json.loads(text)
        is_object = isinstance(parsed, dict) and text == text.lstrip() and "  " * 9 not in text
    except ValueError:
        is_object = False
    if is_object:
        assert complete(text.rstrip())
    if complete(text):
        assert isinstance(json.loads(text), dict)
