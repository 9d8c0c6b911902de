"""Cloud and validity masks (DESIGN.md, "Conventions": Clouds): Scene Classification (SCL) classes
0, 1, 2, 3, 8, 9, 10 are invalid (11 snow optional), optionally dilated by a few pixels; a given mask
can replace or add to it. True = valid observation throughout.

Besides valid / not valid, each observation gets its :class:`Condition` — clear, no data, cloud,
cloud shadow, snow, or unobserved for a reason the source does not say — so per-time-step labels can
mark cloud, snow and no-data steps as the paper's task A does.

All functions accept numpy, dask or xarray arrays and stay lazy on dask (dilation through
``map_overlap`` with a halo of the dilation radius).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from cropstar.data.bands import SCL_INVALID, SCL_SNOW
from cropstar.errors import DataError, InputError


class Condition(IntEnum):
    """Why an observation is (not) usable; stored as uint8. CLEAR is the only valid condition."""

    CLEAR = 0
    NO_DATA = 1  #: reflectance missing (DN 0, outside the swath), SCL 0 / 1, or no acquisition
    CLOUD = 2  #: SCL 8, 9, 10, the dilation buffer around clouds, or a given (cloud) mask
    SHADOW = 3  #: SCL 2 (dark area / topographic shadow) and 3 (cloud shadow)
    SNOW = 4  #: SCL 11, when snow is masked
    UNOBSERVED = 5  #: invalid for a reason the source does not record (a stored mask, other classes)


#: The invalid SCL classes and the condition each stands for (other classes a user marks invalid:
#: UNOBSERVED).
SCL_CONDITION: dict[int, Condition] = {
    0: Condition.NO_DATA,
    1: Condition.NO_DATA,
    2: Condition.SHADOW,
    3: Condition.SHADOW,
    8: Condition.CLOUD,
    9: Condition.CLOUD,
    10: Condition.CLOUD,
    11: Condition.SNOW,
}
#: Which condition a composite period without a clear observation takes when its acquisitions tie:
#: the first of these among the most frequent (snow and cloud say most about the scene).
CONDITION_PRIORITY: tuple[Condition, ...] = (
    Condition.SNOW,
    Condition.CLOUD,
    Condition.SHADOW,
    Condition.UNOBSERVED,
    Condition.NO_DATA,
)

#: SCL classes that dilation grows: every invalid class except 0 (no data is not a cloud; growing it
#: would only eat valid pixels along the swath edge).
NOT_DILATED: frozenset[int] = frozenset({0})


def invalid_scl_classes(mask_snow: bool = False, invalid: Iterable[int] = SCL_INVALID) -> frozenset[int]:
    """The SCL classes treated as invalid: ``invalid`` (default 0, 1, 2, 3, 8, 9, 10), plus 11 (snow)
    when ``mask_snow``."""
    classes = frozenset(int(c) for c in invalid)
    bad = [c for c in classes if not 0 <= c <= 11]
    if bad:
        raise InputError(f"SCL classes must be 0–11, got {sorted(bad)}")
    return classes | {SCL_SNOW} if mask_snow else classes


def disk(radius: int) -> np.ndarray:
    """The structuring element of a dilation by ``radius`` pixels: all offsets within Euclidean distance
    ``radius`` (radius 1 → the 4-neighbourhood cross, 2 → a 5×5 disk without its corners)."""
    if radius < 0:
        raise InputError(f"dilation radius must be ≥ 0 pixels, got {radius}")
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2


def dilate(invalid: Any, pixels: int) -> Any:
    """Grow the True region of ``invalid`` (…, y, x) by ``pixels`` (a :func:`disk`) in the last two axes,
    each 2-D slice on its own; pixels outside the array count as not invalid. Lazy on dask arrays."""
    if pixels < 0:
        raise InputError(f"dilation must be ≥ 0 pixels, got {pixels}")
    if pixels == 0:
        return invalid
    if isinstance(invalid, xr.DataArray):
        return invalid.copy(data=dilate(invalid.data, pixels))
    structure = disk(pixels).reshape((1,) * (invalid.ndim - 2) + (2 * pixels + 1,) * 2)

    def block(values: np.ndarray) -> np.ndarray:
        return ndimage.binary_dilation(values.astype(bool), structure=structure, border_value=0)

    if isinstance(invalid, da.Array):
        depth = {invalid.ndim - 2: pixels, invalid.ndim - 1: pixels}
        return invalid.astype(bool).map_overlap(block, depth=depth, boundary="none", dtype=bool)
    return block(np.asarray(invalid))


def scl_condition(
    scl: Any,
    *,
    mask_snow: bool = False,
    dilation: int = 0,
    invalid: Iterable[int] = SCL_INVALID,
) -> Any:
    """The :class:`Condition` (uint8, …, y, x) of each SCL pixel: CLEAR unless its class is invalid
    (:func:`invalid_scl_classes`; mapped by :data:`SCL_CONDITION`); with ``dilation`` > 0 the invalid
    classes other than 0 (no data) are grown by that many pixels (:func:`disk`) and the buffer they
    add is CLOUD."""
    classes = invalid_scl_classes(mask_snow, invalid)
    values = scl.data if isinstance(scl, xr.DataArray) else scl
    lib = da if isinstance(values, da.Array) else np
    grown = dilate(lib.isin(values, sorted(classes - NOT_DILATED)), dilation)
    condition = lib.where(grown, np.uint8(Condition.CLOUD), np.uint8(Condition.CLEAR))
    for code in Condition:
        members = sorted(c for c in classes if SCL_CONDITION.get(c, Condition.UNOBSERVED) == code)
        if members:
            condition = lib.where(lib.isin(values, members), np.uint8(code), condition)
    condition = condition.astype(np.uint8)
    if isinstance(scl, xr.DataArray):
        return xr.DataArray(condition, dims=scl.dims, coords=scl.coords, name="condition")
    return condition


def scl_validity(
    scl: Any,
    *,
    mask_snow: bool = False,
    dilation: int = 0,
    invalid: Iterable[int] = SCL_INVALID,
) -> Any:
    """Validity (True = valid) from SCL classes (…, y, x): :func:`scl_condition` is CLEAR."""
    condition = scl_condition(scl, mask_snow=mask_snow, dilation=dilation, invalid=invalid)
    valid = condition == Condition.CLEAR
    return valid.rename("valid") if isinstance(valid, xr.DataArray) else valid


def observation_condition(
    data: xr.DataArray,
    *,
    scl: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    stored_valid: xr.DataArray | None = None,
    mask_snow: bool = False,
    dilation: int = 0,
    invalid: Iterable[int] = SCL_INVALID,
) -> xr.DataArray:
    """The :class:`Condition` ``(time, y, x)`` uint8 of each observation of a reflectance cube ``data``
    ``(time, band, y, x)``, the first that applies of: NO_DATA where a band is missing (NaN); the SCL
    pixel's condition (when ``scl`` is given); CLOUD where ``mask`` (a boolean ``(time, y, x)`` or
    ``(y, x)`` DataArray on the cube's coordinates, True = valid) is False — a given mask is read as a
    cloud mask; UNOBSERVED where ``stored_valid`` (a source's own mask) is False; else CLEAR."""
    clear = np.uint8(Condition.CLEAR)
    condition = xr.zeros_like(data.isel(band=0, drop=True), dtype=np.uint8)
    if stored_valid is not None:
        condition = condition.where(stored_valid, np.uint8(Condition.UNOBSERVED))
    if mask is not None:
        condition = condition.where(given_mask(mask, condition), np.uint8(Condition.CLOUD))
    if scl is not None:
        from_scl = scl_condition(scl, mask_snow=mask_snow, dilation=dilation, invalid=invalid)
        condition = from_scl.where(from_scl != clear, condition)
    condition = condition.where(data.notnull().all("band"), np.uint8(Condition.NO_DATA))
    return condition.astype(np.uint8).rename("condition").transpose("time", "y", "x")


def validity(
    data: xr.DataArray,
    *,
    scl: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    mask_snow: bool = False,
    dilation: int = 0,
    invalid: Iterable[int] = SCL_INVALID,
) -> xr.DataArray:
    """The validity mask ``(time, y, x)`` of a reflectance cube ``data`` ``(time, band, y, x)``: every band
    observed (not NaN), the SCL class valid (when ``scl`` is given) and ``mask`` True (when given;
    see :func:`observation_condition`)."""
    condition = observation_condition(
        data, scl=scl, mask=mask, mask_snow=mask_snow, dilation=dilation, invalid=invalid
    )
    return (condition == Condition.CLEAR).rename("valid")


def given_mask(mask: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    """A user's validity mask (True = valid), checked against the cube's ``(time, y, x)`` coordinates.

    Raises DataError when its dims or coordinates do not match the cube's (no silent re-alignment).
    """
    if not isinstance(mask, xr.DataArray):
        raise InputError(f"mask must be an xarray.DataArray (True = valid), got {type(mask).__name__}")
    if mask.dtype != bool:
        raise DataError(f"mask must be boolean (True = valid), got dtype {mask.dtype}")
    extra = set(mask.dims) - {"time", "y", "x"}
    if extra:
        raise DataError(f"mask has dims {mask.dims}; expected a subset of ('time', 'y', 'x')")
    for dim in mask.dims:
        if mask.sizes[dim] != like.sizes[dim] or (
            dim in mask.coords and not np.array_equal(mask[dim].values, like[dim].values)
        ):
            raise DataError(
                f"mask coordinate {dim!r} does not match the cube's ({mask.sizes[dim]} vs {like.sizes[dim]})"
            )
    return mask.drop_vars([c for c in mask.coords if c not in mask.dims], errors="ignore").assign_coords(
        {dim: like[dim] for dim in mask.dims}
    )
