"""Field polygons: reading and checking, CRS handling, rasterisation (incl. the real eo-learn parcels)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio.transform
from shapely.geometry import Point, Polygon, box

from cropstar.data.fields import field_pixels, fields_outside, overlap_layers, rasterise_fields, read_fields
from cropstar.errors import DataError, InputError

UTM = "EPSG:32632"


def _frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "parcel_id": ["a", "b", "c", "d", "e"],
            "crop": ["wheat", "maize", "maize", "wheat", "beet"],
        },
        geometry=[
            box(0, 0, 40, 40),
            box(40, 0, 80, 40),
            Polygon([(0, 40), (40, 80), (40, 40), (0, 80)]),  # bow-tie: self-intersecting
            Polygon(),
            Point(5, 5),
        ],
        crs=UTM,
    )


def test_read_checks_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "fields.gpkg"
    _frame().to_file(path)
    fields = read_fields(path, label_column="crop")
    assert list(fields.frame["field_id"]) == ["a", "b", "c"]
    assert all(fields.frame.geometry.is_valid)
    problems = {p.field_id: p.problem for p in fields.problems}
    assert "repaired" in problems["c"] and "Self-intersection" in problems["c"]
    assert problems["d"].startswith("empty geometry")
    assert problems["e"].startswith("Point is not a polygon")


def test_read_errors_name_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_fields(tmp_path / "nope.geojson")
    path = tmp_path / "fields.gpkg"
    _frame().to_file(path)
    with pytest.raises(InputError, match="no label column 'label'.*parcel_id, crop"):
        read_fields(path, label_column="label")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read fields from .*bad.geojson"):
        read_fields(bad)


def test_geojson_defaults_to_wgs84_and_ids_must_be_unique(tmp_path: Path) -> None:
    path = tmp_path / "f.geojson"
    feature = {"type": "Feature", "properties": {"id": 7}, "geometry": box(11, 48, 11.001, 48.001).__geo_interface__}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature, feature]}))
    with pytest.raises(DataError, match="not unique, e.g. 7"):
        read_fields(path)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    fields = read_fields(path)
    assert fields.frame.crs.to_epsg() == 4326 and list(fields.frame["field_id"]) == ["7"]


def test_rasterise_in_another_crs() -> None:
    frame = _frame().iloc[:2].copy()
    transform = rasterio.transform.from_origin(0, 40, 10, 10)
    raster = rasterise_fields(frame.to_crs("EPSG:4326"), transform, (4, 8), UTM)
    np.testing.assert_array_equal(raster, np.repeat([[0] * 4 + [1] * 4], 4, axis=0))
    values = rasterise_fields(frame, transform, (4, 8), UTM, values=np.array([3, 9]))
    assert set(np.unique(values)) == {3, 9}
    outside = fields_outside(frame, (0, 0, 30, 30), UTM)
    np.testing.assert_array_equal(outside, [False, True])


@pytest.mark.parametrize("window", [7, 16, 2048])
def test_field_pixels_block_by_block_equal_the_whole_raster(window: int) -> None:
    rng = np.random.default_rng(4)
    corners = rng.uniform(0, 300, (40, 2))
    frame = gpd.GeoDataFrame(  # overlapping boxes, some reaching past the grid
        {"field_id": [str(i) for i in range(40)]},
        geometry=[box(x, y, x + rng.uniform(15, 90), y + rng.uniform(15, 90)) for x, y in corners],
        crs=UTM,
    )
    transform = rasterio.transform.from_origin(20, 330, 10, 10)
    shape = (30, 27)
    whole = rasterise_fields(frame.to_crs("EPSG:4326"), transform, shape, UTM)
    rows, cols, fields = field_pixels(frame.to_crs("EPSG:4326"), transform, shape, UTM, window=window)
    expected_rows, expected_cols = np.nonzero(whole >= 0)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(cols, expected_cols)
    np.testing.assert_array_equal(fields, whole[expected_rows, expected_cols])  # later rows win overlaps


@pytest.mark.parametrize("window", [7, 2048])
def test_overlapping_fields_each_get_the_pixels_they_get_alone(window: int) -> None:
    rng = np.random.default_rng(5)
    corners = rng.uniform(0, 300, (30, 2))
    boxes = [box(x, y, x + rng.uniform(15, 90), y + rng.uniform(15, 90)) for x, y in corners]
    boxes += [boxes[0].buffer(3), box(100, 95, 125, 135), box(125, 95, 165, 135)]  # a near copy; two touching on pixel centres
    frame = gpd.GeoDataFrame({"field_id": [str(i) for i in range(len(boxes))]}, geometry=boxes, crs=UTM)
    transform = rasterio.transform.from_origin(20, 330, 10, 10)
    shape = (30, 27)
    rows, cols, fields = field_pixels(frame, transform, shape, UTM, window=window, overlaps="each")
    for i in range(len(frame)):
        alone = rasterise_fields(frame.iloc[[i]], transform, shape, UTM) >= 0
        mine = fields == i
        assert sorted(zip(rows[mine], cols[mine])) == list(zip(*np.nonzero(alone))), f"field {i}"
    assert len(rows) > len(set(zip(rows, cols)))  # some pixels listed for several fields
    assert overlap_layers(frame.geometry)[len(boxes) - 3] != overlap_layers(frame.geometry)[0]  # the near copy
    squares = gpd.GeoSeries([box(0, 0, 1, 1), box(1, 0, 2, 1), box(0.5, 0, 1.5, 1), box(5, 5, 6, 6), box(0, 0, 2, 1)])
    assert overlap_layers(squares).tolist() == [0, 0, 1, 0, 2]  # touching squares share a layer


@pytest.mark.realdata
def test_rasterising_eolearn_parcels_reproduces_their_land_use_raster(shared_data: Path) -> None:
    patch = shared_data / "eolearn-testeopatch" / "TestEOPatch"
    fields = read_fields(patch / "vector_timeless" / "LULC.gpkg", label_column="LULC_ID")
    bounds = gpd.read_file(patch / "bbox.geojson").total_bounds
    transform = rasterio.transform.from_bounds(*bounds, 100, 101)
    raster = rasterise_fields(fields.frame, transform, (101, 100), fields.frame.crs,
                              values=fields.frame["LULC_ID"].to_numpy(), fill=0)
    reference = np.load(patch / "mask_timeless" / "LULC.npy")[..., 0]
    assert np.mean(raster == reference) == 1.0
    assert len(fields.frame) + sum("skipped" in p.problem for p in fields.problems) == 88
