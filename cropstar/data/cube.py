"""The Sentinel-2 cube (docs/data-formats.md, "Cube"): float32 surface reflectance ``(time, band, y, x)``
with a boolean validity mask ``(time, y, x)`` and provenance, opened lazily from a folder of per-date
GeoTIFF/COG band files or a NetCDF / Zarr cube by :func:`open_cube`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from cropstar.data.bands import SCL_INVALID
from cropstar.data.clouds import Condition, invalid_scl_classes, observation_condition
from cropstar.data.harmonise import Bounds, Grid, grid_of_dataarray, json_safe
from cropstar.data.sources import open_source
from cropstar.data.sources.request import DEFAULT_CHUNKS, make_request
from cropstar.errors import DataError


@dataclass
class Cube:
    """Sentinel-2 L2A surface reflectance with its validity mask.

    ``data``: ``(time, band, y, x)`` float32 reflectance (0–1; NaN = no data: DN 0, a file's nodata,
    outside the scene), named ``reflectance``; CRS/transform through rioxarray. Cloudy observations keep
    their reflectance: ``valid`` says which to use.
    ``valid``: ``(time, y, x)`` bool, True = a usable observation (every band observed and, where SCL
    or a mask was used, clear).
    ``attrs``: provenance (JSON types): source, layout, processing baselines and BOA offsets applied,
    SCL classes masked, resampling, selections.
    ``condition``: ``(time, y, x)`` uint8 :class:`~cropstar.data.clouds.Condition` of each observation
    (clear, no data, cloud, shadow, snow, unobserved), ``valid`` where it is CLEAR; None when the
    reasons are unknown (:attr:`conditions` then says UNOBSERVED for every invalid observation).
    """

    data: xr.DataArray
    valid: xr.DataArray
    attrs: dict[str, Any] = field(default_factory=dict)
    condition: xr.DataArray | None = None

    def __post_init__(self) -> None:
        if tuple(self.data.dims) != ("time", "band", "y", "x"):
            raise DataError(f"cube data must have dims ('time', 'band', 'y', 'x'), got {self.data.dims}")
        if tuple(self.valid.dims) != ("time", "y", "x"):
            raise DataError(f"cube valid mask must have dims ('time', 'y', 'x'), got {self.valid.dims}")
        if self.data.dtype != np.float32:
            raise DataError(f"cube data must be float32 reflectance, got {self.data.dtype}")
        if self.valid.dtype != bool:
            raise DataError(f"cube valid mask must be boolean, got {self.valid.dtype}")
        if self.condition is not None and (
            tuple(self.condition.dims) != ("time", "y", "x") or self.condition.dtype != np.uint8
        ):
            raise DataError(
                f"cube condition must be uint8 ('time', 'y', 'x'), got {self.condition.dtype} {self.condition.dims}"
            )
        for dim in ("time", "y", "x"):
            if self.data.sizes[dim] != self.valid.sizes[dim]:
                raise DataError(
                    f"cube data and valid mask differ along {dim!r}: "
                    f"{self.data.sizes[dim]} vs {self.valid.sizes[dim]}"
                )

    @property
    def bands(self) -> tuple[str, ...]:
        """Canonical band names in the cube's band order."""
        return tuple(str(b) for b in self.data["band"].values)

    @property
    def times(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.data["time"].values)

    @property
    def crs(self) -> Any:
        """The cube's CRS (rasterio CRS)."""
        return self.data.rio.crs

    @property
    def conditions(self) -> xr.DataArray:
        """``condition``, or where it is unknown: CLEAR on valid observations, UNOBSERVED elsewhere."""
        if self.condition is not None:
            return self.condition
        return (
            xr.where(self.valid, np.uint8(Condition.CLEAR), np.uint8(Condition.UNOBSERVED))
            .astype(np.uint8)
            .rename("condition")
        )

    @property
    def grid(self) -> Grid:
        """CRS, transform and size of the cube's pixel grid."""
        return grid_of_dataarray(self.data)

    @property
    def is_lazy(self) -> bool:
        """True when both arrays are dask-backed (nothing read yet)."""
        return self.data.chunks is not None and self.valid.chunks is not None

    def isel(self, **indexers: Any) -> Cube:
        """Positional selection along ``time``, ``band``, ``y``, ``x`` (band is ignored for ``valid``)."""
        valid_indexers = {k: v for k, v in indexers.items() if k != "band"}
        condition = None if self.condition is None else self.condition.isel(**valid_indexers)
        return Cube(
            self.data.isel(**indexers), self.valid.isel(**valid_indexers), dict(self.attrs), condition
        )

    def compute(self) -> Cube:
        """The same cube with both arrays loaded into memory."""
        data, valid, condition = dask.compute(self.data, self.valid, self.condition)  # shared reads once
        return Cube(data, valid, dict(self.attrs), condition)

    def to_dataset(self) -> xr.Dataset:
        """An ``xarray.Dataset`` (``reflectance``, ``valid``; provenance as JSON in the attribute
        ``cropstar_cube``) that :func:`open_cube` reads back from NetCDF or Zarr."""
        data = self.data.rename("reflectance")
        data.attrs = {**data.attrs, "units": "1", "long_name": "surface reflectance"}
        ds = xr.Dataset({"reflectance": data, "valid": self.valid.rename("valid")})
        ds.attrs["cropstar_cube"] = json.dumps(json_safe(self.attrs))
        return ds


def open_cube(
    source: str | Path | xr.Dataset | xr.DataArray,
    bands: Sequence[str] | None = None,
    time: tuple[Any, Any] | None = None,
    bbox: Bounds | None = None,
    resolution: float | None = 10,
    *,
    bbox_crs: Any = None,
    crs: Any = None,
    processing_baseline: str | float | None = None,
    boa_offset: float | None = None,
    use_scl: bool = True,
    mask_snow: bool = False,
    dilation: int = 0,
    scl_invalid: Iterable[int] = SCL_INVALID,
    mask: xr.DataArray | None = None,
    tile: str | None = None,
    chunks: int = DEFAULT_CHUNKS,
) -> Cube:
    """Open a Sentinel-2 L2A time series as a lazy (dask-backed) :class:`Cube`.

    source: a folder of per-date band rasters (``T{tile}_{YYYYMMDDTHHMMSS}_{band}_{res}m.tif`` or
        ``{YYYY-MM-DD}/{band}.tif``, searched recursively); an unzipped Sentinel-2 L2A ``….SAFE`` product or
        a folder of them (JP2 bands, offsets from each ``MTD_MSIL2A.xml``, see
        :mod:`cropstar.data.sources.safe`); tile folders in the AWS ``sentinel-s2-l2a`` bucket layout
        (``metadata.xml``, ``tileInfo.json``, ``R10m/B04.jp2`` …, see :mod:`cropstar.data.sources.aws_tile`);
        a STAC ItemCollection/Catalog ``.json`` file or a ``pystac.ItemCollection`` (one asset per band, see
        :mod:`cropstar.data.sources.stac`); a NetCDF file, a Zarr store, or an in-memory ``xarray.Dataset``.
    bands: band names or provider aliases (``blue``, ``B2``, ``S2-L2A-B02`` …), default
        ``DEFAULT_BANDS``; a band the source lacks raises DataError naming it.
    time: ``(start, end)``, inclusive; either may be None; a date without a time of day as ``end``
        includes that whole day.
    bbox: ``(minx, miny, maxx, maxy)`` in the cube's CRS, or in ``bbox_crs``; every pixel that
        intersects it is kept.
    resolution: target pixel size in the cube CRS's units (10 m default; None keeps the source's finest).
        20 m bands are resampled bilinearly (area average when coarsening), SCL by nearest neighbour.
    crs: target CRS (default: the source's; the first file's for folders whose files differ).
    processing_baseline / boa_offset: override the L2A BOA offset otherwise decided from the product's
        metadata (MTD_MSIL2A.xml, STAC item properties, metadata.json, file tags or file attributes).
    use_scl, mask_snow, dilation, scl_invalid: SCL masking (classes 0, 1, 2, 3, 8, 9, 10 invalid; 11 with
        ``mask_snow``; cloud classes grown by ``dilation`` pixels).
    mask: a boolean ``(time, y, x)`` or ``(y, x)`` DataArray on the returned cube's grid, True = valid,
        combined with the rest.
    tile: the tile to read where a folder holds several.
    chunks: spatial dask chunk size in pixels.

    Raises InputError for a missing or unreadable source (naming it), DataError for unusable content
    (a missing band, an unknown processing baseline, an empty selection).
    """
    request = make_request(
        bands=bands,
        time=time,
        bbox=bbox,
        resolution=resolution,
        bbox_crs=bbox_crs,
        crs=crs,
        processing_baseline=processing_baseline,
        boa_offset=boa_offset,
        use_scl=use_scl,
        mask_snow=mask_snow,
        dilation=dilation,
        scl_invalid=scl_invalid,
        tile=tile,
        chunks=chunks,
    )
    found = open_source(source, request)
    scl = found.scl if request.use_scl else None
    condition = observation_condition(
        found.data,
        scl=scl,
        mask=mask,
        stored_valid=found.valid,
        mask_snow=request.mask_snow,
        dilation=request.dilation,
        invalid=request.scl_invalid,
    )
    crs, transform = found.data.rio.crs, found.data.rio.transform()
    condition = condition.rio.write_crs(crs).rio.write_transform(transform)
    valid = (condition == Condition.CLEAR).rename("valid").rio.write_crs(crs).rio.write_transform(transform)
    attrs = dict(found.attrs)
    attrs.update(
        bands=list(request.bands),
        time_selection=[None if t is None else t.isoformat() for t in request.time],
        bbox=None if request.bbox is None else list(request.bbox),
        bbox_crs=None if request.bbox_crs is None else str(request.bbox_crs),
        scl_masked=(
            sorted(invalid_scl_classes(request.mask_snow, request.scl_invalid)) if scl is not None else None
        ),
        dilation_px=request.dilation if scl is not None else 0,
        given_mask=mask is not None,
    )
    return Cube(found.data.rename("reflectance"), valid, json_safe(attrs), condition)
