"""SCL masking and dilation, against masks written out by hand."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cropstar.data.clouds import (
    Condition,
    dilate,
    disk,
    given_mask,
    invalid_scl_classes,
    observation_condition,
    scl_condition,
    scl_validity,
    validity,
)
from cropstar.errors import DataError, InputError


def test_every_scl_class():
    scl = np.arange(12, dtype="uint8").reshape(1, 12)
    expected = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1]], bool)  # 4, 5, 6, 7 and snow (11) valid
    np.testing.assert_array_equal(scl_validity(scl), expected)
    expected_snow = expected.copy()
    expected_snow[0, 11] = False
    np.testing.assert_array_equal(scl_validity(scl, mask_snow=True), expected_snow)
    assert invalid_scl_classes() == frozenset({0, 1, 2, 3, 8, 9, 10})
    np.testing.assert_array_equal(scl_validity(scl, invalid=[9])[0], np.arange(12) != 9)
    with pytest.raises(InputError, match="0–11"):
        invalid_scl_classes(invalid=[12])


def test_disk_structuring_elements():
    np.testing.assert_array_equal(disk(0), [[True]])
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )


def test_dilation_by_hand_including_the_border():
    scl = np.full((6, 7), 4, "uint8")
    scl[2, 3] = 9  # a cloud
    scl[0, 6] = 3  # a shadow in the corner
    scl[5, 0] = 0  # no data: not grown
    expected = np.ones((6, 7), bool)
    for r, c in [(2, 3), (1, 3), (3, 3), (2, 2), (2, 4), (0, 6), (1, 6), (0, 5), (5, 0)]:
        expected[r, c] = False
    np.testing.assert_array_equal(scl_validity(scl, dilation=1), expected)
    grown2 = ~scl_validity(scl, dilation=2)
    assert grown2[0, 3] and grown2[2, 1] and grown2[3, 4] and not grown2[0, 2] and not grown2[4, 1]
    assert grown2.sum() == 13 + 6 + 1  # a full radius-2 disk, a clipped corner disk, the no-data pixel


def test_dask_dilation_matches_numpy_across_chunks():
    rng = np.random.default_rng(5)
    scl = rng.choice(np.array([4, 4, 4, 4, 5, 8, 9, 0], "uint8"), (3, 23, 19))
    eager = scl_validity(scl, dilation=2, mask_snow=True)
    lazy = scl_validity(da.from_array(scl, chunks=(1, 5, 6)), dilation=2, mask_snow=True)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), eager)
    np.testing.assert_array_equal(dilate(np.zeros((4, 4), bool), 3), np.zeros((4, 4), bool))
    with pytest.raises(InputError):
        dilate(np.zeros((4, 4), bool), -1)


def cube_parts():
    times = pd.date_range("2023-01-01", periods=2)
    coords = {"time": times, "y": [15.0, 5.0], "x": [5.0, 15.0]}
    data = np.full((2, 2, 2, 2), 0.2, "float32")
    data[0, 1, 0, 0] = np.nan  # one band missing → invalid
    data_array = xr.DataArray(
        data, dims=("time", "band", "y", "x"), coords={**coords, "band": ["B02", "B08"]}
    )
    scl = xr.DataArray(
        np.array([[[4, 4], [4, 8]], [[4, 11], [4, 4]]], "uint8"), dims=("time", "y", "x"), coords=coords
    )
    return data_array, scl, coords


def test_validity_combines_bands_scl_and_a_given_mask():
    data, scl, coords = cube_parts()
    valid = validity(data, scl=scl)
    np.testing.assert_array_equal(valid.values, [[[0, 1], [1, 0]], [[1, 1], [1, 1]]])
    valid = validity(data, scl=scl, mask_snow=True)
    assert not valid.values[1, 0, 1]
    mask = xr.DataArray(
        np.array([[True, False], [True, True]]), dims=("y", "x"), coords={"y": coords["y"], "x": coords["x"]}
    )
    valid = validity(data, scl=scl, mask=mask)
    np.testing.assert_array_equal(valid.values, [[[0, 0], [1, 0]], [[1, 0], [1, 1]]])
    assert valid.dims == ("time", "y", "x") and valid.dtype == bool


def test_given_mask_must_match():
    data, _, _ = cube_parts()
    like = data.notnull().all("band")
    with pytest.raises(DataError, match="boolean"):
        given_mask(like.astype("uint8"), like)
    with pytest.raises(DataError, match="coordinate 'x'"):
        given_mask(like.isel(x=[0]), like)
    with pytest.raises(DataError, match="dims"):
        given_mask(like.expand_dims(band=["B02"]), like)


def test_every_scl_class_has_its_condition():
    scl = np.arange(12, dtype="uint8").reshape(1, 12)
    C = Condition
    expected = [C.NO_DATA, C.NO_DATA, C.SHADOW, C.SHADOW, 0, 0, 0, 0, C.CLOUD, C.CLOUD, C.CLOUD, 0]
    np.testing.assert_array_equal(scl_condition(scl)[0], expected)
    np.testing.assert_array_equal(scl_condition(scl, mask_snow=True)[0], expected[:11] + [C.SNOW])
    # a class the user marks invalid that says nothing about clouds: unobserved
    np.testing.assert_array_equal(scl_condition(scl, invalid=[7, 9])[0], [0] * 7 + [C.UNOBSERVED, 0, C.CLOUD, 0, 0])
    assert scl_condition(scl).dtype == np.uint8


def test_the_dilation_buffer_is_cloud_and_keeps_the_core_classes():
    scl = np.full((1, 5, 5), 4, np.uint8)
    scl[0, 2, 2] = 3  # a shadow pixel, grown by one pixel
    scl[0, 0, 0] = 0  # no data is not grown
    condition = scl_condition(scl, dilation=1)[0]
    assert condition[2, 2] == Condition.SHADOW and condition[0, 0] == Condition.NO_DATA
    assert condition[1, 2] == condition[2, 1] == condition[3, 2] == condition[2, 3] == Condition.CLOUD
    assert condition[0, 1] == condition[1, 1] == Condition.CLEAR
    np.testing.assert_array_equal(scl_validity(scl, dilation=1)[0], condition == Condition.CLEAR)


def test_observation_condition_takes_the_first_reason_that_applies():
    data, scl, coords = cube_parts()
    mask = xr.DataArray(np.array([[True, False], [False, True]]), dims=("y", "x"),
                        coords={"y": coords["y"], "x": coords["x"]})
    stored = xr.DataArray(np.array([[[True, True], [True, False]], [[False, True], [False, True]]]),
                          dims=("time", "y", "x"), coords=coords)
    condition = observation_condition(data, scl=scl, mask=mask, stored_valid=stored, mask_snow=True).values
    valid = validity(data, scl=scl, mask=mask, mask_snow=True).values
    np.testing.assert_array_equal(condition == Condition.CLEAR, valid & stored.values)
    for t, y, x in np.ndindex(condition.shape):
        if np.isnan(data.values[t, :, y, x]).any():
            expected = Condition.NO_DATA
        elif scl.values[t, y, x] in (8, 9, 10):
            expected = Condition.CLOUD
        elif scl.values[t, y, x] == 11:
            expected = Condition.SNOW
        elif not mask.values[y, x]:
            expected = Condition.CLOUD  # a given mask is a cloud mask
        elif not stored.values[t, y, x]:
            expected = Condition.UNOBSERVED
        else:
            expected = Condition.CLEAR
        assert condition[t, y, x] == expected, (t, y, x)
    assert set(np.unique(condition)) == set(Condition) - {Condition.SHADOW}  # every rule was exercised
