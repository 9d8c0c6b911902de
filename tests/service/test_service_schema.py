"""Schemathesis against the service's OpenAPI document: generated requests (valid and invalid ones) to
every operation never get a 5xx. The default run generates from the examples and by fuzzing; the slow
run adds the coverage phase (boundary values of every parameter and schema: thousands of requests)."""

from __future__ import annotations

import os
import re

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import (
    CoveragePhaseConfig,
    PhasesConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
)

MAX_EXAMPLES = int(os.environ.get("CROPSTAR_SCHEMA_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)  # fmt: skip
WITHOUT_COVERAGE = SchemathesisConfig(
    projects=ProjectsConfig(
        default=ProjectConfig(phases=PhasesConfig(coverage=CoveragePhaseConfig(enabled=False)))
    )
)


@pytest.fixture(scope="module")
def api_schema(service_client: TestClient) -> schemathesis.BaseSchema:
    """The OpenAPI document of the ready default app (its state shared with ``service_client``)."""
    return schemathesis.openapi.from_asgi("/openapi.json", service_client.app, config=WITHOUT_COVERAGE)


@pytest.fixture(scope="module")
def full_schema(service_client: TestClient) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", service_client.app)


schema = schemathesis.pytest.from_fixture("api_schema")
full = schemathesis.pytest.from_fixture("full_schema")


@schema.parametrize()
@pytest.mark.filterwarnings("ignore::UserWarning:geojson_pydantic")
@SETTINGS
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])


@pytest.mark.slow
@full.parametrize()
@pytest.mark.filterwarnings("ignore::UserWarning:geojson_pydantic")
@SETTINGS
def test_no_boundary_request_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])


def test_the_season_pattern_admits_exactly_the_possible_days() -> None:
    from datetime import date, timedelta

    from service.routers.fields import SEASON_PATTERN

    pattern = re.compile(SEASON_PATTERN)
    day = date(1900, 1, 1)
    while day <= date(2200, 12, 31):  # every day of the years a season may name
        assert pattern.match(f"{day}/{day}"), day
        day += timedelta(days=1)
    for impossible in ("2023-02-29/2023-03-01", "2100-02-29/2100-03-01", "2026-04-31/2026-05-01",
                       "2026-13-01/2026-12-01", "1899-12-31/1900-01-01", "2201", "26", "2026-1-1/2026-2-1"):
        assert not pattern.match(impossible), impossible
    assert pattern.match("2000-02-29/2024-02-29") and pattern.match("2026")
