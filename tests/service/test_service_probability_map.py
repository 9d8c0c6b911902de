"""Precomputed pixel probabilities give exactly what classify_fields gives (statuses, messages, crops,
pixel counts, probabilities), for both aggregates and every kind of unclassifiable field."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from fastapi.testclient import TestClient
from shapely.geometry import LineString, Point, Polygon, box

from cropstar.errors import InputError
from cropstar.infer.fields import RESULT_COLUMNS, classify_fields
from cropstar.model.artifact import LoadedModel
from service.demo import ensure_demo_scene
from service.probability_map import classify_fields_on_map


@pytest.fixture(scope="module")
def model(service_client: TestClient) -> LoadedModel:
    return service_client.app.state.service.model(None)[1]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def scene(service_client: TestClient, service_cache_dir: Path, model: LoadedModel) -> tuple:
    """The demo cube (in memory), 30 demo fields and six unclassifiable ones, the default model's map
    (the app's: computed at start-up)."""
    state = service_client.app.state.service  # type: ignore[attr-defined]
    entry, _ = state.model(None)
    source = state.source(None)
    cube = state.cube(source, tuple(model.card.bands))
    fields = gpd.read_file(ensure_demo_scene(service_cache_dir) / "fields.geojson").iloc[:30]
    bounds = fields.total_bounds
    width = bounds[2] - bounds[0]
    extra = gpd.GeoDataFrame(
        {"field_id": ["bowtie", "point", "line", "outside", "tiny", "empty"]},
        geometry=[
            Polygon([(bounds[0], bounds[1]), (bounds[2], bounds[3]), (bounds[2], bounds[1]), (bounds[0], bounds[3])]),
            Point(bounds[0] + width / 2, bounds[1]),
            LineString([(bounds[0], bounds[1]), (bounds[2], bounds[3])]),
            box(2.35, 48.85, 2.36, 48.86),
            box(bounds[0] + 1e-5, bounds[1] + 1e-5, bounds[0] + 1.2e-5, bounds[1] + 1.2e-5),
            shapely.Polygon(),
        ],
        crs="EPSG:4326",
    )
    frame = pd.concat([fields[["field_id", "geometry"]].astype({"field_id": str}), extra], ignore_index=True)
    pixels = state.probability_map(entry, model, source)
    return cube, gpd.GeoDataFrame(frame, crs="EPSG:4326"), pixels


@pytest.mark.parametrize("aggregate", ["mean", "majority"])
def test_map_answers_equal_classify_fields(scene: tuple, model: LoadedModel, aggregate: str) -> None:
    cube, fields, pixels = scene
    expected = classify_fields(model, cube, fields, aggregate=aggregate)
    got = classify_fields_on_map(model, pixels, fields, aggregate=aggregate)
    assert list(got.columns) == list(expected.columns)
    assert set(expected["status"]) == {"ok", "invalid_geometry", "outside_cube", "no_pixels"}
    for column in RESULT_COLUMNS:
        if column in ("probabilities", "confidence", "n_valid_obs"):
            continue
        assert got[column].tolist() == expected[column].tolist(), column
    assert np.allclose(got["confidence"].fillna(-1), expected["confidence"].fillna(-1), atol=2e-4)
    assert np.allclose(got["n_valid_obs"].fillna(-1), expected["n_valid_obs"].fillna(-1), atol=1e-6)
    for a, b in zip(got["probabilities"], expected["probabilities"], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys() and np.allclose(list(a.values()), list(b.values()), atol=2e-4)
    assert got.geometry.equals(expected.geometry)


def test_map_covers_the_scene(scene: tuple, model: LoadedModel) -> None:
    cube, _, pixels = scene
    height, width = cube.data.shape[-2:]
    assert pixels.probabilities.shape == (height * width, model.card.architecture.num_classes)
    seen = pixels.n_valid > 0
    assert np.isnan(pixels.probabilities[~seen]).all()
    assert np.allclose(pixels.probabilities[seen].sum(axis=1), 1, atol=1e-4)
    assert pixels.season == "2026-03-11/2026-11-05"


def test_bad_aggregate_is_an_input_error(scene: tuple, model: LoadedModel) -> None:
    _, fields, pixels = scene
    with pytest.raises(InputError, match="aggregate"):
        classify_fields_on_map(model, pixels, fields, aggregate="median")
