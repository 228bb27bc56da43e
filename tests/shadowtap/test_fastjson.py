"""The encoder behind every record line and every candidate body: what it writes must read back as the value
it was given, including what orjson cannot encode itself."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowtap import fastjson

pytestmark = pytest.mark.unit

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: some are over 64 bits
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=())),  # any code point, lone surrogates included
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_what_is_written_reads_back_as_the_same_value(value):
    line = fastjson.dumps(value)

    assert b"\n" not in line  # one JSON Lines line
    assert json.loads(line) == value


def test_text_is_utf8_not_escaped_and_compact():
    assert fastjson.dumps({"a": "café ☕", "b": [1, 2]}) == '{"a":"café ☕","b":[1,2]}'.encode()


def test_values_orjson_refuses_are_written_by_the_standard_library():
    assert fastjson.dumps({"n": 2**70}) == b'{"n":1180591620717411303424}'
    assert fastjson.dumps({"s": "broken \ud800 emoji"}) == b'{"s":"broken \\ud800 emoji"}'
    assert fastjson.dumps({1: "a"}) == b'{"1":"a"}'


def test_nan_and_infinities_are_written_as_null_so_the_line_stays_json():
    line = fastjson.dumps({"temperature": float("nan"), "top_p": float("inf")})

    assert json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON")) == {
        "temperature": None,
        "top_p": None,
    }
