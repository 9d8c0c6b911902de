"""Harmonisation: DN → reflectance with the BOA offset, offset decisions, target grids, windowed warped
reads against rasterio references, lazy reprojection of cubes."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasters
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject

from cropstar.data.harmonise import (
    Grid,
    WindowReader,
    decide_boa_offset,
    dn_to_reflectance,
    lazy_band,
    reflectance_resampling,
    reproject_cube,
    transform_bbox,
)
from cropstar.errors import DataError

UTM = CRS.from_epsg(32632)


def write_raster(
    path: Path, array: np.ndarray, res: float, left: float = 600000.0, top: float = 5300040.0
) -> Path:
    return rasters.write_raster(path, array, res, crs=UTM, left=left, top=top)


def test_dn_to_reflectance_on_numpy_dask_and_xarray():
    dn = np.array([[0, 1000, 2500], [11000, 65535, 1]], "uint16")
    expected = np.array([[np.nan, 0.0, 0.15], [1.0, np.nan, -0.0999]], "float32")
    out = dn_to_reflectance(dn, -1000, nodata=(0, 65535))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    lazy = dn_to_reflectance(da.from_array(dn, chunks=1), -1000, nodata=(0, 65535))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-6)
    wrapped = dn_to_reflectance(xr.DataArray(dn, dims=("y", "x")), -1000, nodata=(0, 65535))
    np.testing.assert_allclose(wrapped.values, expected, rtol=1e-6)
    np.testing.assert_allclose(dn_to_reflectance(dn, 0)[0, 1:], [0.1, 0.25], rtol=1e-6)  # baseline < 04.00


def test_offset_decision_order_and_unknown_baseline():
    assert decide_boa_offset(found_baseline="05.09", found_by="metadata.json").boa_offset == -1000.0
    assert decide_boa_offset(found_baseline="02.14", found_by="tag").boa_offset == 0.0
    assert decide_boa_offset(found_baseline=4.0, found_by="tag").processing_baseline == "04.00"
    explicit = decide_boa_offset(processing_baseline="02.12", found_baseline="05.09", found_by="tag")
    assert (explicit.boa_offset, explicit.decided_by) == (0.0, "argument processing_baseline")
    forced = decide_boa_offset(boa_offset=-500, processing_baseline="05.09")
    assert (forced.boa_offset, forced.decided_by) == (-500.0, "argument boa_offset")
    assert decide_boa_offset(found_offset=-1000, found_by="BOA_ADD_OFFSET tag").boa_offset == -1000.0
    with pytest.raises(DataError, match="unknown processing baseline for /data/scene"):
        decide_boa_offset(where="/data/scene")
    with pytest.raises(DataError, match="/data/x.*not a number"):
        decide_boa_offset(found_baseline="latest", found_by="tag", where="/data/x")


def test_grid_covering_snaps_outward_on_the_origin():
    grid = Grid.covering((600003.0, 5299001.0, 600041.0, 5299040.0), 10, UTM, origin=(600000.0, 5300040.0))
    assert grid.transform == Affine(10, 0, 600000.0, 0, -10, 5299040.0)
    assert (grid.width, grid.height) == (5, 4)
    assert grid.bounds == (600000.0, 5299000.0, 600050.0, 5299040.0)
    y, x = grid.coords()
    np.testing.assert_allclose(x, 600005.0 + 10 * np.arange(5))
    np.testing.assert_allclose(y, 5299035.0 - 10 * np.arange(4))
    exact = Grid.covering((0.0, 0.0, 40.0, 20.0), 20, UTM)
    assert (exact.width, exact.height) == (2, 1)


def test_grid_crop_keeps_every_intersecting_pixel():
    grid = Grid(UTM, from_origin(0, 100, 10, 10), 10, 10)
    crop = grid.crop((12, 31, 38, 79.5))
    assert crop.transform == from_origin(10, 80, 10, 10)
    assert (crop.width, crop.height) == (3, 5)
    assert grid.crop((-50, -50, 500, 500)) == grid
    with pytest.raises(DataError, match="does not intersect"):
        grid.crop((200, 200, 300, 300))


def test_windowed_bilinear_reads_match_rasterio_reproject(tmp_path):
    rng = np.random.default_rng(0)
    dn20 = rng.integers(1000, 5000, (12, 12)).astype("uint16")
    dn20[4:6, 7:9] = 0  # a no-data hole must not bleed into its neighbours
    path = write_raster(tmp_path / "b11.tif", dn20, 20)
    grid = Grid(UTM, from_origin(600000.0, 5300040.0, 10, 10), 24, 24)
    reference = np.full(grid.shape, np.nan, "float32")
    reproject(
        dn20,
        reference,
        src_transform=from_origin(600000.0, 5300040.0, 20, 20),
        src_crs=UTM,
        dst_transform=grid.transform,
        dst_crs=UTM,
        resampling=Resampling.bilinear,
        src_nodata=0,
        dst_nodata=np.nan,
    )
    lazy = lazy_band(WindowReader(path, grid, Resampling.bilinear, boa_offset=-1000), chunks=7)
    out = lazy.compute()
    np.testing.assert_allclose(out, (reference - 1000) / 10000, rtol=1e-6)
    assert np.isnan(out[8:12, 14:18]).all() and np.isfinite(out).sum() == 24 * 24 - 16
    # an interior value by hand: 10 m pixel (1, 1) sits a quarter of the way between 20 m centres
    a = dn20[:2, :2].astype("float64")
    by_hand = 0.5625 * a[0, 0] + 0.1875 * a[0, 1] + 0.1875 * a[1, 0] + 0.0625 * a[1, 1]
    assert out[1, 1] == pytest.approx((by_hand - 1000) / 10000, rel=1e-6)


def test_aligned_reads_are_plain_windows_with_nodata_outside(tmp_path):
    dn10 = np.arange(1, 65, dtype="uint16").reshape(8, 8) + 1000
    path = write_raster(tmp_path / "b02.tif", dn10, 10)
    grid = Grid(UTM, from_origin(599980.0, 5300040.0, 10, 10), 10, 4)  # 2 pixels west of the file
    out = WindowReader(path, grid, Resampling.bilinear)[:, :]
    assert np.isnan(out[:, :2]).all()
    np.testing.assert_allclose(out[:, 2:], dn10[:4, :] / 10000, rtol=1e-6)
    scl = WindowReader(path, grid, Resampling.nearest, kind="classes")
    assert scl.dtype == np.uint8 and (scl[:, 0:2] == 0).all()  # outside the file: class 0, no data


def test_nearest_for_classes_and_average_when_coarsening(tmp_path):
    scl20 = np.array([[4, 8], [9, 4]], "uint8")
    path = write_raster(tmp_path / "scl.tif", scl20, 20)
    grid = Grid(UTM, from_origin(600000.0, 5300040.0, 10, 10), 4, 4)
    classes = WindowReader(path, grid, Resampling.nearest, kind="classes")[:, :]
    np.testing.assert_array_equal(classes, np.kron(scl20, np.ones((2, 2), "uint8")))
    assert reflectance_resampling(20, 10) == Resampling.bilinear
    assert reflectance_resampling(10, 10) == Resampling.bilinear
    assert reflectance_resampling(10, 20) == Resampling.average


def test_transform_bbox():
    bbox = (600000.0, 5299000.0, 601000.0, 5300000.0)
    assert transform_bbox(bbox, UTM, "EPSG:32632") == bbox
    lon_lat = transform_bbox(bbox, UTM, "EPSG:4326")
    assert 10.3 < lon_lat[0] < lon_lat[2] < 10.4 and 47.8 < lon_lat[1] < lon_lat[3] < 47.9
    back = transform_bbox(lon_lat, "EPSG:4326", UTM)
    assert back[0] <= bbox[0] and back[2] >= bbox[2]  # still covers the original


def test_reproject_cube_is_lazy_per_time_step_and_matches_rasterio():
    rng = np.random.default_rng(4)
    values = rng.uniform(0.01, 0.5, (2, 1, 6, 6)).astype("float32")
    values[1, 0, 2, 2] = np.nan
    src = Grid(UTM, from_origin(600000.0, 5300040.0, 10, 10), 6, 6)
    y, x = src.coords()
    cube = xr.DataArray(
        da.from_array(values, chunks=(1, 1, 6, 6)),
        dims=("time", "band", "y", "x"),
        coords={"time": pd.date_range("2023-01-01", periods=2), "band": ["B02"], "y": y, "x": x},
    ).rio.write_crs(UTM)
    target = Grid(UTM, from_origin(600000.0, 5300040.0, 20, 20), 3, 3)
    out = reproject_cube(cube, target, Resampling.average)
    assert isinstance(out.data, da.Array) and out.shape == (2, 1, 3, 3)
    assert out.rio.crs == UTM and out.rio.transform() == target.transform
    for t in range(2):
        reference = np.full((3, 3), np.nan, "float32")
        reproject(
            values[t, 0],
            reference,
            src_transform=src.transform,
            src_crs=UTM,
            dst_transform=target.transform,
            dst_crs=UTM,
            resampling=Resampling.average,
            src_nodata=np.nan,
            dst_nodata=np.nan,
        )
        np.testing.assert_allclose(out.isel(time=t, band=0).values, reference, rtol=1e-6)
    np.testing.assert_allclose(out.values[0, 0, 0, 0], values[0, 0, :2, :2].mean(), rtol=1e-6)
