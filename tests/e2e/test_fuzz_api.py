"""Property-based fuzzing of the local run with schemathesis, driven by docs/openapi.json.

Every operation gets schema-conforming requests (positive mode) and schema-violating ones
(negative mode), from schemathesis' coverage phase (boundaries) and its fuzzing phase, and every
answer must be: not a 5xx, a status the document lists for the operation, with the content type
and body schema it lists, and, for a request that breaks the document, a 4xx.

CI runs AT_FUZZ_EXAMPLES (default 25) fuzzing cases per operation and mode, about 30 s with the
local run's start; `make fuzz` runs 1000.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.support.functions import ROOT

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("AT_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]

NEXT_YEAR = datetime.now(UTC).year + 1  # fixed for the run: Hypothesis replays must draw alike


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """date-time values, three in four after now so that creates get past `execute_at` (the default
    strategy stays near 2000, making nearly every create a 400), with any offset and 0-9 digits."""
    future = draw(st.integers(0, 3)) > 0
    lower, upper = (
        (datetime(NEXT_YEAR, 1, 1), datetime(9998, 12, 31))
        if future
        else (datetime(1, 1, 2), datetime(NEXT_YEAR - 2, 12, 31))
    )
    moment = draw(st.datetimes(min_value=lower, max_value=upper))
    fraction = draw(st.text("0123456789", max_size=9))
    minutes = draw(st.integers(0, 23 * 60 + 59))
    offset = draw(
        st.sampled_from(["Z", f"+{minutes // 60:02d}:{minutes % 60:02d}", f"-{minutes // 60:02d}:{minutes % 60:02d}"])
    )
    return f"{moment.replace(microsecond=0).isoformat()}{'.' + fraction if fraction else ''}{offset}"


schemathesis.openapi.format("date-time", rfc3339())
schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),  # one request per example; a slower one is a finding
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_api_conforms_to_its_document(case, api):
    case.call_and_validate(base_url=api, checks=CHECKS, timeout=10)
