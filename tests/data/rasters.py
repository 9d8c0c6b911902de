"""Tiny geo-referenced rasters for the data tests (imported by the test modules of this folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject


def write_raster(
    path: Path,
    array: np.ndarray,
    res: float,
    *,
    crs: Any,
    left: float,
    top: float,
    nodata: float | None = 0,
    tags: dict | None = None,
    driver: str = "GTiff",
    **creation: Any,
) -> Path:
    """A one-band raster of ``array`` with its upper-left corner at (left, top) and square pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver=driver, width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype,
        crs=crs, transform=from_origin(left, top, res, res), nodata=nodata, **creation,
    ) as dst:
        dst.write(array, 1)
        if tags:
            dst.update_tags(**tags)
    return path


def bilinear_upsampled(array: np.ndarray, *, crs: Any, left: float, top: float, res: float = 20.0) -> np.ndarray:
    """rasterio's reference: an array at ``res`` warped bilinearly onto the grid of half that pixel size
    (DN 0 = no data, NaN out)."""
    out = np.full((array.shape[0] * 2, array.shape[1] * 2), np.nan, "float32")
    reproject(
        array, out, src_transform=from_origin(left, top, res, res), src_crs=crs,
        dst_transform=from_origin(left, top, res / 2, res / 2), dst_crs=crs,
        resampling=Resampling.bilinear, src_nodata=0, dst_nodata=np.nan,
    )
    return out
