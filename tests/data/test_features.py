"""Input features beyond Sentinel-2 bands: names, spectral indices on cubes, the bands a cube must
be opened with, and feature selection for a model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cropstar.data.cube import Cube, open_cube
from cropstar.data.features import (
    add_indices,
    bands_to_read,
    canonical_feature,
    canonical_features,
    describe_features,
    feature_kind,
    select_features,
)
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.errors import DataError, InputError, ModelMismatchError
from cropstar.infer.predict import prepare_cube
from cropstar.model.artifact import load_artifact
from cropstar.model.default_model import default_model_path


@pytest.mark.parametrize(
    ("given", "expected", "kind"),
    [
        ("blue", "B02", "reflectance"),
        ("S2-L2A-B8A", "B8A", "reflectance"),
        ("ndvi", "NDVI", "index"),
        ("Evi", "EVI", "index"),
        ("S1-SIGMA0-VV", "VV", "backscatter"),
        ("SAR-VH", "VH", "backscatter"),
        ("vh_db", "VH", "backscatter"),
        ("AGERA5-TMEAN", "AGERA5-TMEAN", "other"),
        ("temperature_mean", "temperature_mean", "other"),
    ],
)
def test_feature_names_and_kinds(given: str, expected: str, kind: str) -> None:
    assert canonical_feature(given) == expected
    assert feature_kind(expected) == kind


@pytest.mark.parametrize(
    ("name", "problem"), [(" ", "empty"), ("SCL", "validity mask"), ("2m temp", "letter")]
)
def test_bad_feature_names_are_refused(name: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        canonical_feature(name)


def test_a_feature_listed_twice_under_two_names_is_refused() -> None:
    assert canonical_features(["blue", "ndvi", "VV"]) == ["B02", "NDVI", "VV"]
    with pytest.raises(InputError, match="'B02' \\(B02\\) is listed twice"):
        canonical_features(["blue", "B02"])


def _cube(values: np.ndarray, bands: list[str], chunked: bool = False) -> Cube:
    t, _, h, w = values.shape
    data = xr.DataArray(
        values.astype(np.float32),
        dims=("time", "band", "y", "x"),
        coords={"time": pd.date_range("2024-03-01", periods=t, freq="10D"), "band": bands,
                "y": 5000.0 - 10 * np.arange(h), "x": 300000.0 + 10 * np.arange(w)},
        name="reflectance",
    ).rio.write_crs("EPSG:32631")  # fmt: skip
    valid = xr.DataArray(np.ones((t, h, w), bool), dims=("time", "y", "x"))
    if chunked:
        data, valid = data.chunk({"x": 2}), valid.chunk({"x": 2})
    return Cube(data, valid)


def test_indices_are_their_formulas_of_the_cube_bands() -> None:
    rng = np.random.default_rng(1)
    values = rng.uniform(0.01, 0.6, (3, 4, 2, 3))
    values[0, 2, 0, 0] = values[0, 1, 0, 0] = 0.0  # B08 + B04 = 0: no NDVI
    cube = add_indices(_cube(values, ["B02", "B04", "B08", "B11"]), ["ndvi", "EVI", "NDMI"])
    blue, red, nir, swir = (values[:, i].astype(np.float32) for i in range(4))
    assert cube.bands == ("B02", "B04", "B08", "B11", "NDVI", "EVI", "NDMI")
    got = {name: cube.data.sel(band=name).values for name in ("NDVI", "EVI", "NDMI")}
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got["NDVI"], (nir - red) / (nir + red), rtol=1e-6)
    np.testing.assert_allclose(got["EVI"], 2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1), rtol=1e-5)
    np.testing.assert_allclose(got["NDMI"], (nir - swir) / (nir + swir), rtol=1e-6)
    assert np.isnan(got["NDVI"][0, 0, 0]) and cube.data.dtype == np.float32
    assert cube.attrs["indices_computed"] == ["NDVI", "EVI", "NDMI"]


def test_indices_of_a_lazy_cube_stay_lazy_and_missing_bands_are_named() -> None:
    cube = _cube(np.full((2, 3, 2, 4), 0.2), ["B02", "B04", "B08"], chunked=True)
    with_ndvi = add_indices(cube, ["NDVI"])
    assert with_ndvi.data.chunks is not None
    np.testing.assert_allclose(with_ndvi.data.sel(band="NDVI").values, 0.0)
    with pytest.raises(DataError, match="NDRE .* needs band\\(s\\) B05"):
        add_indices(cube, ["NDRE"])
    with pytest.raises(InputError, match="unknown spectral index 'NDXI'"):
        add_indices(cube, ["NDXI"])


def test_the_bands_a_cube_is_opened_with_and_what_it_cannot_give() -> None:
    assert bands_to_read(["B02", "NDVI", "EVI"]) == ["B02", "B08", "B04"]
    with pytest.raises(DataError, match="feature VV \\(backscatter\\) cannot be read from a Sentinel-2 cube"):
        bands_to_read(["B02", "VV"])


def test_select_features_orders_computes_and_drops() -> None:
    cube = _cube(np.full((2, 3, 2, 2), 0.3), ["B02", "B04", "B08"])
    chosen = select_features(cube, ["NDVI", "B02"])
    assert chosen.bands == ("NDVI", "B02")
    with pytest.raises(DataError, match="lacks B11"):
        select_features(cube, ["B02", "B11"])


def test_describe_features_says_kind_unit_and_formula() -> None:
    entries = describe_features(["B04", "NDVI", "VV", "slope"])
    assert entries[0] == {"name": "B04", "kind": "reflectance", "unit": "reflectance (0–1)"}
    assert entries[1]["formula"] == "(B08 − B04) / (B08 + B04)" and entries[1]["bands"] == ["B08", "B04"]
    assert entries[2]["unit"] == "dB" and entries[3] == {"name": "slope", "kind": "other"}


def test_a_model_with_an_index_gets_it_computed_from_the_cube(tmp_path: Path) -> None:
    write_scene(make_scene(size=16, seed=5), tmp_path)
    loaded = load_artifact(default_model_path())
    features = ["B02", "B03", "B04", "B08", "B11", "NDVI"]  # as many as the packaged model reads
    card = dataclasses.replace(loaded.card, bands=features)
    cube = open_cube(tmp_path / "cube", bands=bands_to_read(features))
    prepared = prepare_cube(card, cube)
    assert list(prepared.bands) == features
    ndvi = prepared.data.sel(band="NDVI").values
    assert np.isfinite(ndvi).any() and np.nanmin(ndvi) >= -1 and np.nanmax(ndvi) <= 1
    with pytest.raises(ModelMismatchError, match="the cube lacks VV"):
        prepare_cube(dataclasses.replace(loaded.card, bands=[*features[:5], "VV"]), cube)
