"""What a source reader is asked for and what it returns: :class:`CubeRequest`, the normalised
selections of :func:`cropstar.data.cube.open_cube` (:func:`make_request` checks them), and
:class:`SourceCube`, the reflectance, SCL and provenance a reader found, before masking."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cropstar.data.bands import DEFAULT_BANDS, SCL, SCL_INVALID, canonical_band
from cropstar.data.clouds import invalid_scl_classes
from cropstar.data.harmonise import Bounds
from cropstar.errors import InputError

#: Spatial chunk size (pixels) of the dask arrays a cube is built from.
DEFAULT_CHUNKS = 512


@dataclass(frozen=True)
class CubeRequest:
    """What :func:`open_cube` was asked for, normalised; the sources read only this."""

    bands: tuple[str, ...] = DEFAULT_BANDS
    time: tuple[pd.Timestamp | None, pd.Timestamp | None] = (None, None)
    bbox: Bounds | None = None
    bbox_crs: Any = None
    resolution: float | None = 10.0
    crs: Any = None
    processing_baseline: str | float | None = None
    boa_offset: float | None = None
    use_scl: bool = True
    mask_snow: bool = False
    dilation: int = 0
    scl_invalid: frozenset[int] = SCL_INVALID
    tile: str | None = None
    chunks: int = DEFAULT_CHUNKS

    def in_time(self, times: Any) -> np.ndarray:
        """Boolean selection of ``times`` inside the requested (inclusive) time range."""
        times = pd.DatetimeIndex(times)
        keep = np.ones(len(times), bool)
        start, end = self.time
        if start is not None:
            keep &= times >= start
        if end is not None:
            keep &= times <= end
        return keep


@dataclass
class SourceCube:
    """What a source reader returns before masking: reflectance ``(time, band, y, x)``, the SCL classes
    ``(time, y, x)`` if the source has them, a validity mask stored in the source (a cropstar cube file),
    and provenance."""

    data: xr.DataArray
    scl: xr.DataArray | None
    valid: xr.DataArray | None
    attrs: dict[str, Any]


def make_request(
    *,
    bands: Sequence[str] | None = None,
    time: tuple[Any, Any] | None = None,
    bbox: Bounds | None = None,
    resolution: float | None = 10,
    bbox_crs: Any = None,
    crs: Any = None,
    processing_baseline: str | float | None = None,
    boa_offset: float | None = None,
    use_scl: bool = True,
    mask_snow: bool = False,
    dilation: int = 0,
    scl_invalid: Iterable[int] = SCL_INVALID,
    tile: str | None = None,
    chunks: int = DEFAULT_CHUNKS,
) -> CubeRequest:
    """Check and normalise :func:`open_cube`'s selections (InputError naming the bad value)."""
    return CubeRequest(
        bands=_canonical_bands(bands),
        time=_time_bounds(time),
        bbox=_bbox(bbox),
        bbox_crs=bbox_crs,
        resolution=_positive("resolution", resolution),
        crs=crs,
        processing_baseline=processing_baseline,
        boa_offset=None if boa_offset is None else float(boa_offset),
        use_scl=bool(use_scl),
        mask_snow=bool(mask_snow),
        dilation=int(_non_negative("dilation", dilation)),
        scl_invalid=invalid_scl_classes(False, scl_invalid),
        tile=tile,
        chunks=int(_positive("chunks", chunks)),
    )


def _canonical_bands(bands: Sequence[str] | None) -> tuple[str, ...]:
    if bands is None:
        return DEFAULT_BANDS
    if isinstance(bands, str):
        bands = [bands]
    out: list[str] = []
    for name in bands:
        band = canonical_band(name)
        if band == SCL:
            raise InputError("SCL is not a reflectance band: it makes the validity mask (use_scl=True)")
        if band in out:
            raise InputError(f"band {name!r} ({band}) is requested twice")
        out.append(band)
    if not out:
        raise InputError("bands is empty: request at least one band")
    return tuple(out)


def _time_bounds(time: tuple[Any, Any] | None) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    if time is None:
        return None, None
    if isinstance(time, (str, bytes)) or len(time) != 2:
        raise InputError(f"time must be (start, end), got {time!r}")
    start, end = (None if t is None else _timestamp(t) for t in time)
    if end is not None and end == end.normalize() and _is_date_only(time[1]):
        end = end + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")  # a date as end: the whole day
    if start is not None and end is not None and start > end:
        raise InputError(f"time range starts after it ends: {time!r}")
    return start, end


def _timestamp(value: Any) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise InputError(f"cannot read {value!r} as a date") from None
    return stamp.tz_convert(None) if stamp.tzinfo is not None else stamp


def _is_date_only(value: Any) -> bool:
    if isinstance(value, str):
        return "T" not in value and ":" not in value
    return isinstance(value, date) and not isinstance(value, datetime)


def _bbox(bbox: Bounds | None) -> Bounds | None:
    if bbox is None:
        return None
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"bbox must be (minx, miny, maxx, maxy) numbers, got {bbox!r}") from None
    if len(values) != 4 or values[0] >= values[2] or values[1] >= values[3]:
        raise InputError(f"bbox must be (minx, miny, maxx, maxy) with min < max, got {bbox!r}")
    return values  # type: ignore[return-value]


def _positive(name: str, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise InputError(f"{name} must be > 0, got {value!r}")
    return None if value is None else float(value)


def _non_negative(name: str, value: float) -> float:
    if value < 0:
        raise InputError(f"{name} must be ≥ 0, got {value!r}")
    return value
