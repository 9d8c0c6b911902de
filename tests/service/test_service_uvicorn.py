"""The service as users run it: ``cropstar serve`` (a real uvicorn process) on a free loopback port,
configured only through the environment; answers read back with geopandas and checked against
RFC 7946; bad requests over the wire; the README's curl command."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import httpx
import pytest
from geojson_rules import rfc7946_problems
from served import environment, serve

from service.errors import PROBLEM_JSON


@pytest.fixture(scope="module")
def server(service_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of ``cropstar serve`` running with no settings but a cache and a work folder."""
    with serve(service_cache_dir, tmp_path_factory.mktemp("served")) as url:
        yield url


def test_demo_fields_over_http(server: str, demo_fields: dict) -> None:
    response = httpx.post(
        f"{server}/v1/fields:classify", content=json.dumps(demo_fields),
        headers={"content-type": "application/geo+json"}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/geo+json"
    assert rfc7946_problems(response.json()) == []
    frame = gpd.read_file(io.BytesIO(response.content))
    assert frame.crs.to_epsg() == 4326 and len(frame) == len(demo_fields["features"])
    assert set(frame["status"]) == {"ok"}
    assert (frame["crop"] == frame["input_crop"]).mean() >= 0.85
    assert frame["field_id"].tolist() == [f["properties"]["field_id"] for f in demo_fields["features"]]


def test_the_documented_curl_command(server: str, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    fields = subprocess.run(
        [sys.executable, "-m", "cropstar.cli", "demo", "fields"], capture_output=True, check=True, text=True,
        env=environment(),
    ).stdout
    (tmp_path / "fields.geojson").write_text(fields)
    answer = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{server}/v1/fields:classify", "-H", "content-type: application/geo+json",
         "--data", "@fields.geojson"],
        capture_output=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    frame = gpd.read_file(io.BytesIO(answer.stdout))
    assert len(frame) == len(json.loads(fields)["features"]) and set(frame["status"]) == {"ok"}


def _problem(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status and body["type"] and body["title"]
    for word in words:
        assert word in body["detail"], (word, body["detail"])


def test_bad_requests_over_http(server: str, demo_fields: dict) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        _problem(client.post("/v1/fields:classify", content=b'{"type": "Feat'), 400, "not valid JSON")
        feature = json.dumps(demo_fields["features"][0])
        _problem(client.post("/v1/fields:classify", content=feature), 422, "FeatureCollection")
        _problem(client.post("/v1/fields:classify?model=nope", content=json.dumps(demo_fields)), 404, "nope")
        ring = ",".join(["[11,48]"] * 1_000_000)
        huge = '{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":' \
               '{"type":"Polygon","coordinates":[[' + ring + "]]}}]}"
        _problem(client.post("/v1/fields:classify", content=huge), 413, "vertex limit")
        _problem(client.post("/v1/models/default:promote", headers={"X-API-Key": "wrong"}), 401, "not known")
        metrics = client.get("/metrics").text
    assert 'route="/v1/fields:classify",status="413"' in metrics
    assert 'cropstar_fields_classified_total{status="ok"}' in metrics


def test_body_over_the_limit_is_refused_unread(server: str) -> None:
    """A declared body over limits.max_body_bytes (8 MiB) is answered 413 before any of it is read:
    the request's headers are sent, not one byte of its body, and the answer comes (a server that
    waited for the body would leave the client to time out). A client sending the whole body could
    meet the connection closed under it instead: the answer does not wait for the body."""
    declared = 9 * 1024 * 1024
    url = httpx.URL(server)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=20)
    try:
        connection.putrequest("POST", "/v1/fields:classify")
        connection.putheader("Content-Type", "application/geo+json")
        connection.putheader("Content-Length", str(declared))
        connection.endheaders()  # the headers only
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 413, body
    assert response.getheader("content-type") == PROBLEM_JSON and response.getheader("connection") == "close"
    problem = json.loads(body)
    assert problem["status"] == 413 and problem["type"] and problem["title"]
    assert f"of {declared:,} bytes exceeds the limit of {8 * 1024 * 1024:,} bytes" in problem["detail"]
    assert "max_body_bytes" in problem["detail"]


def test_a_client_that_leaves_mid_body_is_counted_499(server: str) -> None:
    url = httpx.URL(server)
    with socket.create_connection((url.host, url.port), timeout=10) as client:
        client.sendall(b"POST /v1/fields:classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/geo+json\r\n"
                       b"Content-Length: 10\r\n\r\n{\"")  # fmt: skip
    line = 'cropstar_http_requests_total{method="POST",route="/v1/fields:classify",status="499"} 1.0'
    deadline = time.monotonic() + 10
    while line not in (text := httpx.get(f"{server}/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    assert 'route="/v1/fields:classify",status="500"' not in text
