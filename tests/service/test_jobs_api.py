"""The jobs' REST API after OGC API – Processes, through the service app (httpx via TestClient):
documents of the required shape, execution → polling → results → the class map, API keys, problem
details for unknown processes, jobs and inputs, dismissal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from rasterio.io import MemoryFile

from cropstar.data.cube import open_cube
from cropstar.data.synthetic import make_scene, write_scene
from service.app import create_app
from service.security import HEADER, hash_key
from service.settings import ApiKey, Settings

KEY = "test-key-0123456789"
AUTH = {HEADER: KEY}
OGC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
STATUS_KEYS = {"jobID", "type", "processID", "status", "message", "created", "updated", "progress", "links"}


@pytest.fixture(scope="module")
def scene_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 × 32-pixel synthetic scene (26 dates) as a NetCDF cube."""
    root = tmp_path_factory.mktemp("scene")
    paths = write_scene(make_scene(size=32, dates=26, seed=5), root / "scene")
    out = root / "scene.nc"
    open_cube(paths["cube"]).to_dataset().to_netcdf(out)
    return out


@pytest.fixture
def settings(tmp_path: Path, scene_source: Path) -> Settings:
    return Settings(
        data_sources={"scene": str(scene_source)}, work_dir=tmp_path / "work", cache_dir=tmp_path / "cache",
        api_keys=[ApiKey(name="tester", hash=hash_key(KEY), scopes=["jobs"])], preload=False,
    )  # fmt: skip


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The service, started (its job runner runs)."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def idle(settings: Settings) -> TestClient:
    """The service app without its start-up: jobs are queued and never run."""
    return TestClient(create_app(settings))


def problem_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def submit(client: TestClient, process: str = "classify-raster", **inputs: object) -> dict:
    inputs = inputs or {"data_source": "scene", "block_size": 16}
    response = client.post(f"/v1/processes/{process}/execution", json={"inputs": inputs}, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


def poll(client: TestClient, url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.get(url).json()
        if info["status"] not in ("accepted", "running"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"{url} still {info['status']} after {timeout} s")


def test_the_process_list_and_descriptions(idle: TestClient) -> None:
    listed = idle.get("/v1/processes")
    assert listed.status_code == 200
    body = listed.json()
    assert [p["id"] for p in body["processes"]] == ["classify-raster", "retrain"]
    for summary in body["processes"]:
        assert {"id", "version", "title", "description", "jobControlOptions", "links"} <= set(summary)
        assert "async-execute" in summary["jobControlOptions"] and "dismiss" in summary["jobControlOptions"]
        rels = {link["rel"]: link["href"] for link in summary["links"]}
        assert rels["self"].endswith(f"/v1/processes/{summary['id']}")
        assert rels["http://www.opengis.net/def/rel/ogc/1.0/execute"].endswith(f"/{summary['id']}/execution")
    assert body["links"][0]["rel"] == "self"

    described = idle.get("/v1/processes/classify-raster").json()
    inputs = described["inputs"]
    assert set(inputs) == {"data_source", "model", "probabilities", "per_timestep", "block_size"}
    assert inputs["data_source"]["schema"]["enum"] == ["scene"]  # the names this service knows
    assert (inputs["data_source"]["minOccurs"], inputs["model"]["minOccurs"]) == (1, 0)
    assert all(
        {"title", "description", "schema", "minOccurs", "maxOccurs"} <= set(i) for i in inputs.values()
    )
    assert described["outputs"]["map"]["schema"]["contentMediaType"] == COG
    retrain = idle.get("/v1/processes/retrain").json()
    assert {"dataset", "init_from", "config", "register_as", "notes"} == set(retrain["inputs"])
    assert {"model", "training", "log", "model_weights"} <= set(retrain["outputs"])


def test_unknown_processes_and_jobs_are_404_problems(idle: TestClient) -> None:
    body = problem_of(idle.get("/v1/processes/make-coffee"), 404)
    assert body["type"] == OGC + "no-such-process" and "'make-coffee'" in body["detail"]
    assert "classify-raster, retrain" in body["detail"]
    body = problem_of(
        idle.post("/v1/processes/make-coffee/execution", json={"inputs": {}}, headers=AUTH), 404
    )
    assert body["type"] == OGC + "no-such-process"
    for response in (
        idle.get("/v1/jobs/0000-nope"),
        idle.get("/v1/jobs/0000-nope/results"),
        idle.get("/v1/jobs/0000-nope/results/map"),
        idle.delete("/v1/jobs/0000-nope", headers=AUTH),
    ):
        body = problem_of(response, 404)
        assert body["type"] == OGC + "no-such-job" and body["detail"] == "no job '0000-nope'"


def test_submitting_and_dismissing_need_a_key(idle: TestClient) -> None:
    url = "/v1/processes/classify-raster/execution"
    body = {"inputs": {"data_source": "scene"}}
    assert "X-API-Key" in problem_of(idle.post(url, json=body), 401)["detail"]
    problem_of(idle.post(url, json=body, headers={HEADER: "wrong"}), 401)
    assert idle.get("/v1/jobs").json()["jobs"] == []
    job = submit(idle)
    problem_of(idle.delete(f"/v1/jobs/{job['jobID']}"), 401)
    assert idle.get(f"/v1/jobs/{job['jobID']}").json()["status"] == "accepted"


def test_execute_poll_results_and_the_map(client: TestClient) -> None:
    response = client.post(
        "/v1/processes/classify-raster/execution", headers={**AUTH, "Prefer": "respond-async"},
        json={"inputs": {"data_source": "scene", "block_size": 16, "probabilities": True}},
    )  # fmt: skip
    assert response.status_code == 201
    created = response.json()
    assert STATUS_KEYS <= set(created) and created["type"] == "process"
    assert created["processID"] == "classify-raster" and created["status"] in ("accepted", "running")
    assert response.headers["location"].endswith(f"/v1/jobs/{created['jobID']}")
    assert response.headers["preference-applied"] == "respond-async"
    assert created["inputs"]["model"] == "default"

    done = poll(client, response.headers["location"])
    assert done["status"] == "successful", done["message"]
    assert done["progress"] == 100 and {"started", "finished"} <= set(done)
    rels = {link["rel"]: link["href"] for link in done["links"]}
    assert rels["self"] == response.headers["location"] and rels["up"].endswith("/v1/jobs")
    results = client.get(rels["http://www.opengis.net/def/rel/ogc/1.0/results"])
    assert results.status_code == 200
    document = results.json()
    assert document["map"]["type"] == COG and document["map"]["href"].endswith(
        f"/{created['jobID']}/results/map"
    )
    summary = document["summary"]["value"]
    assert (summary["width"], summary["height"], summary["blocks"], summary["data_source"]) == (
        32,
        32,
        4,
        "scene",
    )

    cog = client.get(document["map"]["href"])
    assert cog.status_code == 200 and cog.headers["content-type"] == COG
    with MemoryFile(cog.content) as memory, memory.open() as dataset:
        assert (dataset.width, dataset.height, dataset.count) == (32, 32, 2 + 8)
    head = client.get(document["map"]["href"], headers={"Range": "bytes=0-3"})
    assert head.status_code == 206 and head.content == cog.content[:4]  # range reads, for COG clients
    assert client.get(f"/v1/jobs/{created['jobID']}/results/summary").json() == document["summary"]
    body = problem_of(client.get(f"/v1/jobs/{created['jobID']}/results/legend"), 404)
    assert "no output 'legend' (outputs: map, summary)" in body["detail"]

    dismissed = client.delete(f"/v1/jobs/{created['jobID']}", headers=AUTH)
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
    assert "it was dismissed" in problem_of(client.get(document["map"]["href"]), 404)["detail"]


def test_results_are_not_ready_before_the_job_ran(idle: TestClient) -> None:
    job = submit(idle)
    body = problem_of(idle.get(f"/v1/jobs/{job['jobID']}/results"), 404)
    assert body["type"] == OGC + "result-not-ready" and "it is queued" in body["detail"]
    assert body["jobStatus"] == "accepted"
    info = idle.get(f"/v1/jobs/{job['jobID']}").json()
    assert STATUS_KEYS <= set(info) and "started" not in info and info["progress"] == 0
    assert not any(link["rel"].endswith("/results") for link in info["links"])


def test_dismissing_a_queued_job(idle: TestClient) -> None:
    job = submit(idle)
    response = idle.delete(f"/v1/jobs/{job['jobID']}", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["status"] == "dismissed" and STATUS_KEYS <= set(response.json())
    assert idle.get(f"/v1/jobs/{job['jobID']}").json()["status"] == "dismissed"
    assert "it was dismissed" in problem_of(idle.get(f"/v1/jobs/{job['jobID']}/results"), 404)["detail"]


def test_bad_inputs_are_problems_naming_them(idle: TestClient) -> None:
    url = "/v1/processes/classify-raster/execution"
    assert problem_of(idle.post(url, content=b'{"inputs": '), 401)  # the key before the body
    assert "not valid JSON" in problem_of(idle.post(url, content=b'{"inputs": ', headers=AUTH), 400)["detail"]
    assert "empty" in problem_of(idle.post(url, content=b"", headers=AUTH), 400)["detail"]
    plain = {**AUTH, "content-type": "text/plain"}
    assert "text/plain" in problem_of(idle.post(url, content=b"{}", headers=plain), 415)["detail"]
    body = problem_of(idle.post(url, json={"inputs": {"data_source": "/etc/passwd"}}, headers=AUTH), 422)
    assert "unknown data source '/etc/passwd' (data sources: scene)" in body["detail"]
    body = problem_of(idle.post(url, json={"inputs": {"data_source": "scene", "zoom": 3}}, headers=AUTH), 422)
    assert "unknown input 'zoom'" in body["detail"]
    body = problem_of(
        idle.post(url, json={"inputs": {"data_source": "scene", "block_size": 1}}, headers=AUTH), 422
    )
    assert "block_size" in body["detail"]
    body = problem_of(
        idle.post(url, json={"inputs": {"data_source": "scene", "model": "crops:v7"}}, headers=AUTH), 422
    )  # an input naming no model: 422 as documented, not the 404 of an unknown resource
    assert "unknown model 'crops:v7'" in body["detail"]
    for strict in ({"block_size": "64"}, {"probabilities": "yes"}, {"per_timestep": 1}):
        body = problem_of(idle.post(url, json={"inputs": {"data_source": "scene", **strict}}, headers=AUTH), 422)
        assert next(iter(strict)) in body["detail"]  # not coerced
    body = problem_of(
        idle.post("/v1/processes/retrain/execution", json={"inputs": {"dataset": "crops"}}, headers=AUTH), 422
    )
    assert "unknown dataset 'crops'" in body["detail"]
    response = idle.post(url, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert (
        response.status_code in (400, 422) and response.headers["content-type"] == "application/problem+json"
    )
    assert idle.get("/v1/jobs").json()["jobs"] == []


def test_the_job_list_filters_and_pages(idle: TestClient) -> None:
    made = [submit(idle)["jobID"] for _ in range(3)]
    first = idle.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["jobID"] for j in first["jobs"]] == made[::-1][:2]
    assert all(STATUS_KEYS <= set(j) for j in first["jobs"])
    following = next(link["href"] for link in first["links"] if link["rel"] == "next")
    second = idle.get(following).json()
    assert [j["jobID"] for j in second["jobs"]] == made[:1]
    assert not any(link["rel"] == "next" for link in second["links"])
    assert (
        len(
            idle.get("/v1/jobs", params={"processID": "classify-raster", "status": "accepted"}).json()["jobs"]
        )
        == 3
    )
    assert idle.get("/v1/jobs", params={"processID": "retrain"}).json()["jobs"] == []
    problem_of(idle.get("/v1/jobs", params={"status": "sleeping"}), 422)
    assert idle.get("/v1/jobs", params={"offset": 2**62}).json()["jobs"] == []
    assert "offset" in problem_of(idle.get("/v1/jobs", params={"offset": 2**63}), 422)["detail"]
    assert 'method="GET",route="/v1/jobs",status="200"' in idle.get("/metrics").text  # the full route


def test_the_routes_are_in_the_openapi_document(idle: TestClient) -> None:
    paths = idle.get("/openapi.json").json()["paths"]
    assert {"post"} <= set(paths["/v1/processes/{process_id}/execution"])
    assert {"get", "delete"} <= set(paths["/v1/jobs/{job_id}"])
    assert {
        "/v1/processes",
        "/v1/jobs",
        "/v1/jobs/{job_id}/results",
        "/v1/jobs/{job_id}/results/{output_id}",
    } <= set(paths)
