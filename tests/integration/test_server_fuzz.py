"""Property-based fuzz of the whole API from its OpenAPI schema (schemathesis): positive and negative
cases for every operation, without a key, with a device key and with the admin key; no response may be
a 5xx and every error must have the one body shape. Runs on SQLite and on PostgreSQL (stricter about
what text it stores). Bounded (deterministic, a few examples per operation and mode, ~1,200 requests per
backend) so both run in about a minute on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.server_support import Backend, Fleet, build_fleet

EXAMPLES_PER_OPERATION = 5


@pytest.fixture
def fuzz_fleet(backend: Backend, tmp_path: Path) -> Fleet:
    f = build_fleet(backend, tmp_path)
    f.device_headers = f.populate()  # type: ignore[attr-defined]
    yield f
    f.client.close()
    f.engine.dispose()


def check_response(response, label: str) -> None:
    assert response.status_code < 500, (label, response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"type", "message", "detail"} <= set(body["error"]), (label, body)


def fuzz_operation(operation, mode: GenerationMode, keys: tuple[dict[str, str], ...]) -> None:
    """Send ``EXAMPLES_PER_OPERATION`` generated requests of ``mode`` for one operation, once per key."""
    label = f"{mode.value} {operation.label}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        for headers in keys:
            check_response(case.call(headers=headers), label)

    run()


def test_api_never_errors_5xx(fuzz_fleet: Fleet) -> None:
    """Every operation, positive and negative cases, each sent without a key, with the device key and
    with the admin key."""
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", fuzz_fleet.app)
    keys = ({}, fuzz_fleet.device_headers, fuzz_fleet.admin)
    n_operations = n_no_negative = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        n_operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_operation(operation, mode, keys)
            except Unsatisfiable:
                # nothing to make invalid (e.g. GET /health has no parameters): only positive cases exist
                assert mode is GenerationMode.NEGATIVE, operation.label
                n_no_negative += 1
    assert n_operations >= 34 and n_no_negative < n_operations
