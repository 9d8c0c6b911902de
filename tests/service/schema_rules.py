"""What JSON Schema cannot say about the service's inputs, applied to schemathesis's schema-valid
(positive) cases so that its check that valid data is accepted stays on: a GeoJSON ring ends where it
starts (RFC 7946 §3.1.6), a series' values have the shape of its dates × bands and hold the model's
bands, a season names a time the data source has acquisitions in, a job's inputs are those its process
describes (they depend on the process in the path). Negative cases are left as generated."""

from __future__ import annotations

from typing import Any

import numpy as np
import schemathesis
from fastapi.testclient import TestClient

#: The year of the demo scene's acquisitions.
DEMO_SEASON = "2026"
#: Valid inputs of each process (the keyed run's service has the demo source and a dataset "crops").
JOB_INPUTS = {
    "classify-raster": {"data_source": "demo", "block_size": 64},
    "retrain": {"dataset": "crops", "config": {"epochs": 1, "model.hidden_size": 4, "model.num_layers": 1}},
}


def _closed(geometry: Any) -> Any:
    """The geometry with each ring of a (Multi)Polygon closed (its first position repeated last)."""
    if not isinstance(geometry, dict):
        return geometry
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon" and isinstance(coordinates, list):
        return {**geometry, "coordinates": [[*ring[:-1], ring[0]] for ring in coordinates]}
    if kind == "MultiPolygon" and isinstance(coordinates, list):
        polygons = [_closed({"type": "Polygon", "coordinates": polygon})["coordinates"] for polygon in coordinates]
        return {**geometry, "coordinates": polygons}
    if kind == "GeometryCollection" and isinstance(geometry.get("geometries"), list):
        return {**geometry, "geometries": [_closed(g) for g in geometry["geometries"]]}
    return geometry


def install_cross_field_rules(schema: schemathesis.BaseSchema, client: TestClient) -> None:
    """Register the hooks on ``schema`` (the model's bands read from ``client``'s default model)."""
    bands = client.get("/v1/models/default").json()["card"]["bands"]

    @schema.hook
    def map_case(context: Any, case: schemathesis.Case) -> schemathesis.Case:
        if case.meta is None or not case.meta.generation.mode.is_positive:
            return case
        if case.path == "/v1/fields:classify" and isinstance(case.body, dict):
            features = case.body.get("features", [])
            case.body = {**case.body, "features": [{**f, "geometry": _closed(f.get("geometry"))} for f in features]}
        if case.path == "/v1/series:classify" and isinstance(case.body, dict):
            dates = case.body["dates"]
            rng = np.random.default_rng(len(dates))
            series = [{**sample, "values": rng.uniform(0, 0.5, (len(dates), len(bands))).round(4).tolist(),
                       "mask": None} for sample in case.body["series"]]  # fmt: skip
            case.body = {**case.body, "bands": bands, "series": series}
        if case.path == "/v1/processes/{process_id}/execution" and isinstance(case.body, dict):
            process = (case.path_parameters or {}).get("process_id")  # inputs as its description asks
            case.body = {**case.body, "inputs": JOB_INPUTS.get(process, {})}
        if isinstance((case.query or {}).get("season"), str):  # a season the demo source has acquisitions in
            case.query = {**case.query, "season": DEMO_SEASON}
        return case
