"""Schemathesis against the service's OpenAPI document with all its checks: generated requests (valid
and invalid ones) to every operation get answers that conform to the document (status codes, media
types, bodies, headers, Allow), valid data is accepted and invalid data refused, and nothing is a 5xx.
What JSON Schema cannot state (closed rings, a series' shape, the model's bands, the source's seasons) is
applied to the valid cases by ``schema_rules``; a request past a documented limit (413) counts as
accepted. Twice: with open reads and no key, and keyed (every endpoint behind a key the requests
carry, so valid job executions are queued and run). The default runs generate from the examples and by
fuzzing; the slow run adds the coverage phase (boundary values of every parameter and schema:
thousands of requests)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import wait_ready
from crop_datasets import make_dataset
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schema_rules import install_cross_field_rules
from schemathesis.config import (
    ChecksConfig,
    CoveragePhaseConfig,
    PhasesConfig,
    PositiveDataAcceptanceConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
)

from service.app import create_app
from service.security import HEADER, hash_key
from service.settings import ApiKey, Settings

MAX_EXAMPLES = int(os.environ.get("CROPSTAR_SCHEMA_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)  # fmt: skip
#: schemathesis's statuses for valid data, and 413: the request limits (e.g. total area) of the settings
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
CHECKS = ChecksConfig(positive_data_acceptance=PositiveDataAcceptanceConfig(expected_statuses=ACCEPTED))


KEY = "schema-key-0123456789abcdef"


def _config(coverage: bool, headers: dict[str, str] | None = None) -> SchemathesisConfig:
    phases = PhasesConfig(coverage=CoveragePhaseConfig(enabled=coverage))
    project = ProjectConfig(phases=phases, checks=CHECKS, headers=headers)
    return SchemathesisConfig(projects=ProjectsConfig(default=project))


@pytest.fixture(scope="module")
def api_schema(service_client: TestClient) -> schemathesis.BaseSchema:
    """The OpenAPI document of the ready default app (its state shared with ``service_client``)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", service_client.app, config=_config(coverage=False))
    install_cross_field_rules(schema, service_client)
    return schema


@pytest.fixture(scope="module")
def full_schema(service_client: TestClient) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_asgi("/openapi.json", service_client.app, config=_config(coverage=True))
    install_cross_field_rules(schema, service_client)
    return schema


@pytest.fixture(scope="module")
def keyed_client(tmp_path_factory: pytest.TempPathFactory, service_cache_dir: Path) -> Iterator[TestClient]:
    """A service whose every endpoint needs a key (one with every scope), with a training dataset,
    its job runner running: valid job executions are queued and run."""
    work = tmp_path_factory.mktemp("keyed")
    settings = Settings(
        cache_dir=service_cache_dir, work_dir=work / "work", read_requires_key=True,
        api_keys=[ApiKey(name="all", hash=hash_key(KEY))], datasets={"crops": str(make_dataset(work / "crops"))},
    )  # fmt: skip
    with TestClient(create_app(settings), headers={HEADER: KEY}) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def keyed_schema(keyed_client: TestClient) -> schemathesis.BaseSchema:
    config = _config(coverage=False, headers={HEADER: KEY})
    schema = schemathesis.openapi.from_asgi("/openapi.json", keyed_client.app, config=config)
    install_cross_field_rules(schema, keyed_client)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")
keyed = schemathesis.pytest.from_fixture("keyed_schema")
full = schemathesis.pytest.from_fixture("full_schema")


@schema.parametrize()
@pytest.mark.filterwarnings("ignore::UserWarning:geojson_pydantic")
@SETTINGS
def test_every_answer_conforms_to_the_document(case: schemathesis.Case) -> None:
    case.call_and_validate()


@keyed.parametrize()
@pytest.mark.filterwarnings("ignore::UserWarning:geojson_pydantic")
@SETTINGS
def test_every_keyed_answer_conforms_to_the_document(case: schemathesis.Case) -> None:
    case.call_and_validate()


@pytest.mark.slow
@full.parametrize()
@pytest.mark.filterwarnings("ignore::UserWarning:geojson_pydantic")
@SETTINGS
def test_every_boundary_answer_conforms_to_the_document(case: schemathesis.Case) -> None:
    case.call_and_validate()


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
