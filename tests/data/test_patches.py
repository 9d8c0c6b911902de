"""Patch extraction: equality with a naive padded copy, edges, blocks, lazy cubes, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cropstar.data.patches import extract_patches, reflect_indices, values_at
from cropstar.errors import InputError


def naive_patches(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, p: int) -> np.ndarray:
    h = p // 2
    padded = np.pad(data, ((0, 0), (0, 0), (h, h), (h, h)), mode="reflect")
    return np.stack([padded[:, :, r : r + p, c : c + p] for r, c in zip(rows, cols)])


@pytest.fixture
def cube() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 3, 23, 17)).astype(np.float32)


@pytest.mark.parametrize("patch_size", [1, 3, 5])
@pytest.mark.parametrize("block_size", [4, 7, 256])
def test_equals_a_reflect_padded_copy_everywhere(cube: np.ndarray, patch_size: int, block_size: int) -> None:
    rows, cols = np.meshgrid(np.arange(23), np.arange(17), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    order = np.random.default_rng(1).permutation(len(rows))  # output follows the input order
    got = extract_patches(cube, rows[order], cols[order], patch_size, block_size=block_size)
    assert got.shape == (len(rows), 4, 3, patch_size, patch_size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, naive_patches(cube, rows[order], cols[order], patch_size))


def test_centre_pixel_is_the_pixel(cube: np.ndarray) -> None:
    got = extract_patches(cube, np.array([5, 0]), np.array([7, 16]), 3)
    np.testing.assert_array_equal(got[:, :, :, 1, 1], cube[:, :, [5, 0], [7, 16]].transpose(2, 0, 1))


def test_lazy_dataarray_gives_the_same_patches(cube: np.ndarray) -> None:
    lazy = xr.DataArray(da.from_array(cube, chunks=(4, 3, 8, 8)), dims=("time", "band", "y", "x"))
    rows, cols = np.array([0, 22, 11, 3]), np.array([0, 16, 8, 15])
    np.testing.assert_array_equal(
        extract_patches(lazy, rows, cols, 3, block_size=8), naive_patches(cube, rows, cols, 3)
    )
    mask = xr.DataArray(da.from_array(cube[:, 0] > 0, chunks=(4, 8, 8)), dims=("time", "y", "x"))
    got = values_at(mask, rows, cols)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, (cube[:, 0] > 0)[:, rows, cols].T)


def test_reflect_indices_match_numpy_pad() -> None:
    base = np.arange(5)
    np.testing.assert_array_equal(reflect_indices(-3, 8, 5), np.pad(base, 3, mode="reflect"))
    np.testing.assert_array_equal(reflect_indices(-2, 3, 1), np.zeros(5, dtype=int))


def test_errors_name_the_problem(cube: np.ndarray) -> None:
    with pytest.raises(InputError, match="odd"):
        extract_patches(cube, np.array([1]), np.array([1]), 4)
    with pytest.raises(InputError, match=r"pixel \(23, 0\) lies outside the cube of 23 × 17"):
        extract_patches(cube, np.array([23]), np.array([0]), 3)
    with pytest.raises(InputError, match=r"\(T, C, Y, X\)"):
        extract_patches(cube[0], np.array([1]), np.array([1]), 3)
