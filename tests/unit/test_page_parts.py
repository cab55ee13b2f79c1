"""Response bodies on their own (no database)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atcore import api
from atcore.api import MAX_TASK_BYTES, dumps_json
from atcore.models import MAX_BODY_BYTES, MAX_STORED_PAYLOAD_BYTES, _exponent_growth, check_stored_payload_size


def test_bodies_are_utf8_not_escaped():
    assert dumps_json({"é": "🙂\u2028"}) == '{"é":"🙂\u2028"}'
    assert json.loads(dumps_json({"é": "🙂\u2028"})) == {"é": "🙂\u2028"}


def test_the_largest_task_fits_in_one_response():
    assert api.LAMBDA_RESPONSE_LIMIT == 6_291_456
    assert MAX_TASK_BYTES * 2 < api.LAMBDA_RESPONSE_LIMIT
    assert MAX_STORED_PAYLOAD_BYTES >= 4 * MAX_BODY_BYTES  # a 256 KiB body of 1e15s (about 1 MB) is accepted


# --- the stored size ------------------------------------------------------------------------------


def stored_number_length(value: float) -> int:
    """numeric's text for what json.dumps wrote, as pg8000 reads it back and the API writes it."""
    text = json.dumps(value)
    exact = Decimal(text)
    return len(str(int(exact))) if "e+" in text else len(text)  # an e+ form has no fractional digits left


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_exponent_growth_is_what_numeric_writes_out(value):
    assert len(json.dumps(value)) + _exponent_growth(value) == stored_number_length(value)


def test_exponent_growth_counts_every_number_in_the_tree():
    assert _exponent_growth({"a": [1e300, {"b": -1e16}], "c": "1e300", "d": 1e15}) == (301 - 6) + (18 - 6)


def test_stored_payload_size_limit():
    exactly = ["é" * (MAX_STORED_PAYLOAD_BYTES // 2 - 2)]  # 2 bytes each, and 4 for the brackets and quotes
    check_stored_payload_size(exactly)
    with pytest.raises(ValueError, match=r"^payload would be stored as 1048577 bytes of JSON, over the limit of "):
        check_stored_payload_size([exactly[0] + "x"])
    with pytest.raises(ValueError, match="1e300 takes 301 digits"):
        check_stored_payload_size([1e300] * 4000)
