"""Regular time grids: per-period medians of valid observations, linear gap filling and n_valid_obs,
against numpy computed by hand."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from rasterio.transform import from_origin

from cropstar.data.cube import Cube
from cropstar.data.regularise import gap_fill, n_valid_obs, regularise, time_grid
from cropstar.errors import InputError

TIMES = pd.DatetimeIndex(
    [
        "2023-03-02T10:30",
        "2023-03-05T10:30",
        "2023-03-09T10:30",
        "2023-03-25T10:30",
        "2023-04-03T10:30",
        "2023-04-08T10:30",
    ]
)


def make_cube(chunked: bool = True, seed: int = 6) -> tuple[Cube, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 0.6, (len(TIMES), 2, 3, 4)).astype("float32")
    valid = rng.random((len(TIMES), 3, 4)) > 0.35
    valid[:, 0, 0] = False  # a pixel never observed
    valid[:, 0, 1] = [False, False, True, False, False, False]  # one observation only
    values[1, 0, 2, 2] = np.nan
    valid[1, 2, 2] = False  # a no-data value is never valid
    transform = from_origin(600000, 5300040, 10, 10)
    coords = {
        "time": TIMES,
        "band": ["B04", "B08"],
        "y": 5300040 - 5 - 10 * np.arange(3.0),
        "x": 600005 + 10 * np.arange(4.0),
    }
    data = xr.DataArray(values, dims=("time", "band", "y", "x"), coords=coords, name="reflectance")
    mask = xr.DataArray(valid, dims=("time", "y", "x"), coords={k: coords[k] for k in ("time", "y", "x")})
    if chunked:
        data = data.chunk({"time": 1, "band": 1, "y": 2, "x": 2})
        mask = mask.chunk({"time": 1, "y": 2, "x": 2})
    data = data.rio.write_crs("EPSG:32632").rio.write_transform(transform)
    mask = mask.rio.write_crs("EPSG:32632").rio.write_transform(transform)
    return Cube(data, mask, {"source": "test"}), values, valid


def test_time_grids():
    ten = time_grid("10D", "2023-03-02", "2023-04-08T10:30")
    assert list(ten) == list(pd.date_range("2023-03-02", periods=5, freq="10D"))
    monthly = time_grid("MS", "2023-03-02", "2023-04-08")
    assert list(monthly) == [
        pd.Timestamp("2023-03-01"),
        pd.Timestamp("2023-04-01"),
        pd.Timestamp("2023-05-01"),
    ]
    assert list(time_grid("monthly", "2023-03-01", "2023-03-31")) == [
        pd.Timestamp("2023-03-01"),
        pd.Timestamp("2023-04-01"),
    ]
    dekads = time_grid("dekad", "2023-02-15", "2023-03-02")
    assert [t.strftime("%m-%d") for t in dekads] == ["02-11", "02-21", "03-01", "03-11"]
    with pytest.raises(InputError, match="unknown period"):
        time_grid("fortnightish", "2023-01-01", "2023-02-01")


def test_monthly_median_of_valid_observations_by_hand():
    cube, values, valid = make_cube()
    out = regularise(cube, "MS")
    assert out.is_lazy
    assert list(out.times) == [pd.Timestamp("2023-03-01"), pd.Timestamp("2023-04-01")]
    assert out.data.dims == ("time", "band", "y", "x") and out.data.dtype == np.float32
    loaded = out.compute()
    masked = np.where(valid[:, None], values, np.nan)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        march = np.nanmedian(
            masked[:4], axis=0
        )  # four March acquisitions: even counts average the middle two
    with pytest.warns(RuntimeWarning):
        april = np.nanmedian(masked[4:], axis=0)
    np.testing.assert_allclose(loaded.data.values[0], march, rtol=1e-6)
    np.testing.assert_allclose(loaded.data.values[1], april, rtol=1e-6)
    np.testing.assert_array_equal(loaded.valid.values[0], valid[:4].any(axis=0))
    assert np.isnan(loaded.data.values[:, :, 0, 0]).all() and not loaded.valid.values[:, 0, 0].any()
    np.testing.assert_allclose(loaded.data.values[0, :, 0, 1], values[2, :, 0, 1])  # the single observation
    assert out.attrs["regularisation"]["acquisitions_per_period"] == [4, 2]
    assert out.attrs["source"] == "test" and out.crs.to_epsg() == 32632


def test_ten_day_composites_with_an_empty_period():
    cube, values, valid = make_cube()
    out = regularise(cube, "10D", start="2023-03-01", end="2023-04-09").compute()
    assert [t.strftime("%m-%d") for t in out.times] == ["03-01", "03-11", "03-21", "03-31"]
    assert np.isnan(out.data.values[1]).all() and not out.valid.values[1].any()  # 11–20 March: no acquisition
    masked = np.where(valid[:, None], values, np.nan)
    np.testing.assert_allclose(out.data.values[2], masked[3])  # 21–30 March: one acquisition
    assert out.attrs["regularisation"]["acquisitions_per_period"] == [3, 0, 1, 2]


def test_acquisitions_outside_the_grid_are_dropped():
    cube, _values, _valid = make_cube()
    out = regularise(cube, "MS", start="2023-04-01")
    assert len(out.times) == 1 and out.attrs["regularisation"]["acquisitions_dropped"] == 4


def test_gap_fill_is_linear_in_time_with_constant_edges():
    cube, values, valid = make_cube()
    filled = gap_fill(cube)
    assert filled.is_lazy and filled.valid is cube.valid
    got = filled.compute().data.values
    t = ((TIMES - TIMES[0]) / pd.Timedelta(days=1)).to_numpy()
    for b in range(2):
        for r in range(3):
            for c in range(4):
                ok = valid[:, r, c] & np.isfinite(values[:, b, r, c])
                if not ok.any():
                    assert np.isnan(got[:, b, r, c]).all()
                    continue
                expected = np.interp(t, t[ok], values[ok, b, r, c])  # np.interp holds the ends constant
                np.testing.assert_allclose(got[:, b, r, c], expected, rtol=1e-5)
    np.testing.assert_allclose(got[:, 0, 0, 1], values[2, 0, 0, 1])  # one observation fills the series
    assert "linear" in filled.attrs["gap_fill"]


def test_gap_fill_after_regularise_fills_empty_periods():
    cube, _, _ = make_cube()
    out = gap_fill(regularise(cube, "10D", start="2023-03-01", end="2023-04-09")).compute()
    composite = regularise(cube, "10D", start="2023-03-01", end="2023-04-09").compute().data.values
    t = np.array([0.0, 10.0, 20.0, 30.0])
    pixel = composite[:, 1, 2, 3]
    ok = np.isfinite(pixel)
    np.testing.assert_allclose(out.data.values[:, 1, 2, 3], np.interp(t, t[ok], pixel[ok]), rtol=1e-5)
    assert np.isnan(out.data.values[:, :, 0, 0]).all()


def test_n_valid_obs():
    cube, _, valid = make_cube()
    count = n_valid_obs(cube)
    assert count.dims == ("y", "x") and count.dtype == np.int32 and isinstance(count.data, da.Array)
    np.testing.assert_array_equal(count.values, valid.sum(axis=0))
    assert count.values[0, 0] == 0 and count.values[0, 1] == 1
    monthly = n_valid_obs(regularise(cube, "MS"))
    np.testing.assert_array_equal(monthly.values, valid[:4].any(0).astype(int) + valid[4:].any(0))


def test_in_memory_and_dask_cubes_agree():
    lazy, _, _ = make_cube(chunked=True)
    eager, _, _ = make_cube(chunked=False)
    a = gap_fill(regularise(lazy, "10D")).compute()
    b = gap_fill(regularise(eager, "10D")).compute()
    np.testing.assert_array_equal(a.data.values, b.data.values)
    np.testing.assert_array_equal(a.valid.values, b.valid.values)


def test_gap_fill_holds_the_last_value_over_trailing_nan_steps():
    values = np.array([np.nan, 0.2, np.nan, 0.6, np.nan, np.nan], dtype=np.float32)
    valid = np.isfinite(values)
    from cropstar.data.regularise import fill_linear

    got = fill_linear(values, valid, np.arange(6.0))
    np.testing.assert_allclose(got, [0.2, 0.2, 0.4, 0.6, 0.6, 0.6])


def test_composite_condition_is_clear_or_the_most_frequent_reason():
    from cropstar.data.clouds import Condition as C

    cube, _, valid = make_cube(chunked=False)
    condition = np.where(valid, C.CLEAR, C.CLOUD).astype(np.uint8)
    # pixel (2, 3): March 1–10 has snow, cloud, snow → snow; April 1–10 has shadow, cloud → a tie: cloud
    condition[:, 2, 3] = [C.SNOW, C.CLOUD, C.SNOW, C.CLEAR, C.SHADOW, C.CLOUD]
    valid[:, 2, 3] = condition[:, 2, 3] == C.CLEAR
    mask = cube.valid.copy(data=valid)
    cube = Cube(cube.data, mask, cube.attrs, cube.valid.copy(data=condition).rename("condition"))
    out = regularise(cube, "10D", start="2023-03-01", end="2023-04-09").compute()
    assert out.condition is not None and out.condition.dtype == np.uint8
    np.testing.assert_array_equal(out.condition.values == C.CLEAR, out.valid.values)
    np.testing.assert_array_equal(out.condition.values[:, 2, 3], [C.SNOW, C.NO_DATA, C.CLEAR, C.CLOUD])
    assert (out.condition.values[1] == C.NO_DATA).all()  # 11–20 March: no acquisition at all
    assert gap_fill(out).condition is out.condition
    assert regularise(Cube(cube.data, mask, cube.attrs), "10D").condition is None  # reasons unknown
