"""Bounded work per request: invalid polygons whose repair would take minutes are repaired in a worker
process within the request's budget, and a request that reads pixels for too long stops with a 503."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import Busy
from service.limits import LargeRequests
from service.repair_worker import NICENESS, RepairWorker
from service.settings import Limits

GEOJSON = {"content-type": "application/geo+json"}


def _random_ring(vertices: int, seed: int, origin: tuple[float, float] = (0.0, 0.0)) -> list[list[float]]:
    """A ring of random positions: it crosses itself about vertices² / 10 times."""
    points = (np.random.default_rng(seed).uniform(0, 0.003, (vertices, 2)) + origin).tolist()
    return [*points, points[0]]


def _collection(*geometries: dict[str, Any]) -> dict[str, Any]:
    features = [{"type": "Feature", "properties": {"field_id": str(i)}, "geometry": g} for i, g in enumerate(geometries)]
    return {"type": "FeatureCollection", "features": features}


def test_the_worker_repairs_within_its_budget_and_starts_again_after_a_costly_ring() -> None:
    worker = RepairWorker(seconds=0.3)
    try:
        worker.start(wait=60)
        bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])
        costly = shapely.Polygon(_random_ring(1500, seed=1))  # minutes with make_valid's linework method
        started = time.monotonic()
        first, second, third = worker([bowtie, costly, bowtie])
        assert time.monotonic() - started < 3  # the budget and a stop, not the ring's own cost
        assert first.geom_type == "MultiPolygon" and first.area == pytest.approx(0.5)  # two triangles
        assert second == third == "was not repaired: one request's repairs may take 0.3 s (limits.repair_seconds)"
        worker.start(wait=60)  # the fresh worker process, started at once after the stop, is ready
        (again,) = worker([bowtie])
        assert again.equals(first)
    finally:
        worker.stop()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX process priorities")
def test_the_worker_yields_the_cpu_to_the_service() -> None:
    worker = RepairWorker(seconds=0.3)
    try:
        worker.start(wait=60)
        assert worker._process is not None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, worker._process.pid) == min(ours + NICENESS, 19)
    finally:
        worker.stop()


def test_pathological_polygons_answer_at_once_and_good_fields_still_classify(
    service_settings: Any, demo_fields: dict
) -> None:
    with TestClient(create_app(service_settings(limits={"repair_seconds": 0.5}))) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        square = [[0, 0], [0.001, 0], [0.001, 0.001], [0, 0.001], [0, 0]]
        costly = _collection(
            {"type": "Polygon", "coordinates": [_random_ring(500, seed=2)]},  # 190 s with linework
            {"type": "MultiPolygon", "coordinates": [[square]] * 4000},  # 16,000 positions, one place
            *({"type": "Polygon", "coordinates": [_random_ring(2000, seed=s)]} for s in range(8)),
        )
        started = time.monotonic()
        answer = client.post("/v1/fields:classify", json=costly)
        assert time.monotonic() - started < 5  # seconds, not the minutes the repairs would take
        assert answer.status_code == 200, answer.text
        messages = [f["properties"]["message"] for f in answer.json()["features"]]
        assert sum("was not repaired" in m and "limits.repair_seconds" in m for m in messages) >= 8
        good = client.post("/v1/fields:classify", json=demo_fields, headers=GEOJSON)
        assert good.status_code == 200 and {f["properties"]["status"] for f in good.json()["features"]} == {"ok"}


def test_a_request_past_its_time_gets_a_503(service_settings: Any, demo_fields: dict) -> None:
    settings = service_settings(limits={"request_seconds": 0.001}, precompute_max_pixels=1000, preload=False)
    answer = TestClient(create_app(settings)).post("/v1/fields:classify", json=demo_fields)
    assert answer.status_code == 503, answer.text
    problem = answer.json()
    assert problem["type"].endswith("deadline-exceeded") and "limits.request_seconds" in problem["detail"]


def test_what_start_up_loaded_is_kept_out_of_the_collectors_sight_while_serving(service_settings: Any) -> None:
    gc.unfreeze()
    with TestClient(create_app(service_settings())) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert gc.get_freeze_count() > 10_000  # the model, the demo scene, torch's own objects
    assert gc.get_freeze_count() == 0  # collectable again once the app stops


def test_large_bodies_beyond_the_slots_are_refused_at_once_and_small_ones_never() -> None:
    gate = LargeRequests(Limits(large_body_bytes=1000, large_requests=1))
    with gate.admit(5000):
        with gate.admit(1000):  # small: not counted
            pass
        with pytest.raises(Busy) as refused, gate.admit(1001):
            pass
        assert refused.value.headers == {"Retry-After": "1"} and "limits.large_requests" in refused.value.detail
    with gate.admit(5000):  # the slot is free again
        assert gate.in_work == 1
    assert gate.in_work == 0


def test_a_large_fields_body_while_another_is_in_work_gets_a_503_busy(
    service_settings: Any, demo_fields: dict
) -> None:
    app = create_app(service_settings(limits={"large_body_bytes": 2000}, preload=False))
    client = TestClient(app)
    small = _collection(*(f["geometry"] for f in demo_fields["features"][:2]))
    large = _collection(*(f["geometry"] for f in demo_fields["features"][:30]))
    assert client.post("/v1/fields:classify", json=large).status_code == 200  # alone: answered
    app.state.service.large_requests.in_work = 1  # as while another large body is in work
    refused = client.post("/v1/fields:classify", json=large)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
    assert refused.json()["type"].endswith(":busy") and "limits.large_body_bytes" in refused.json()["detail"]
    assert client.post("/v1/fields:classify", json=small).status_code == 200
