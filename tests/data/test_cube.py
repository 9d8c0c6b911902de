"""open_cube: both folder layouts, BOA offsets by baseline, DN 0, 20 m → 10 m resampling, SCL masking,
band aliases, selections, laziness, NetCDF/Zarr (round trip and the real WorldCereal cube)."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasters
import xarray as xr

from cropstar.data import harmonise
from cropstar.data.bands import SCL_INVALID
from cropstar.data.cube import Cube, open_cube
from cropstar.errors import DataError, InputError

CRS = "EPSG:32632"
LEFT, TOP = 600000.0, 5300040.0
TIMES = ["20230601T102559", "20230611T102601", "20230701T102559"]
BANDS_10 = ("B02", "B03", "B04", "B08")
BANDS_20 = ("B11", "B12")


def write_raster(
    path: Path,
    array: np.ndarray,
    res: float,
    *,
    crs: str = CRS,
    left: float = LEFT,
    top: float = TOP,
    nodata: float | None = 0,
    tags: dict | None = None,
) -> Path:
    """A one-band GeoTIFF of ``array`` with its upper-left corner at (left, top)."""
    return rasters.write_raster(path, array, res, crs=crs, left=left, top=top, nodata=nodata, tags=tags)


def dn(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(1500, 6000, shape).astype("uint16")


@pytest.fixture
def safe_folder(tmp_path: Path) -> tuple[Path, dict]:
    """3 acquisitions of tile 32UPU: 4 bands at 10 m (16×16), 2 at 20 m (8×8), SCL at 20 m, baseline 05.09."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "scene" / "cube"
    raw: dict = {}
    for ts in TIMES:
        for band in BANDS_10:
            raw[ts, band] = dn(rng, (16, 16))
            write_raster(folder / f"T32UPU_{ts}_{band}_10m.tif", raw[ts, band], 10)
        for band in BANDS_20:
            raw[ts, band] = dn(rng, (8, 8))
            write_raster(folder / f"T32UPU_{ts}_{band}_20m.tif", raw[ts, band], 20)
        raw[ts, "SCL"] = rng.choice(np.array([4, 4, 4, 5, 6, 8, 9, 3, 11], "uint8"), (8, 8))
        write_raster(folder / f"T32UPU_{ts}_SCL_20m.tif", raw[ts, "SCL"], 20)
    (folder / "metadata.json").write_text(json.dumps({"processing_baseline": "05.09", "tile": "32UPU"}))
    return tmp_path / "scene", raw


def date_folder(tmp_path: Path, baseline: str | None, *, names: dict | None = None) -> tuple[Path, dict]:
    """The ``{YYYY-MM-DD}/{band}.tif`` layout: two dates, all six default bands at 10 m (8×8)."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "dates"
    raw = {}
    for day in ("2023-05-02", "2023-05-12"):
        for band in ("B02", "B03", "B04", "B08", "B11", "B12"):
            raw[day, band] = dn(rng, (8, 8))
            name = (names or {}).get(band, band)
            write_raster(folder / day / f"{name}.tif", raw[day, band], 10, left=500000, top=4000000)
    if baseline is not None:
        (folder / "metadata.json").write_text(json.dumps({"processing_baseline": baseline}))
    return folder, raw


def bilinear_10m(array20: np.ndarray) -> np.ndarray:
    """rasterio's reference: a 20 m DN array warped bilinearly onto the 10 m grid (DN 0 = no data)."""
    return rasters.bilinear_upsampled(array20, crs=CRS, left=LEFT, top=TOP)


# ------------------------------------------------------------------------------------------ folders


def test_safe_layout_gives_the_cube_contract(safe_folder):
    folder, raw = safe_folder
    cube = open_cube(folder)
    assert isinstance(cube, Cube)
    assert cube.data.dims == ("time", "band", "y", "x") and cube.data.dtype == np.float32
    assert cube.valid.dims == ("time", "y", "x") and cube.valid.dtype == bool
    assert cube.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert list(cube.times) == [pd.Timestamp(t) for t in TIMES]
    assert cube.data["time"].dtype == np.dtype("datetime64[ns]")
    assert cube.data.shape == (3, 6, 16, 16)
    assert cube.crs.to_epsg() == 32632
    assert tuple(cube.data.rio.transform())[:6] == (10.0, 0.0, LEFT, 0.0, -10.0, TOP)
    np.testing.assert_allclose(cube.data["x"].values[:2], [LEFT + 5, LEFT + 15])
    np.testing.assert_allclose(cube.data["y"].values[:2], [TOP - 5, TOP - 15])
    loaded = cube.compute()
    expected = (raw[TIMES[1], "B04"].astype("float32") - 1000) / 10000  # baseline 05.09 → offset −1000
    np.testing.assert_allclose(loaded.data.sel(band="B04").isel(time=1).values, expected, rtol=1e-6)
    products = cube.attrs["products"]
    assert [p["boa_offset"] for p in products] == [-1000.0] * 3
    assert all(
        p["processing_baseline"] == "05.09" and p["decided_by"].endswith("metadata.json") for p in products
    )
    json.dumps(cube.attrs)  # provenance is plain JSON


def test_open_cube_is_lazy_and_reads_nothing(safe_folder, monkeypatch):
    folder, _ = safe_folder
    reads = []
    original = harmonise.WindowReader.read
    monkeypatch.setattr(
        harmonise.WindowReader, "read", lambda self, window: reads.append(1) or original(self, window)
    )
    cube = open_cube(folder, chunks=8)
    assert isinstance(cube.data.data, da.Array) and isinstance(cube.valid.data, da.Array)
    assert cube.is_lazy and reads == []
    assert cube.data.data.chunksize == (1, 1, 8, 8)
    cube.data.isel(time=0, band=0, y=slice(0, 8), x=slice(0, 8)).compute()
    assert len(reads) == 1  # one chunk → one windowed read


def test_chunked_reads_equal_whole_reads(safe_folder):
    folder, _ = safe_folder
    small = open_cube(folder, chunks=5).compute()  # chunks that cut the 20 m pixels in odd places
    whole = open_cube(folder, chunks=512).compute()
    np.testing.assert_array_equal(small.data.values, whole.data.values)
    np.testing.assert_array_equal(small.valid.values, whole.valid.values)


def test_20m_bands_are_resampled_bilinearly_to_10m(safe_folder):
    folder, raw = safe_folder
    cube = open_cube(folder, bands=["B11"], use_scl=False).compute()
    expected = (bilinear_10m(raw[TIMES[0], "B11"]) - 1000) / 10000
    np.testing.assert_allclose(cube.data.isel(time=0, band=0).values, expected, rtol=1e-6)
    assert cube.attrs["native_resolution"]["B11"] == [20.0]


def test_scl_is_resampled_by_nearest_and_masks_invalid_classes(safe_folder):
    folder, raw = safe_folder
    cube = open_cube(folder).compute()
    for i, ts in enumerate(TIMES):
        scl_valid = ~np.isin(raw[ts, "SCL"], sorted(SCL_INVALID))
        np.testing.assert_array_equal(
            cube.valid.isel(time=i).values, np.kron(scl_valid, np.ones((2, 2), bool))
        )
    assert cube.attrs["scl_masked"] == [0, 1, 2, 3, 8, 9, 10]
    snowy = open_cube(folder, mask_snow=True).compute()
    snow = np.kron(raw[TIMES[0], "SCL"] == 11, np.ones((2, 2), bool))
    assert snow.any() and not snowy.valid.isel(time=0).values[snow].any()
    assert cube.valid.isel(time=0).values[snow].all()
    assert snowy.attrs["scl_masked"] == [0, 1, 2, 3, 8, 9, 10, 11]
    unmasked = open_cube(folder, use_scl=False).compute()
    assert unmasked.valid.values.all() and unmasked.attrs["scl_masked"] is None


def test_scl_dilation_grows_clouds_on_the_10m_grid(safe_folder):
    folder, raw = safe_folder
    cube = open_cube(folder, dilation=1).compute()
    scl = np.kron(raw[TIMES[0], "SCL"], np.ones((2, 2), "uint8"))
    cloud = np.isin(scl, [1, 2, 3, 8, 9, 10])
    grown = cloud.copy()  # the 4-neighbourhood cross, by hand
    grown[1:] |= cloud[:-1]
    grown[:-1] |= cloud[1:]
    grown[:, 1:] |= cloud[:, :-1]
    grown[:, :-1] |= cloud[:, 1:]
    np.testing.assert_array_equal(cube.valid.isel(time=0).values, ~grown)
    assert cube.attrs["dilation_px"] == 1


def test_dn_zero_is_nan_and_invalid(tmp_path):
    folder, raw = date_folder(tmp_path, "05.09")
    raw_b08 = raw["2023-05-12", "B08"]
    raw_b08[2, 3] = 0
    write_raster(folder / "2023-05-12" / "B08.tif", raw_b08, 10, left=500000, top=4000000)
    cube = open_cube(folder).compute()
    assert np.isnan(cube.data.sel(band="B08").isel(time=1).values[2, 3])
    assert not cube.valid.isel(time=1).values[2, 3]
    assert cube.valid.values.sum() == 2 * 64 - 1
    assert not np.isnan(cube.data.sel(band="B02").isel(time=1).values[2, 3])  # other bands keep their values


@pytest.mark.parametrize(("baseline", "offset"), [("04.00", -1000.0), ("02.14", 0.0), ("05.11", -1000.0)])
def test_boa_offset_follows_the_processing_baseline(tmp_path, baseline, offset):
    folder, raw = date_folder(tmp_path, baseline)
    cube = open_cube(folder).compute()
    expected = (raw["2023-05-02", "B03"].astype("float32") + offset) / 10000
    np.testing.assert_allclose(cube.data.sel(band="B03").isel(time=0).values, expected, rtol=1e-6)
    assert {p["boa_offset"] for p in cube.attrs["products"]} == {offset}
    assert {p["processing_baseline"] for p in cube.attrs["products"]} == {baseline}


def test_file_tag_and_arguments_decide_the_offset(tmp_path):
    folder, raw = date_folder(tmp_path, None)
    with pytest.raises(DataError, match=r"unknown processing baseline.*dates"):
        open_cube(folder)
    for band in ("B02", "B03", "B04", "B08", "B11", "B12"):
        for day in ("2023-05-02", "2023-05-12"):
            write_raster(
                folder / day / f"{band}.tif",
                raw[day, band],
                10,
                left=500000,
                top=4000000,
                tags={"PROCESSING_BASELINE": "04.00"},
            )
    tagged = open_cube(folder)
    assert {p["boa_offset"] for p in tagged.attrs["products"]} == {-1000.0}
    assert "PROCESSING_BASELINE" in tagged.attrs["products"][0]["decided_by"]
    forced = open_cube(folder, boa_offset=0).compute()
    np.testing.assert_allclose(
        forced.data.sel(band="B02").isel(time=0).values, raw["2023-05-02", "B02"] / 10000, rtol=1e-6
    )
    assert forced.attrs["products"][0]["decided_by"] == "argument boa_offset"
    by_baseline = open_cube(folder, processing_baseline="02.14")
    assert by_baseline.attrs["products"][0]["boa_offset"] == 0.0


def test_date_folder_layout_with_provider_names_and_aliases(tmp_path):
    folder, raw = date_folder(tmp_path, "02.14", names={"B02": "blue", "B08": "nir", "B11": "B11_20m"})
    cube = open_cube(folder, bands=["nir", "B2", "swir16"]).compute()
    assert cube.bands == ("B08", "B02", "B11")
    np.testing.assert_allclose(
        cube.data.isel(time=1, band=0).values, raw["2023-05-12", "B08"] / 10000, rtol=1e-6
    )
    assert list(cube.times) == [pd.Timestamp("2023-05-02"), pd.Timestamp("2023-05-12")]
    assert cube.attrs["layout"] == ["date_folder"] and cube.attrs["scl"] == "none"
    assert cube.valid.values.all()


def test_missing_band_names_the_band_and_the_source(safe_folder):
    folder, _ = safe_folder
    with pytest.raises(DataError, match=r"band B05 not found in .*scene"):
        open_cube(folder, bands=["B02", "rededge1"])


def test_acquisition_missing_a_band_is_named(safe_folder):
    folder, _ = safe_folder
    next(folder.rglob(f"T32UPU_{TIMES[1]}_B03_10m.tif")).unlink()
    with pytest.raises(DataError, match=r"band B03 missing for acquisition 2023-06-11T10:26:01"):
        open_cube(folder)


def test_time_and_bbox_selection(safe_folder):
    folder, _raw = safe_folder
    cube = open_cube(
        folder, time=("2023-06-05", "2023-06-11"), bbox=(LEFT + 12, TOP - 55, LEFT + 38, TOP - 21)
    )
    assert list(cube.times) == [pd.Timestamp(TIMES[1])]  # a date as end includes that day
    # pixels intersecting the bbox: columns 1..3, rows 2..5
    assert cube.data.shape == (1, 6, 4, 3)
    np.testing.assert_allclose(cube.data["x"].values, [LEFT + 15, LEFT + 25, LEFT + 35])
    np.testing.assert_allclose(cube.data["y"].values, [TOP - 25, TOP - 35, TOP - 45, TOP - 55])
    full = open_cube(folder).compute()
    np.testing.assert_array_equal(
        cube.compute().data.values, full.data.isel(time=[1], y=slice(2, 6), x=slice(1, 4)).values
    )
    assert cube.attrs["time_selection"][0] == "2023-06-05T00:00:00"
    with pytest.raises(DataError, match="time range"):
        open_cube(folder, time=("2024-01-01", None))
    with pytest.raises(DataError, match="does not intersect"):
        open_cube(folder, bbox=(0, 0, 10, 10))


def test_bbox_in_another_crs(safe_folder):
    folder, _ = safe_folder
    from rasterio.warp import transform_bounds

    lonlat = transform_bounds(CRS, "EPSG:4326", LEFT + 20, TOP - 60, LEFT + 60, TOP - 20)
    cube = open_cube(folder, bbox=lonlat, bbox_crs="EPSG:4326")
    left, bottom, right, top = cube.grid.bounds
    assert left <= LEFT + 20 and right >= LEFT + 60 and bottom <= TOP - 60 and top >= TOP - 20
    assert cube.data.sizes["x"] <= 6 and cube.data.sizes["y"] <= 6


def test_resolution_20_and_target_crs(safe_folder):
    folder, raw = safe_folder
    coarse = open_cube(folder, resolution=20, bands=["B11", "B02"], use_scl=False).compute()
    assert coarse.data.shape == (3, 2, 8, 8)
    np.testing.assert_allclose(
        coarse.data.isel(time=0, band=0).values, (raw[TIMES[0], "B11"] - 1000.0) / 10000
    )
    block_mean = raw[TIMES[0], "B02"].reshape(8, 2, 8, 2).astype("float64").mean(axis=(1, 3))
    np.testing.assert_allclose(
        coarse.data.isel(time=0, band=1).values, (block_mean - 1000) / 10000, rtol=1e-5
    )
    warped = open_cube(folder, crs="EPSG:3035", bands=["B02"])
    assert warped.crs.to_epsg() == 3035 and warped.is_lazy
    values = warped.compute().data.values
    assert np.isfinite(values).any() and np.nanmin(values) >= 0.05 and np.nanmax(values) <= 0.5


def test_several_tiles_need_a_choice(safe_folder):
    folder, raw = safe_folder
    write_raster(folder / "other" / f"T31UFU_{TIMES[0]}_B02_10m.tif", raw[TIMES[0], "B02"], 10)
    with pytest.raises(DataError, match="several tiles.*31UFU.*32UPU"):
        open_cube(folder)
    cube = open_cube(folder, tile="T32UPU")
    assert cube.attrs["tile"] == "32UPU" and cube.data.sizes["time"] == 3


def test_given_mask_is_combined(safe_folder):
    folder, _ = safe_folder
    plain = open_cube(folder, use_scl=False)
    mask = xr.zeros_like(plain.valid.compute())
    mask[:, :4, :] = True
    cube = open_cube(folder, use_scl=False, mask=mask).compute()
    np.testing.assert_array_equal(cube.valid.values, mask.values)
    assert cube.attrs["given_mask"]
    with pytest.raises(DataError, match="mask coordinate"):
        open_cube(folder, mask=mask.isel(x=slice(0, 4)))


def test_bad_sources_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found: .*nowhere"):
        open_cube(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Sentinel-2 band rasters in .*empty"):
        open_cube(tmp_path / "empty")
    (tmp_path / "S2A_MSIL2A.SAFE").mkdir()
    with pytest.raises(InputError, match="not a readable Sentinel-2 L2A SAFE product"):
        open_cube(tmp_path / "S2A_MSIL2A.SAFE")
    with pytest.raises(InputError, match="requested twice"):
        open_cube(tmp_path / "empty", bands=["B02", "blue"])
    with pytest.raises(InputError, match="SCL is not a reflectance band"):
        open_cube(tmp_path / "empty", bands=["SCL"])


# ------------------------------------------------------------------------------------------ NetCDF / Zarr


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_cube_round_trips_through_netcdf_and_zarr(safe_folder, tmp_path, fmt):
    folder, _ = safe_folder
    cube = open_cube(folder, dilation=1).compute()
    ds = cube.to_dataset()
    path = tmp_path / ("cube.nc" if fmt == "netcdf" else "cube.zarr")
    if fmt == "netcdf":
        ds.to_netcdf(path, engine="netcdf4")
    else:
        ds.to_zarr(path, consolidated=False)
    back = open_cube(path, resolution=None)
    assert back.is_lazy and back.attrs["source_kind"] == fmt
    back = back.compute()
    assert back.bands == cube.bands and back.crs == cube.crs
    np.testing.assert_array_equal(back.data.values, cube.data.values)
    np.testing.assert_array_equal(back.valid.values, cube.valid.values)  # the stored mask is kept
    assert back.attrs["stored_valid"] and back.attrs["stored_provenance"]["dilation_px"] == 1
    assert set(back.attrs["value_scaling"]["B02"].split()[:1]) == {"reflectance"}


def test_dataset_with_provider_variable_names_and_dn(tmp_path):
    rng = np.random.default_rng(3)
    times = pd.date_range("2021-01-01", periods=3, freq="MS")
    x = 300005.0 + 10 * np.arange(6)
    y = 5000095.0 - 10 * np.arange(5)
    values = {}
    variables = {}
    for name in ("S2-L2A-B02", "S2-L2A-B08", "S1-SIGMA0-VV"):
        values[name] = rng.integers(200, 5000, (3, 5, 6)).astype("uint16")
        variables[name] = (("t", "y", "x"), values[name], {"grid_mapping": "crs"})
    values["S2-L2A-B02"][1] = 65535  # a cloud-gap month, WorldCereal style
    variables["crs"] = ((), np.array(b"", "S1"), {"crs_wkt": rasterio.crs.CRS.from_epsg(32631).to_wkt()})
    ds = xr.Dataset(variables, coords={"t": times, "y": y[::-1], "x": x})  # stored bottom-up
    path = tmp_path / "cube.nc"
    ds.to_netcdf(path, engine="netcdf4")

    cube = open_cube(path, bands=["blue", "nir"], time=("2021-01-01", "2021-02-28"))
    assert cube.bands == ("B02", "B08") and cube.crs.to_epsg() == 32631
    assert cube.data.sizes == {"time": 2, "band": 2, "y": 5, "x": 6}
    assert cube.data["y"].values[0] > cube.data["y"].values[-1]  # north-up
    loaded = cube.compute()
    np.testing.assert_allclose(
        loaded.data.sel(band="B08").isel(time=0).values, values["S2-L2A-B08"][0, ::-1] / 10000, rtol=1e-6
    )
    assert np.isnan(loaded.data.sel(band="B02").isel(time=1).values).all()
    assert loaded.valid.values.sum(axis=(1, 2)).tolist() == [30, 0]
    assert cube.attrs["variables"] == {"B02": "S2-L2A-B02", "B08": "S2-L2A-B08"}
    assert "assumed" in cube.attrs["products"][0]["decided_by"]
    assert (
        open_cube(path, bands=["B08"], processing_baseline="04.00").attrs["products"][0]["boa_offset"]
        == -1000
    )
    with pytest.raises(DataError, match=r"band B11 not found in .*cube\.nc"):
        open_cube(path, bands=["B11"])


@pytest.mark.realdata
def test_real_worldcereal_netcdf(shared_data):
    path = shared_data / "worldcereal" / "worldcereal_preprocessed_inputs.nc"
    if not path.exists():
        pytest.skip(f"{path} not found")
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
    cube = open_cube(path, bands=bands)
    assert cube.is_lazy
    assert cube.data.sizes == {"time": 12, "band": 9, "y": 100, "x": 100}
    assert cube.crs.to_epsg() == 32631
    assert cube.grid.resolution == (10.0, 10.0)
    left, bottom, right, top = cube.grid.bounds
    assert (left, top, right, bottom) == (664000.0, 5612120.0, 665000.0, 5611120.0)
    assert cube.times[0] == pd.Timestamp("2020-11-01") and cube.times[-1] == pd.Timestamp("2021-10-01")
    loaded = cube.compute()
    values = loaded.data.values
    observed = np.isfinite(values)
    assert observed.mean() > 0.8  # two all-65535 (no data) months, a handful of DN 0
    assert not loaded.valid.values[1].any() and not loaded.valid.values[2].any()
    low, high = np.nanpercentile(values, [1, 99])
    assert 0 < low < 0.05 and 0.2 < high < 0.7 and np.nanmax(values) < 2
    assert cube.attrs["products"][0]["boa_offset"] == 0.0


def test_in_memory_dataset_with_bbox_and_a_coarser_grid(safe_folder):
    folder, _ = safe_folder
    cube = open_cube(folder, bands=["B02", "B11"]).compute()
    ds = cube.to_dataset()
    window = open_cube(ds, bands=["B11"], bbox=(LEFT + 12, TOP - 55, LEFT + 38, TOP - 21))
    assert window.attrs["source_kind"] == "xarray" and window.data.shape == (3, 1, 4, 3)
    np.testing.assert_array_equal(
        window.compute().data.values, cube.data.sel(band=["B11"]).isel(y=slice(2, 6), x=slice(1, 4)).values
    )
    coarse = open_cube(ds, bands=["B02"], resolution=20)
    assert (
        coarse.is_lazy
        and coarse.data.shape == (3, 1, 8, 8)
        and coarse.attrs["resampling"].startswith("average")
    )
    block_mean = cube.data.sel(band="B02").values.reshape(3, 8, 2, 8, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(coarse.compute().data.values[:, 0], block_mean, rtol=1e-5)
    np.testing.assert_array_equal(coarse.compute().valid.values, cube.valid.values[:, ::2, ::2])  # nearest
