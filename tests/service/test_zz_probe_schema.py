import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from fastapi.testclient import TestClient
from schemathesis.config import CoveragePhaseConfig, PhasesConfig, ProjectConfig, ProjectsConfig, SchemathesisConfig

CFG = SchemathesisConfig(projects=ProjectsConfig(default=ProjectConfig(phases=PhasesConfig(coverage=CoveragePhaseConfig(enabled=False)))))

@pytest.fixture(scope="module")
def probe_schema(service_client: TestClient):
    return schemathesis.openapi.from_asgi("/openapi.json", service_client.app, config=CFG)

schema = schemathesis.pytest.from_fixture("probe_schema")

@schema.parametrize()
@settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_all_checks(case):
    case.call_and_validate()
