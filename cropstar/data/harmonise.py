"""Radiometric and geometric harmonisation of Sentinel-2 L2A data (DESIGN.md, "Conventions"): DN → surface
reflectance with the BOA offset of the processing baseline (DN 0 = no data), and every band onto one
target grid (one CRS, one resolution; bilinear for reflectance, nearest for SCL classes).

Lazy throughout: :class:`WindowReader` reads one target-grid window of one file per dask chunk (through a
GDAL ``WarpedVRT`` when the file's grid differs), and :func:`reproject_cube` warps one time step per task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rasterio
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from cropstar.data.bands import QUANTIFICATION
from cropstar.data.bands import boa_offset as boa_offset_of_baseline
from cropstar.errors import DataError, InputError

Bounds = tuple[float, float, float, float]

#: Values that mark no data in L2A DN rasters besides a file's own nodata value (DN 0, ESA convention).
DN_NODATA = 0


# ---------------------------------------------------------------------------------------------- radiometry


def dn_to_reflectance(dn: Any, boa_offset: float, nodata: Sequence[float] = (DN_NODATA,)) -> Any:
    """Surface reflectance ``(DN + boa_offset) / 10000`` as float32, NaN where ``dn`` is no data.

    Works on numpy, dask and xarray arrays alike (elementwise, stays lazy). ``nodata`` lists the DN
    values that mean "no observation" (DN 0 always; a file's own nodata value, 65535 in WorldCereal cubes).
    NaN in ``dn`` (already-masked float DN) stays NaN.
    """
    invalid = None
    for value in nodata:
        hit = dn == value
        invalid = hit if invalid is None else invalid | hit
    reflectance = (dn.astype("float32") + np.float32(boa_offset)) / np.float32(QUANTIFICATION)
    if invalid is None:
        return reflectance
    if isinstance(reflectance, xr.DataArray):
        return reflectance.where(~invalid).astype("float32")
    where = da.where if isinstance(reflectance, da.Array) else np.where
    return where(invalid, np.float32(np.nan), reflectance).astype("float32")


@dataclass(frozen=True)
class OffsetDecision:
    """The BOA offset applied to one product and why (recorded in ``Cube.attrs``)."""

    boa_offset: float
    processing_baseline: str | None
    decided_by: str  # "argument boa_offset", "argument processing_baseline", "file tag", "metadata.json", …


def decide_boa_offset(
    *,
    boa_offset: float | None = None,
    processing_baseline: str | float | None = None,
    found_baseline: str | float | None = None,
    found_by: str = "",
    found_offset: float | None = None,
    where: str = "",
) -> OffsetDecision:
    """Decide the BOA offset of one product from, in this order: an explicit ``boa_offset``, an explicit
    ``processing_baseline``, an offset found in the product (``found_offset``, e.g. a ``BOA_ADD_OFFSET``
    tag), a baseline found in the product (file tag or metadata.json). Never from the acquisition date.

    Raises DataError naming ``where`` when none is known.
    """
    if boa_offset is not None:
        return OffsetDecision(float(boa_offset), _baseline_str(processing_baseline), "argument boa_offset")
    if processing_baseline is not None:
        return OffsetDecision(
            boa_offset_of_baseline(processing_baseline),
            _baseline_str(processing_baseline),
            "argument processing_baseline",
        )
    if found_offset is not None:
        return OffsetDecision(float(found_offset), _baseline_str(found_baseline), found_by)
    if found_baseline is not None:
        try:
            offset = boa_offset_of_baseline(found_baseline)
        except DataError as error:
            raise DataError(f"{where}: {error}") from None
        return OffsetDecision(offset, _baseline_str(found_baseline), found_by)
    raise DataError(
        f"unknown processing baseline for {where}: no metadata.json with 'processing_baseline' and no "
        "PROCESSING_BASELINE file tag; pass processing_baseline= or boa_offset= (the L2A BOA offset is "
        "decided from the baseline, never from the date)"
    )


def _baseline_str(value: str | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return f"{float(value):05.2f}"


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform (pixel corners) and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> tuple[float, float]:
        """(x, y) pixel size, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> Bounds:
        left, top = self.transform.c, self.transform.f
        return left, top - self.height * self.resolution[1], left + self.width * self.resolution[0], top

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates ``(y, x)``; y decreasing."""
        xres, yres = self.resolution
        x = self.transform.c + (np.arange(self.width) + 0.5) * xres
        y = self.transform.f - (np.arange(self.height) + 0.5) * yres
        return y, x

    @classmethod
    def covering(
        cls, bounds: Bounds, resolution: float, crs: CRS, origin: tuple[float, float] | None = None
    ) -> Grid:
        """The smallest grid of ``resolution`` that covers ``bounds``, its pixel edges aligned on ``origin``
        (a pixel corner of a reference grid; default: multiples of the resolution)."""
        ox, oy = origin if origin is not None else (0.0, 0.0)
        minx, miny, maxx, maxy = bounds
        eps = 1e-6 * resolution  # tolerate float noise in bounds that sit on a pixel edge
        left = ox + math.floor((minx - ox) / resolution + 1e-6) * resolution
        right = ox + math.ceil((maxx - ox) / resolution - 1e-6) * resolution
        bottom = oy + math.floor((miny - oy) / resolution + 1e-6) * resolution
        top = oy + math.ceil((maxy - oy) / resolution - 1e-6) * resolution
        width = max(round((right - left) / resolution), 0)
        height = max(round((top - bottom) / resolution), 0)
        if width == 0 or height == 0 or right - left < eps:
            raise DataError(f"empty grid: bounds {bounds} cover no pixel at {resolution} m")
        return cls(CRS.from_user_input(crs), Affine(resolution, 0, left, 0, -resolution, top), width, height)

    def crop(self, bbox: Bounds) -> Grid:
        """The part of this grid whose pixels intersect ``bbox`` (same CRS); DataError where none does."""
        minx, miny, maxx, maxy = bbox
        left, bottom, right, top = self.bounds
        if minx >= right or maxx <= left or miny >= top or maxy <= bottom or minx >= maxx or miny >= maxy:
            raise DataError(
                f"bbox {tuple(bbox)} does not intersect the cube's extent {self.bounds} ({self.crs})"
            )
        xres, yres = self.resolution
        col0 = max(math.floor((minx - left) / xres + 1e-9), 0)
        col1 = min(math.ceil((maxx - left) / xres - 1e-9), self.width)
        row0 = max(math.floor((top - maxy) / yres + 1e-9), 0)
        row1 = min(math.ceil((top - miny) / yres - 1e-9), self.height)
        transform = self.transform @ Affine.translation(col0, row0)
        return Grid(self.crs, transform, col1 - col0, row1 - row0)


def transform_bbox(bbox: Bounds, src_crs: Any, dst_crs: Any) -> Bounds:
    """``bbox`` (minx, miny, maxx, maxy) from ``src_crs`` to ``dst_crs`` (densified edges, so it still
    covers the same area)."""
    src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs)
    if src == dst:
        return tuple(float(v) for v in bbox)  # type: ignore[return-value]
    return tuple(float(v) for v in transform_bounds(src, dst, *bbox, densify_pts=21))  # type: ignore[return-value]


def reflectance_resampling(source_resolution: float, target_resolution: float) -> Resampling:
    """Bilinear when the target is as fine as or finer than the source (20 m → 10 m), area average when
    coarser (10 m → 20 m), so that downsampling does not alias."""
    return Resampling.average if target_resolution > source_resolution * (1 + 1e-9) else Resampling.bilinear


# ---------------------------------------------------------------------------------------------- lazy reads


class WindowReader:
    """One band of one raster file seen on a target :class:`Grid`, as a lazy numpy-like array.

    ``reader[rows, cols]`` opens the file, reads only that window (warped through a GDAL ``WarpedVRT``
    with ``resampling`` when the file's grid differs from the target, a plain windowed read otherwise) and
    returns float32 reflectance (``kind="reflectance"``: DN → ``(DN + boa_offset) / 10000``, NaN for DN 0,
    the file's nodata and outside the file) or the raw uint8 classes (``kind="classes"``: 0 outside).
    Wrap it in :func:`lazy_band` to get a dask array; it holds only the path and numbers, so it pickles to
    dask.distributed workers.
    """

    def __init__(
        self,
        path: Path,
        grid: Grid,
        resampling: Resampling,
        *,
        kind: str = "reflectance",
        boa_offset: float = 0.0,
        band_index: int = 1,
    ) -> None:
        if kind not in ("reflectance", "classes"):
            raise InputError(f"WindowReader kind must be 'reflectance' or 'classes', got {kind!r}")
        self.path = Path(path)
        self.grid = grid
        self.resampling = resampling
        self.kind = kind
        self.boa_offset = float(boa_offset)
        self.band_index = band_index
        self.shape = grid.shape
        self.ndim = 2
        self.dtype = np.dtype("float32") if kind == "reflectance" else np.dtype("uint8")

    def _source_token(self) -> tuple:
        """What identifies the file's content: its path and modification time."""
        stat = self.path.stat() if self.path.exists() else None
        return str(self.path), stat.st_mtime_ns if stat else None

    def __dask_tokenize__(self) -> tuple:
        return (
            type(self).__name__,
            *self._source_token(),
            self.grid.crs.to_wkt(),
            tuple(self.grid.transform),
            self.grid.shape,
            self.resampling.name,
            self.kind,
            self.boa_offset,
            self.band_index,
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        (r0, r1, rs), (c0, c1, cs) = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        if rs != 1 or cs != 1:
            raise InputError("WindowReader supports only contiguous windows")
        window = Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))
        if window.width == 0 or window.height == 0:
            return np.empty((window.height, window.width), self.dtype)
        return self.read(window)

    def read(self, window: Window) -> np.ndarray:
        """The values of ``window`` (of the target grid)."""
        try:
            with rasterio.open(self.path) as src:
                raw = self._read_raw(src, window)
                file_nodata = src.nodatavals[self.band_index - 1]
        except RasterioError as error:
            raise InputError(f"cannot read raster file {self.path}: {error}") from None
        if self.kind == "classes":
            return np.where(np.isfinite(raw), raw, 0).astype("uint8")
        nodata = [DN_NODATA] + ([file_nodata] if file_nodata is not None and file_nodata != DN_NODATA else [])
        return dn_to_reflectance(raw, self.boa_offset, nodata)

    def _read_raw(self, src: rasterio.DatasetReader, window: Window) -> np.ndarray:
        offset = _integer_offset(src, self.grid)
        if offset is not None:  # same grid up to a whole-pixel shift: plain windowed read, no resampling
            row, col = offset
            src_window = Window(window.col_off + col, window.row_off + row, window.width, window.height)
            inside = (
                src_window.col_off >= 0
                and src_window.row_off >= 0
                and src_window.col_off + src_window.width <= src.width
                and src_window.row_off + src_window.height <= src.height
            )
            fill = DN_NODATA if src.nodata is None else src.nodata
            return src.read(self.band_index, window=src_window, boundless=not inside, fill_value=fill)
        if self.kind == "classes":
            options: dict[str, Any] = {"src_nodata": 0, "nodata": 0}
        else:
            options = {
                "src_nodata": DN_NODATA if src.nodata is None else src.nodata,
                "nodata": np.nan,
                "dtype": "float32",  # warp in float: no rounding of interpolated DN
            }
        with WarpedVRT(
            src,
            crs=self.grid.crs,
            transform=self.grid.transform,
            width=self.grid.width,
            height=self.grid.height,
            resampling=self.resampling,
            **options,
        ) as vrt:
            out = vrt.read(self.band_index, window=window)
        if self.kind == "reflectance":
            out = np.where(np.isnan(out), DN_NODATA, out)  # NaN (outside, nodata) → DN 0 → NaN reflectance
        return out


def _integer_offset(src: rasterio.DatasetReader, grid: Grid) -> tuple[int, int] | None:
    """(row, col) of the target grid's origin in the file when both grids coincide up to a whole-pixel
    shift (same CRS and pixel size, north-up); None otherwise."""
    t, g = src.transform, grid.transform
    if src.crs is None or CRS.from_user_input(src.crs) != grid.crs:
        return None
    if (
        t.b != 0
        or t.d != 0
        or not math.isclose(t.a, g.a, rel_tol=1e-9)
        or not math.isclose(t.e, g.e, rel_tol=1e-9)
    ):
        return None
    col = (g.c - t.c) / t.a
    row = (g.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def lazy_band(reader: WindowReader, chunks: int | tuple[int, int] = 512) -> da.Array:
    """A (height, width) dask array whose chunks are windowed reads of ``reader``."""
    if isinstance(chunks, int):
        chunks = (chunks, chunks)
    name = f"cropstar-read-{dask.base.tokenize(reader)}"
    return da.from_array(
        reader, chunks=chunks, name=name, lock=False, asarray=True, meta=np.empty((0, 0), reader.dtype)
    )


def grid_of_file(path: Path) -> tuple[Grid, np.dtype, dict[str, str]]:
    """The grid, data type and GDAL tags (dataset and band 1) of a raster file; InputError naming the file
    where it cannot be opened or has no CRS."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise DataError(f"raster file {path} has no CRS")
            tags = {**src.tags(), **src.tags(1)}
            return (
                Grid(CRS.from_user_input(src.crs), src.transform, src.width, src.height),
                np.dtype(src.dtypes[0]),
                tags,
            )
    except RasterioError as error:
        raise InputError(f"cannot open raster file {path}: {error}") from None


# ---------------------------------------------------------------------------------------------- cubes


def grid_of_dataarray(array: xr.DataArray) -> Grid:
    """The :class:`Grid` of a DataArray with ``y``/``x`` pixel-centre coordinates and a rioxarray CRS."""
    crs = array.rio.crs
    if crs is None:
        raise DataError(f"DataArray {array.name!r} has no CRS (rioxarray)")
    return Grid(
        CRS.from_user_input(crs), array.rio.transform(recalc=True), array.sizes["x"], array.sizes["y"]
    )


def reproject_cube(
    data: xr.DataArray,
    grid: Grid,
    resampling: Resampling = Resampling.bilinear,
    nodata: float = np.nan,
) -> xr.DataArray:
    """Warp a ``(time, band, y, x)`` (or ``(time, y, x)``) DataArray onto ``grid``, lazily: one dask task
    per time step, each computing only that step of the source and warping it with
    ``rasterio.warp.reproject`` (source NaN = no data). Use ``Resampling.nearest`` for classes and masks.
    """
    src_grid = grid_of_dataarray(data)
    out_dtype = np.dtype("float32") if np.issubdtype(data.dtype, np.floating) else data.dtype

    def warp_step(step: np.ndarray) -> np.ndarray:
        step = np.asarray(step)
        src = step.reshape((-1, *step.shape[-2:]))
        if src.dtype == bool:
            src = src.astype("uint8")
        dst = np.full(
            (src.shape[0], grid.height, grid.width), nodata if out_dtype.kind == "f" else 0, out_dtype
        )
        reproject(
            src,
            dst,
            src_transform=src_grid.transform,
            src_crs=src_grid.crs,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            resampling=resampling,
            src_nodata=np.nan if src.dtype.kind == "f" else None,
            dst_nodata=nodata if out_dtype.kind == "f" else None,
        )
        return dst.reshape((*step.shape[:-2], grid.height, grid.width)).astype(out_dtype)

    inner = tuple(data.shape[1:-2])
    steps = [
        da.from_delayed(
            dask.delayed(warp_step)(data.isel(time=i).data),
            shape=(*inner, grid.height, grid.width),
            dtype=out_dtype,
        )
        for i in range(data.sizes["time"])
    ]
    y, x = grid.coords()
    coords: dict[str, Any] = {"time": data["time"].values, "y": y, "x": x}
    for dim in data.dims[1:-2]:
        coords[dim] = data[dim].values
    out = xr.DataArray(da.stack(steps), dims=data.dims, coords=coords, name=data.name, attrs=dict(data.attrs))
    return out.rio.write_crs(grid.crs).rio.write_transform(grid.transform)


def attach_grid(array: xr.DataArray, grid: Grid) -> xr.DataArray:
    """``array`` with pixel-centre ``y``/``x`` coordinates of ``grid`` and its CRS/transform (rioxarray)."""
    y, x = grid.coords()
    array = array.assign_coords(y=y, x=x)
    return array.rio.write_crs(grid.crs).rio.write_transform(grid.transform)


def json_safe(value: Any) -> Any:
    """Provenance values as plain JSON types (tuples → lists, numpy scalars → Python)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v) for v in items]
    if isinstance(value, np.generic):
        return value.item()
    return value
