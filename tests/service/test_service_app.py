"""The service app in process (TestClient): field and series classification on the demo, per-feature
statuses, every bad input's 4xx problem, models and promotion, API keys, limits, metrics."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from geojson_rules import rfc7946_problems
from shapely.geometry import mapping, shape

from cropstar.model.artifact import load_artifact, save_artifact
from cropstar.model.default_model import default_model_path
from cropstar.model.registry import ModelRegistry
from service.app import create_app
from service.errors import PROBLEM_JSON
from service.security import hash_key

GEOJSON = {"content-type": "application/geo+json"}
ADMIN_KEY, READ_KEY = "admin-key-0123456789abcdef", "read-key-0123456789abcdef"


def _post_fields(client: TestClient, document: Any, query: str = "", **headers: str):
    body = document if isinstance(document, (bytes, str)) else json.dumps(document)
    return client.post(f"/v1/fields:classify{query}", content=body, headers={**GEOJSON, **headers})


def _problem(response: Any, status: int, *words: str) -> dict[str, Any]:
    """The problem details of ``response``, checked: status, media type, members, words in the detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    for word in words:
        assert word.lower() in body["detail"].lower(), (word, body["detail"])
    return body


def _square(lon: float, lat: float, side: float) -> dict[str, Any]:
    ring = [[lon, lat], [lon + side, lat], [lon + side, lat + side], [lon, lat + side], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def _feature(geometry: Any, field_id: str) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"field_id": field_id}, "geometry": geometry}


def _collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


# ---- fields:classify -------------------------------------------------------------------------
def test_demo_fields_are_classified_as_rfc7946_geojson(service_client: TestClient, demo_fields: dict) -> None:
    response = _post_fields(service_client, demo_fields)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    document = response.json()
    assert rfc7946_problems(document) == []
    frame = gpd.read_file(io.BytesIO(response.content))
    assert len(frame) == len(demo_fields["features"])
    assert frame.crs.to_epsg() == 4326
    assert set(frame["status"]) == {"ok"}
    for column in ("crop", "crop_code", "crop_id", "confidence", "n_pixels", "n_valid_obs", "model", "season"):
        assert frame[column].notna().all(), column
    assert (frame["crop"] == frame["input_crop"]).mean() >= 0.85  # the demo's truth came back as input_crop
    first = document["features"][0]
    assert first["id"] == first["properties"]["field_id"] == demo_fields["features"][0]["id"]
    assert sum(first["properties"]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert first["properties"]["model"] == "cropstar-demo-star:1"


def test_majority_vote_gives_vote_shares(service_client: TestClient, demo_fields: dict) -> None:
    document = _collection(*demo_fields["features"][:5])
    mean = _post_fields(service_client, document).json()["features"]
    votes = _post_fields(service_client, document, "?aggregate=majority").json()["features"]
    for m, v in zip(mean, votes, strict=True):
        n = v["properties"]["n_pixels"]
        shares = np.array(list(v["properties"]["probabilities"].values()))
        assert np.allclose(shares * n, np.round(shares * n), atol=0.01)  # whole votes
        assert v["properties"]["n_pixels"] == m["properties"]["n_pixels"]


def test_per_feature_problems_do_not_fail_the_request(service_client: TestClient, demo_fields: dict) -> None:
    ring = demo_fields["features"][0]["geometry"]["coordinates"][0]
    (x0, y0), (x1, y1) = np.min(ring, axis=0).tolist(), np.max(ring, axis=0).tolist()
    bowtie = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]]}
    features = [
        demo_fields["features"][1],
        _feature(bowtie, "bowtie"),
        _feature({"type": "Point", "coordinates": [x0, y0]}, "point"),
        _feature({"type": "LineString", "coordinates": [[x0, y0], [x1, y1]]}, "line"),
        _feature(None, "no-geometry"),
        _feature(_square(2.35, 48.85, 0.01), "paris"),
        _feature(_square(x0 + 1e-5, y0 + 1e-5, 2e-6), "tiny"),
    ]
    response = _post_fields(service_client, _collection(*features))
    assert response.status_code == 200, response.text
    assert rfc7946_problems(response.json()) == []
    props = {str(f["properties"]["field_id"]): f["properties"] for f in response.json()["features"]}
    assert props["bowtie"]["status"] == "ok" and "repaired" in props["bowtie"]["message"]
    assert "self-intersection" in props["bowtie"]["message"].lower()
    assert props["point"]["status"] == "invalid_geometry" and "Point is not a polygon" in props["point"]["message"]
    assert props["line"]["status"] == "invalid_geometry" and "LineString" in props["line"]["message"]
    assert props["no-geometry"]["status"] == "invalid_geometry" and "empty" in props["no-geometry"]["message"]
    assert props["paris"]["status"] == "outside_cube" and "outside" in props["paris"]["message"]
    assert props["tiny"]["status"] == "no_pixels" and "pixel centre" in props["tiny"]["message"]
    for name in ("point", "line", "no-geometry", "paris", "tiny"):
        assert props[name]["crop"] is None and props[name]["probabilities"] is None
    assert props[str(demo_fields["features"][1]["id"])]["status"] == "ok"


def test_a_field_gets_the_same_answer_alone_and_beside_an_overlapping_copy(
    service_client: TestClient, demo_fields: dict
) -> None:
    field = demo_fields["features"][3]
    copy = {**field, "id": "copy", "geometry": mapping(shape(field["geometry"]).buffer(2e-5))}
    alone = _post_fields(service_client, _collection(field)).json()["features"][0]["properties"]
    both = _post_fields(service_client, _collection(field, copy)).json()["features"]
    assert alone["status"] == "ok" and alone["n_pixels"] > 0
    assert both[0]["properties"] == alone  # the copy, sent after it, takes none of its pixels
    assert both[1]["properties"]["status"] == "ok" and both[1]["properties"]["n_pixels"] >= alone["n_pixels"]


def test_booleans_are_no_numbers(service_client: TestClient) -> None:
    ring = [[True, False], [1, 0], [1, 1], [0, 1], [True, False]]
    _problem(_post_fields(service_client, _collection(_feature({"type": "Polygon", "coordinates": [ring]}, "b"))),
             422, "true or false")  # fmt: skip
    series = {"bands": ["B02"], "dates": ["2026-04-01"], "series": [{"values": [[True]]}]}
    _problem(service_client.post("/v1/series:classify", json=series), 422, "series[0].values", "valid number")


def test_properties_named_like_results_come_back_renamed(service_client: TestClient, demo_fields: dict) -> None:
    feature = {**demo_fields["features"][0], "properties": {"crop": "a", "input_crop": "b", "status": "c"}}
    response = _post_fields(service_client, _collection(feature))
    assert response.status_code == 200, response.text
    props = response.json()["features"][0]["properties"]
    assert (props["input_crop"], props["input_input_crop"], props["input_status"]) == ("a", "b", "c")
    assert props["status"] == "ok"


def test_ids_and_properties_come_back_as_sent(service_client: TestClient, demo_fields: dict) -> None:
    first, second = (dict(f) for f in demo_fields["features"][:2])
    properties = {"note": "north", "area": 3, "geometry": "square", "type": [1, {"a": None}]}
    first.update(id=1, properties=properties)  # an integer id, properties only here
    second.update(id="south", properties={})
    response = _post_fields(service_client, _collection(first, second))
    assert response.status_code == 200, response.text
    one, two = response.json()["features"]
    assert one["id"] == 1 and type(one["id"]) is int and one["properties"]["field_id"] == 1
    assert {name: one["properties"][name] for name in properties} == properties
    assert two["id"] == "south" and two["properties"]["field_id"] == "south"
    assert "note" not in two["properties"] and "area" not in two["properties"]  # not filled with nulls
    assert one["properties"]["status"] == two["properties"]["status"] == "ok"


def test_empty_collection_is_an_empty_answer(service_client: TestClient) -> None:
    response = _post_fields(service_client, _collection())
    assert response.status_code == 200, response.text
    assert response.json() == {"type": "FeatureCollection", "features": []}


def test_json_media_type_and_season_are_accepted(service_client: TestClient, demo_fields: dict) -> None:
    document = _collection(*demo_fields["features"][:3])
    season = service_client.post("/v1/fields:classify?season=2026&source=demo&model=default", json=document)
    assert season.status_code == 200, season.text
    assert {f["properties"]["status"] for f in season.json()["features"]} == {"ok"}
    whole = _post_fields(service_client, document)  # the demo has one season: the same answer
    assert season.json() == whole.json()
    summer = service_client.post("/v1/fields:classify?season=2026-05-01/2026-09-30", json=document)
    assert summer.status_code == 200, summer.text  # part of the season: classified around the fields
    assert {f["properties"]["status"] for f in summer.json()["features"]} == {"ok"}
    assert 'kind="fields",model="default"' in service_client.get("/metrics").text


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"type": "FeatureCollection", "features": [', 400, ["not valid JSON", "line 1"]),
        (b"", 400, ["empty"]),
        (b'{"type": "FeatureCollection", "features": [], "x": NaN}', 400, ["NaN"]),
        (b"[1, 2]", 422, ["FeatureCollection", "list"]),
        (b'{"type": "Feature", "properties": {}, "geometry": null}', 422, ["FeatureCollection", "wrap"]),
        (b'{"type": "FeatureCollection", "features": {"a": 1}}', 422, ["features"]),
        (json.dumps(_collection({"type": "Feature", "properties": {}, "geometry": {
            "type": "Polygon", "coordinates": [[[11.57, 48.36], [11.58, 48.36], [11.58, 48.37]]]}})).encode(),
         422, ["features[0].geometry", "4"]),
        (json.dumps(_collection({"type": "Feature", "properties": {}, "geometry": {
            "type": "Polygon", "coordinates": [[[11.57, 48.36], [11.58, 48.36], [11.58, 48.37], [11.57, 48.37]]]}})
         ).encode(), 422, ["features[0].geometry", "start and end"]),
        (json.dumps(_collection({"type": "Feature", "properties": {}, "geometry": {
            "type": "Hexagon", "coordinates": []}})).encode(), 422, ["features[0].geometry"]),
        (json.dumps(_collection(_feature(_square(690000.0, 5359000.0, 100.0), "utm"))).encode(), 422,
         ["feature 0", "WGS 84 lon/lat", "projected"]),
    ],
    ids=["broken-json", "empty", "nan", "array", "feature", "features-object", "short-ring", "unclosed-ring",
         "unknown-geometry-type", "projected-coordinates"],
)  # fmt: skip
def test_bad_bodies_are_named_4xx_problems(
    service_client: TestClient, body: bytes, status: int, words: list[str]
) -> None:
    _problem(_post_fields(service_client, body), status, *words)


def test_unknown_model_and_source_are_404(service_client: TestClient, demo_fields: dict) -> None:
    document = _collection(demo_fields["features"][0])
    _problem(_post_fields(service_client, document, "?model=wheat:v9"), 404, "unknown model", "wheat:v9", "default")
    _problem(_post_fields(service_client, document, "?model=../../etc"), 404, "unknown model")
    _problem(_post_fields(service_client, document, "?source=/etc/passwd"), 404, "unknown data source", "demo")


def test_bad_parameters_are_422(service_client: TestClient, demo_fields: dict) -> None:
    document = _collection(demo_fields["features"][0])
    body = _problem(_post_fields(service_client, document, "?aggregate=median"), 422, "aggregate")
    assert body["errors"][0]["loc"] == "query.aggregate"
    _problem(_post_fields(service_client, document, "?season=spring"), 422, "season")
    _problem(_post_fields(service_client, document, "?season=2026-10-01/2026-03-01"), 422, "ends before")
    _problem(_post_fields(service_client, document, "?season=2019"), 422, "no acquisition", "2019")
    _problem(_post_fields(service_client, document, "?season=0100"), 422, "1900")
    _problem(_post_fields(service_client, document, "?season=2026-02-30/2026-03-01"), 422, "day")


def test_wrong_media_type_is_415(service_client: TestClient, demo_fields: dict) -> None:
    response = service_client.post(
        "/v1/fields:classify", content=json.dumps(demo_fields), headers={"content-type": "text/csv"}
    )
    _problem(response, 415, "application/geo+json")


# ---- limits ----------------------------------------------------------------------------------
def _polygon_with(vertices: int, decimals: bool = True) -> bytes:
    """A FeatureCollection whose one polygon (a circle) has ``vertices`` positions, written as text
    (fast); ``decimals=False``: every position [11,48] (a compact body)."""
    if decimals:
        angles = np.linspace(0, 2 * np.pi, vertices - 1, endpoint=False)
        lon, lat = (11.57 + 0.001 * np.cos(angles)).tolist(), (48.36 + 0.001 * np.sin(angles)).tolist()
        positions = [f"[{x:.7f},{y:.7f}]" for x, y in zip(lon, lat, strict=True)]
        ring = ",".join([*positions, positions[0]])
    else:
        ring = ",".join(["[11,48]"] * vertices)
    geometry = '{"type":"Polygon","coordinates":[[' + ring + "]]}"
    return ('{"type":"FeatureCollection","features":[{"type":"Feature","id":"huge","properties":{},'
            '"geometry":' + geometry + "}]}").encode()


def test_a_polygon_of_a_million_vertices_is_refused_before_parsing(service_client: TestClient) -> None:
    body = _polygon_with(1_000_000)
    assert len(body) > 8 * 1024 * 1024
    _problem(_post_fields(service_client, body), 413, "exceeds the limit", "max_body_bytes", "bytes")


def test_vertex_limit_is_named(service_settings: Any) -> None:
    settings = service_settings(limits={"max_body_bytes": 64 * 1024 * 1024}, preload=False)
    client = TestClient(create_app(settings))
    body = _polygon_with(1_000_000, decimals=False)
    _problem(_post_fields(client, body), 413, "vertex limit", "20,000 vertices", "max_vertices")


def test_feature_and_area_limits(service_settings: Any, demo_fields: dict) -> None:
    client = TestClient(create_app(service_settings(limits={"max_features": 3, "max_area_ha": 1}, preload=False)))
    _problem(_post_fields(client, _collection(*demo_fields["features"][:4])), 413, "4 features", "max_features")
    _problem(_post_fields(client, _collection(*demo_fields["features"][:3])), 413, "ha", "max_area_ha")


def test_streamed_body_over_the_limit_is_413(service_settings: Any) -> None:
    client = TestClient(create_app(service_settings(limits={"max_body_bytes": 1000}, preload=False)))

    def chunks():
        for _ in range(10):
            yield b" " * 500

    response = client.post("/v1/fields:classify", content=chunks(), headers=GEOJSON)
    _problem(response, 413, "1,000 bytes")
    declared = client.post("/v1/series:classify", content=b"x" * 2000, headers={"content-type": "application/json"})
    _problem(declared, 413, "2,000 bytes")


# ---- series:classify -------------------------------------------------------------------------
def _state(client: TestClient) -> Any:
    return client.app.state.service  # type: ignore[attr-defined]


def test_series_of_scene_pixels_match_the_scene_predictions(service_client: TestClient) -> None:
    state = _state(service_client)
    entry, loaded = state.model(None)
    source = state.source(None)
    cube = state.cube(source, tuple(loaded.card.bands))
    pixels = state.probability_map(entry, loaded, source)
    data, valid = cube.data.values, cube.valid.values
    width = data.shape[-1]
    chosen = [(40, 40), (64, 90), (100, 20), (20, 110)]
    series = []
    for r, c in chosen:
        patch = data[:, :, r - 1 : r + 2, c - 1 : c + 2].copy()
        patch[np.broadcast_to(~valid[:, None, r - 1 : r + 2, c - 1 : c + 2], patch.shape)] = np.nan
        series.append({"id": f"{r},{c}", "values": np.where(np.isnan(patch), None, patch).tolist()})
    request = {"bands": list(cube.bands), "dates": [t.isoformat() for t in cube.times], "series": series}
    response = service_client.post("/v1/series:classify", json=request)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "default" and len(answer["time_grid"]) == loaded.card.time_grid.steps
    for (r, c), result in zip(chosen, answer["results"], strict=True):
        expected = pixels.probabilities[r * width + c]
        assert result["id"] == f"{r},{c}" and result["status"] == "ok"
        assert result["n_valid_obs"] == pixels.n_valid[r * width + c]
        got = np.array([result["probabilities"][e.code] for e in loaded.card.class_table])
        assert np.allclose(got, expected, atol=2e-4), (got, expected)
        assert result["crop_id"] == int(np.argmax(expected))


def test_pixel_series_with_a_mask_and_aliases(service_client: TestClient) -> None:
    dates = [f"2026-{m:02d}-{d:02d}" for m in range(4, 10) for d in (1, 15)]
    values = [[0.04, 0.06, 0.05, 0.2 + 0.03 * i, 0.18, 0.10] for i in range(len(dates))]
    request = {
        "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
        "dates": dates,
        "series": [
            {"id": 7, "values": values},
            {"id": "masked", "values": values, "mask": [False] * len(dates)},
        ],
    }
    response = service_client.post("/v1/series:classify", json=request)
    assert response.status_code == 200, response.text
    first, masked = response.json()["results"]
    assert first["id"] == 7 and first["status"] == "ok"
    assert sum(first["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert masked["status"] == "no_valid_observations" and masked["crop"] is None and masked["n_valid_obs"] == 0


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"bands": ["B02", "B03", "B04", "B08", "B11", "B05"]}, 422, ["B12"]),
        ({"bands": ["B02", "B03", "B04", "B08", "B11", "B99"]}, 422, ["B99"]),
        ({"bands": ["B02", "B02", "B04", "B08", "B11", "B12"]}, 422, ["repeated", "B02"]),
        ({"series": [{"values": [[[[0.1] * 5] * 5] * 6] * 3}]}, 422, ["5×5", "3×3"]),
        ({"series": [{"values": [[0.1] * 5] * 3}]}, 422, ["series[0].values", "[3][6]"]),
        ({"series": [{"values": [[0.1] * 6, [0.1] * 5, [0.1] * 6]}]}, 422, ["ragged"]),
        ({"series": [{"values": [[0.1] * 6] * 3, "mask": [True]}]}, 422, ["mask", "3 dates"]),
        ({"dates": ["2026-04-01", "2026-04-31", "2026-05-01"]}, 422, ["dates"]),
        ({"dates": ["0100-04-01", "0100-05-01", "0100-06-01"]}, 422, ["1900"]),
        ({"series": []}, 422, ["series"]),
    ],
    ids=["missing-band", "unknown-band", "repeated-band", "patch-size", "shape", "ragged", "mask", "date", "year",
         "no-series"],
)  # fmt: skip
def test_series_that_do_not_fit_are_named_422(
    service_client: TestClient, change: dict, status: int, words: list[str]
) -> None:
    request = {
        "bands": ["B02", "B03", "B04", "B08", "B11", "B12"],
        "dates": ["2026-04-01", "2026-06-01", "2026-08-01"],
        "series": [{"values": [[0.1] * 6] * 3}],
        **change,
    }
    response = service_client.post("/v1/series:classify", json=request)
    _problem(response, status, *words)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b'{"bands": [', "application/json", 400, ["not valid JSON", "line 1"]),
        (b"", "application/json", 400, ["empty"]),
        (b'{"bands": ["B02"], "dates": ["2026-04-01"], "series": [{"values": [[NaN]]}]}', "application/json", 400,
         ["NaN is not valid JSON"]),
        (b'{"bands": ["B02"]}', "text/plain", 415, ["text/plain"]),
        (b'{"bands": ["B02"]}', "application/json", 422, ["dates", "field required"]),
    ],
    ids=["broken", "empty", "nan", "text", "missing"],
)  # fmt: skip
def test_series_bodies_get_the_documented_status(
    service_client: TestClient, body: bytes, content_type: str, status: int, words: list[str]
) -> None:
    response = service_client.post("/v1/series:classify", content=body, headers={"content-type": content_type})
    _problem(response, status, *words)


# ---- models, keys ----------------------------------------------------------------------------
@pytest.fixture
def registry_client(service_settings: Any, tmp_path: Path) -> TestClient:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(default_model_path(), name="crops")
    registry.register(default_model_path(), name="crops", notes="second")
    settings = service_settings(
        registry=tmp_path / "registry",
        api_keys=[
            {"name": "admin", "hash": hash_key(ADMIN_KEY)},
            {"name": "reader", "hash": hash_key(READ_KEY), "scopes": ["read"]},
        ],
        preload=False,
        precompute_max_pixels=1000,  # the demo counts as a large source: read lazily around the fields
    )
    return TestClient(create_app(settings))


def test_models_list_and_cards(service_client: TestClient) -> None:
    models = service_client.get("/v1/models").json()["models"]
    assert [m["id"] for m in models] == ["default"]
    assert models[0]["default"] and models[0]["name"] == "cropstar-demo-star" and len(models[0]["classes"]) == 8
    card = service_client.get("/v1/models/default").json()
    assert card["card"]["format"] == "cropstar-model" and card["card"]["bands"] == models[0]["bands"]
    assert card["model_card"].startswith("#") and card["registration"] is None
    assert card["card"]["training"]["dataset"] == "dataset"  # the folder's name, not the server's path
    _problem(service_client.get("/v1/models/crops:v1"), 404, "unknown model", "crops:v1")


def test_registry_models_and_promotion(registry_client: TestClient, demo_fields: dict) -> None:
    models = registry_client.get("/v1/models").json()["models"]
    assert [(m["id"], m.get("current")) for m in models] == [("default", None), ("crops:v1", True), ("crops:v2", False)]
    card = registry_client.get("/v1/models/crops").json()
    assert card["id"] == "crops:v1" and card["registration"]["current"] and "path" not in card["registration"]

    _problem(registry_client.post("/v1/models/crops:v2:promote"), 401, "X-API-Key")
    _problem(registry_client.post("/v1/models/crops:v2:promote", headers={"X-API-Key": "guess"}), 401, "not known")
    _problem(registry_client.post("/v1/models/crops:v2:promote", headers={"X-API-Key": READ_KEY}), 403, "admin")
    promoted = registry_client.post("/v1/models/crops:v2:promote", headers={"X-API-Key": ADMIN_KEY})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["id"] == "crops:v2" and promoted.json()["current"] is True
    assert registry_client.get("/v1/models/crops:current").json()["id"] == "crops:v2"
    _problem(registry_client.post("/v1/models/default:promote", headers={"X-API-Key": ADMIN_KEY}), 422, "registry")
    _problem(registry_client.post("/v1/models/crops:v7:promote", headers={"X-API-Key": ADMIN_KEY}), 404, "crops:v7")

    answer = _post_fields(registry_client, _collection(*demo_fields["features"][:2]), "?model=crops")
    assert answer.status_code == 200, answer.text
    assert [f["properties"]["status"] for f in answer.json()["features"]] == ["ok", "ok"]
    assert 'kind="fields",model="crops:v2"' in registry_client.get("/metrics").text  # the lazy path


def test_a_broken_model_is_a_500_that_names_no_server_path(
    service_settings: Any, tmp_path: Path, demo_fields: dict
) -> None:
    loaded = load_artifact(default_model_path())
    with torch.no_grad():
        loaded.model.head.linear.weight.fill_(3e38)  # finite weights, logits that overflow
    save_artifact(tmp_path / "overflow", loaded.model, loaded.card)
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(tmp_path / "overflow", name="overflow")
    registry.register(default_model_path(), name="tampered")
    client = TestClient(create_app(service_settings(registry=tmp_path / "registry", preload=False)))
    weights = next((tmp_path / "registry" / "tampered").glob("v*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # one weight changed after registration
    for model in ("overflow", "tampered"):
        answer = _post_fields(client, _collection(*demo_fields["features"][:2]), f"?model={model}")
        body = _problem(answer, 500, "weights", "retrain or restore")
        assert body["type"].endswith("broken-model") and str(tmp_path) not in answer.text


def test_read_endpoints_can_require_a_key(service_settings: Any, demo_fields: dict) -> None:
    settings = service_settings(
        read_requires_key=True, api_keys=[{"name": "reader", "hash": hash_key(READ_KEY), "scopes": ["read"]}],
        preload=False,
    )
    client = TestClient(create_app(settings))
    _problem(client.get("/v1/models"), 401, "X-API-Key")
    _problem(_post_fields(client, _collection()), 401)
    assert client.get("/v1/models", headers={"X-API-Key": READ_KEY}).status_code == 200
    _problem(_post_fields(client, _collection(), "?model=nope", **{"X-API-Key": READ_KEY}), 404, "nope")
    assert client.get("/health").status_code == 200


# ---- health, metrics, unknown routes ---------------------------------------------------------
def test_health_ready_and_metrics(service_client: TestClient, demo_fields: dict) -> None:
    assert service_client.get("/health").json()["status"] == "ok"
    ready = service_client.get("/ready").json()
    assert ready["status"] == "ready" and ready["data_sources"]["demo"]["pixels"] == 128 * 128
    _post_fields(service_client, _collection(demo_fields["features"][0], _feature(None, "x")))
    service_client.get("/v1/models/nope")
    text = service_client.get("/metrics").text
    assert 'cropstar_http_requests_total{method="POST",route="/v1/fields:classify",status="200"}' in text
    assert 'cropstar_http_requests_total{method="GET",route="/v1/models/{model_id}",status="404"}' in text
    assert 'cropstar_fields_classified_total{status="ok"}' in text
    assert 'cropstar_fields_classified_total{status="invalid_geometry"}' in text
    assert 'cropstar_model_inference_seconds_count{kind="map",model="default"}' in text
    assert 'cropstar_http_request_duration_seconds_bucket{le="0.3",method="POST",route="/v1/fields:classify",' \
           'status="200"}' in text


def test_a_client_that_leaves_mid_body_is_counted_499_without_a_traceback(
    service_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    messages = iter([{"type": "http.request", "body": b'{"', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/fields:classify", "raw_path": b"/v1/fields:classify", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/geo+json"), (b"content-length", b"10")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cropstar.service"):
        asyncio.run(service_client.app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert [r.exc_info for r in caplog.records if r.exc_info] == [] and "disconnected" in caplog.text
    text = service_client.get("/metrics").text
    assert 'cropstar_http_requests_total{method="POST",route="/v1/fields:classify",status="499"} 1.0' in text
    assert 'route="/v1/fields:classify",status="500"' not in text


def test_a_source_that_fails_to_load_is_not_ready(service_settings: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    settings = service_settings(data_sources={"broken": str(tmp_path / "empty")})
    with TestClient(create_app(settings)) as client:
        for _ in range(600):
            body = client.get("/ready").json()
            if body.get("problem"):
                break
            time.sleep(0.05)
        _problem(client.get("/ready"), 503, "loading failed", "'broken' cannot be read")
        assert client.get("/health").status_code == 200
        body = _problem(_post_fields(client, _collection()), 503, "data source 'broken' cannot be read")
        assert str(tmp_path) not in body["detail"]  # no server path in answers


def test_unknown_routes_and_methods_are_problems(service_client: TestClient) -> None:
    _problem(service_client.get("/v2/anything"), 404, "/v2/anything")
    _problem(service_client.get("/v1/fields:classify"), 405, "GET")
    for path, allowed in (("/v1/jobs/some-job", "DELETE, GET"), ("/v1/models/crops:v2:promote", "POST"),
                          ("/v1/fields:classify", "POST")):
        answer = service_client.options(path)
        _problem(answer, 405, f"allowed: {allowed}")
        assert answer.headers["allow"] == allowed  # the path's own template, all its routes


def test_openapi_documents_the_routes(service_client: TestClient) -> None:
    document = service_client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/v1/fields:classify", "/v1/series:classify", "/v1/models", "/v1/models/{model_id}",
                 "/v1/models/{model_id}:promote", "/health", "/ready", "/metrics"):  # fmt: skip
        assert path in paths, path
    classify = paths["/v1/fields:classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"application/geo+json", "application/json"}
    assert "application/geo+json" in classify["responses"]["200"]["content"]
    assert classify["summary"] and classify["description"]
    assert "application/problem+json" in classify["responses"]["413"]["content"]
    assert {"FieldsIn", "Problem"} <= set(document["components"]["schemas"])
    assert document["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
