"""Schema fuzzing of the live server with schemathesis: generated requests, valid and not, against every
route of /openapi.json; no answer may be a 5xx, and every answer must match the documented schema."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_service_shutdown import start

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_schema(service_ckpt):
    proc, base = start(service_ckpt.path, LMSERVE_MAX_QUEUE="100000")
    try:
        yield schemathesis.openapi.from_url(base + "/openapi.json")
    finally:
        proc.terminate()
        proc.wait(30)


def test_no_5xx_and_responses_match_the_schema(live_schema) -> None:
    operations = [result.ok() for result in live_schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    assert {("POST", "/score"), ("POST", "/next-word"), ("GET", "/model"), ("GET", "/metrics")} <= paths
    calls = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
        )
        def fuzz(case) -> None:
            response = case.call_and_validate(checks=CHECKS)
            calls.append(response.status_code)

        fuzz()
    print("status codes:", dict(Counter(calls)))
    assert len(calls) >= 60 and not [c for c in calls if c >= 500]
