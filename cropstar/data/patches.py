"""Patch extraction: P × P neighbourhoods of chosen pixels over all dates and bands → (N, T, C, P, P)
(DESIGN.md "Patch sequences"; the paper's 3 × 3-pixel patches).

The cube is read block by block (a window plus a halo of P // 2 pixels), so a lazy cube is never
loaded whole; inside a block the patches are strided views (``sliding_window_view``) and only the
selected patches are copied. Pixels whose neighbourhood leaves the cube are completed by reflection
(numpy's "reflect": row −1 mirrors row 1).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from cropstar.errors import InputError

Progress = Callable[[int, int], None]


def reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices start..stop−1 into an axis of ``size``, reflected at both ends (numpy "reflect")."""
    if size == 1:
        return np.zeros(stop - start, dtype=np.int64)
    period = 2 * (size - 1)
    idx = np.abs(np.arange(start, stop)) % period
    return np.where(idx >= size, period - idx, idx)


def _read_window(data: xr.DataArray | np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """data[..., rows, cols] for sorted-ish index arrays, reading one contiguous window."""
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if isinstance(data, xr.DataArray):
        window = np.asarray(data.isel({data.dims[-2]: slice(r0, r1), data.dims[-1]: slice(c0, c1)}).values)
    else:
        window = np.asarray(data[..., r0:r1, c0:c1])
    return window[..., rows - r0, :][..., cols - c0]


def extract_patches(
    data: xr.DataArray | np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    patch_size: int = 3,
    *,
    block_size: int = 256,
    dtype: np.dtype | type = np.float32,
    workers: int = 2,
    progress: Progress | None = None,
) -> np.ndarray:
    """Patches (N, T, C, P, P) centred on pixels (rows[i], cols[i]) of ``data`` (T, C, Y, X).

    ``data`` may be a numpy array or a (dask-backed) DataArray with dims ending in (y, x).
    Output order follows the input order. Blocks of ``block_size`` pixels are read and cut by
    ``workers`` threads. ``progress(done_blocks, total_blocks)``.
    """
    if patch_size < 1 or patch_size % 2 == 0:
        raise InputError(f"patch_size must be a positive odd number, got {patch_size}")
    if data.ndim != 4:
        raise InputError(f"patch extraction needs data (T, C, Y, X), got shape {tuple(data.shape)}")
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise InputError(f"rows and cols must be 1-D and equal in length, got {rows.shape} and {cols.shape}")
    height, width = data.shape[-2:]
    outside = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputError(f"pixel ({rows[i]}, {cols[i]}) lies outside the cube of {height} × {width} pixels")
    half = patch_size // 2
    out = np.empty((len(rows), data.shape[0], data.shape[1], patch_size, patch_size), dtype=dtype)
    blocks_per_row = (width + block_size - 1) // block_size
    block_of = (rows // block_size) * blocks_per_row + cols // block_size
    order = np.argsort(block_of, kind="stable")
    starts = np.flatnonzero(np.diff(block_of[order], prepend=-1))
    groups = np.split(order, starts[1:])

    def extract_block(members: np.ndarray) -> None:
        r0 = int(rows[members[0]] // block_size) * block_size
        c0 = int(cols[members[0]] // block_size) * block_size
        r1, c1 = min(r0 + block_size, height), min(c0 + block_size, width)
        window = _read_window(
            data, reflect_indices(r0 - half, r1 + half, height), reflect_indices(c0 - half, c1 + half, width)
        )
        # pixel-major copy of the block, so each selected patch is gathered in one pass
        pixel_major = np.ascontiguousarray(np.moveaxis(window, (2, 3), (0, 1)))  # (y, x, T, C)
        views = sliding_window_view(pixel_major, (patch_size, patch_size), axis=(0, 1))  # (y, x, T, C, P, P)
        out[members] = views[rows[members] - r0, cols[members] - c0]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # numpy copies release the GIL
        for done, _ in enumerate(pool.map(extract_block, groups), start=1):
            if progress is not None:
                progress(done, len(groups))
    return out


def values_at(data: xr.DataArray | np.ndarray, rows: np.ndarray, cols: np.ndarray, **options) -> np.ndarray:
    """The centre pixel's series of a (T, Y, X) layer (e.g. the validity mask): (N, T)."""
    stacked = data.expand_dims("band", axis=1) if isinstance(data, xr.DataArray) else np.asarray(data)[:, None]
    return extract_patches(stacked, rows, cols, 1, dtype=stacked.dtype, **options)[:, :, 0, 0, 0]
