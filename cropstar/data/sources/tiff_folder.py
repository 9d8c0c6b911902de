"""Read a folder of per-date Sentinel-2 L2A band rasters (GeoTIFF / COG / JP2) as a lazy cube.

Two layouts, searched recursively and mixable:

- SAFE-style names: ``T{tile}_{YYYYMMDDTHHMMSS}_{band}_{res}m.tif`` (e.g.
  ``T32UPU_20230601T102559_B11_20m.tif``, ``…_SCL_20m.tif``), as in a SAFE product's ``IMG_DATA`` folders;
- one folder per date: ``{YYYY-MM-DD}/{band}.tif`` (``B02.tif``, ``blue.tif``, ``SCL.tif`` …).

Values are L2A DN (0 = no data). The BOA offset is decided per file from, in order: the ``boa_offset=``
or ``processing_baseline=`` argument, a ``BOA_ADD_OFFSET`` or ``PROCESSING_BASELINE`` GDAL tag, the
``processing_baseline`` of the nearest ``metadata.json`` (the file's folder or one above it, up to the
source folder; a string/number, or a mapping from ISO date to baseline). None known → DataError. The
SAFE reader adds a per-product metadata hook (``product_info``: MTD_MSIL2A.xml, consulted first) and the
STAC reader its own offset rule over :func:`open_band_files`, which also reads remote (URL) files.

Eager: listing the folder and opening each selected file's header (grid, tags). Lazy: all pixel
reads, one dask chunk = one window of one file, warped onto the target grid inside the chunk.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import pandas as pd
import xarray as xr
from rasterio.crs import CRS
from rasterio.enums import Resampling

from cropstar.data.bands import SCL, band_or_none
from cropstar.data.harmonise import (
    Grid,
    OffsetDecision,
    WindowReader,
    attach_grid,
    decide_boa_offset,
    grid_of_file,
    lazy_band,
    reflectance_resampling,
    transform_bbox,
)
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.errors import DataError, InputError

RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".jp2"})
#: ``T{tile}_{YYYYMMDDTHHMMSS}_{band}_{res}m.{tif,jp2}`` (the SAFE ``IMG_DATA`` naming).
SAFE_NAME = re.compile(
    r"^T(?P<tile>\d{2}[A-Z]{3})_(?P<time>\d{8}T\d{6})_(?P<band>[A-Za-z0-9]{2,3})_(?P<res>\d+)m$",
    re.IGNORECASE,
)
#: ``{YYYY-MM-DD}`` folder of the simple layout.
DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class BandFile:
    """One band raster of one acquisition."""

    path: Path
    time: pd.Timestamp
    band: str  # canonical name or "SCL"
    tile: str | None
    resolution: float | None  # from the name; None for the simple layout
    layout: str  # "safe", "date_folder" or "stac"
    product: str | None = None  # the SAFE product or STAC item it belongs to, where known


@dataclass(frozen=True)
class ProductInfo:
    """Radiometric metadata of one product (e.g. a SAFE product's MTD_MSIL2A.xml), from a metadata hook."""

    name: str
    processing_baseline: str | None
    boa_offsets: dict[str, float]  # canonical band → BOA_ADD_OFFSET given in the product
    found_by: str  # the metadata file, for provenance and errors


#: Decides the BOA offset of one band file from its GDAL tags (the reader's per-product hook).
OffsetRule = Callable[[BandFile, dict[str, str]], OffsetDecision]


class UrlWindowReader(WindowReader):
    """A :class:`WindowReader` of a remote raster (``https://…``, ``s3://…``, ``/vsicurl/…``): the path is
    kept as text and handed to rasterio/GDAL unchanged (``Path`` would fold ``//``)."""

    def __init__(self, url: str, grid: Grid, resampling: Resampling, **kwargs: Any) -> None:
        super().__init__(Path(), grid, resampling, **kwargs)
        self.path = url  # type: ignore[assignment]

    def _source_token(self) -> tuple:
        return (self.path,)


def scan_folder(folder: Path) -> list[BandFile]:
    """All band rasters below ``folder`` in either layout (other files are ignored)."""
    found: list[BandFile] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in RASTER_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        match = SAFE_NAME.match(path.stem)
        if match:
            band = band_or_none(match["band"])
            if band is not None:
                found.append(
                    BandFile(
                        path,
                        pd.Timestamp(match["time"]),
                        band,
                        match["tile"].upper(),
                        float(match["res"]),
                        "safe",
                        next((p.name for p in path.parents if p.suffix.upper() == ".SAFE"), None),
                    )
                )
            continue
        if DATE_FOLDER.match(path.parent.name):
            band = band_or_none(path.stem)
            if band is not None:
                found.append(BandFile(path, pd.Timestamp(path.parent.name), band, None, None, "date_folder"))
    return found



def open_tiff_folder(
    folder: Path,
    request: CubeRequest,
    *,
    product_info: Callable[[BandFile], ProductInfo | None] | None = None,
    kind: str = "tiff_folder",
) -> SourceCube:
    """The reflectance (and SCL) of the band rasters in ``folder`` as dask arrays on one target grid.

    ``product_info``: a per-product metadata hook (the SAFE reader's MTD_MSIL2A.xml); where it gives a
    product's metadata, that decides the BOA offset before file tags and metadata.json.
    """
    files = scan_folder(folder)
    if not files:
        raise InputError(
            f"no Sentinel-2 band rasters in {folder}: expected "
            "T{tile}_{YYYYMMDDTHHMMSS}_{band}_{res}m.tif or {YYYY-MM-DD}/{band}.tif files"
        )
    metadata_cache: dict[Path, dict[str, Any] | None] = {}

    def decide(bf: BandFile, tags: dict[str, str]) -> OffsetDecision:
        info = product_info(bf) if product_info is not None else None
        if info is not None:
            return decide_boa_offset(
                boa_offset=request.boa_offset,
                processing_baseline=request.processing_baseline,
                found_offset=info.boa_offsets.get(bf.band),
                found_baseline=info.processing_baseline,
                found_by=info.found_by,
                where=f"{info.found_by} (no PROCESSING_BASELINE and no BOA_ADD_OFFSET for {bf.band})",
            )
        return _decide_offset(bf, tags, request, folder, metadata_cache)

    return open_band_files(files, request, folder, decide, kind=kind)


def open_band_files(
    files: list[BandFile], request: CubeRequest, source: Any, decide: OffsetRule, *, kind: str
) -> SourceCube:
    """The cube of a list of band files (local paths, or URL strings read through GDAL): select the tile
    and times, pick the finest file per band and acquisition, decide each product's BOA offset with
    ``decide`` and build the lazy readers. ``source`` names the source in errors and attrs."""
    folder = source
    files = _select_tile(files, request.tile, folder)
    available = sorted({f.band for f in files if f.band != SCL})
    for band in request.bands:
        if band not in available:
            raise DataError(f"band {band} not found in {folder} (found: {', '.join(available) or 'none'})")
    keep = request.in_time([f.time for f in files])
    files = [f for f, k in zip(files, keep, strict=True) if k]
    if not files:
        raise DataError(f"no acquisitions in {folder} within the time range {_fmt_range(request.time)}")

    headers = {f.path: grid_of_file(f.path) for f in files if f.band in request.bands or f.band == SCL}
    chosen = _choose_files(files, request.bands, headers, folder)
    times = sorted(chosen)
    grid = _target_grid(chosen, headers, request)

    products: list[dict[str, Any]] = []
    steps, scl_steps, scl_missing = [], [], []
    for time in times:
        by_band = chosen[time]
        decision = None
        layers = []
        for band in request.bands:
            bf = by_band[band]
            file_grid, dtype, tags = headers[bf.path]
            if dtype.kind not in "iu":
                raise DataError(f"{bf.path}: expected integer L2A DN, found {dtype}")
            this = decide(bf, tags)
            if decision is not None and this.boa_offset != decision.boa_offset:
                raise DataError(
                    f"acquisition {time.isoformat()} in {folder}: band {band} has BOA offset "
                    f"{this.boa_offset} but other bands {decision.boa_offset} (mixed processing baselines)"
                )
            decision = this
            resampling = reflectance_resampling(file_grid.resolution[0], grid.resolution[0])
            reader = _reader(bf.path, grid, resampling, kind="reflectance", boa_offset=this.boa_offset)
            layers.append(lazy_band(reader, request.chunks))
        steps.append(da.stack(layers))
        assert decision is not None
        products.append(
            {
                "time": time.isoformat(),
                **(
                    {"product": by_band[request.bands[0]].product}
                    if by_band[request.bands[0]].product
                    else {}
                ),
                "tile": by_band[request.bands[0]].tile,
                "processing_baseline": decision.processing_baseline,
                "boa_offset": decision.boa_offset,
                "decided_by": decision.decided_by,
            }
        )
        if SCL in by_band:
            scl_steps.append(
                lazy_band(
                    _reader(by_band[SCL].path, grid, Resampling.nearest, kind="classes"), request.chunks
                )
            )
        else:
            scl_missing.append(time.isoformat())
            scl_steps.append(None)

    time_index = pd.DatetimeIndex(times).as_unit("ns")
    data = xr.DataArray(
        da.stack(steps),
        dims=("time", "band", "y", "x"),
        coords={"time": time_index, "band": list(request.bands)},
        name="reflectance",
    )
    data = attach_grid(data, grid)
    scl = None
    if any(s is not None for s in scl_steps):
        # an acquisition without an SCL file gets class 4 (vegetation, valid): its validity rests on DN only
        filler = da.full(grid.shape, 4, dtype="uint8", chunks=request.chunks)
        scl = xr.DataArray(
            da.stack([filler if s is None else s for s in scl_steps]),
            dims=("time", "y", "x"),
            coords={"time": time_index},
            name=SCL,
        )
        scl = attach_grid(scl, grid)
    resolutions = {
        b: sorted({headers[chosen[t][b].path][0].resolution[0] for t in times}) for b in request.bands
    }
    attrs = {
        "source": str(folder),
        "source_kind": kind,
        "layout": sorted({chosen[t][b].layout for t in times for b in chosen[t]}),
        "tile": next(iter(sorted({f.tile for f in files if f.tile is not None})), None),
        "crs": grid.crs.to_string(),
        "resolution": grid.resolution[0],
        "native_resolution": resolutions,
        "resampling": {
            "reflectance": "bilinear (area average when coarsening)",
            "scl": "nearest",
        },
        "scl": "none" if scl is None else ("partial" if scl_missing else "all acquisitions"),
        "scl_missing": scl_missing,
        "products": products,
        "dn_to_reflectance": "(DN + boa_offset) / 10000; DN 0 = no data",
    }
    return SourceCube(data=data, scl=scl, valid=None, attrs=attrs)


def _reader(path: Path | str, grid: Grid, resampling: Resampling, **kwargs: Any) -> WindowReader:
    if isinstance(path, Path):
        return WindowReader(path, grid, resampling, **kwargs)
    return UrlWindowReader(path, grid, resampling, **kwargs)


def _select_tile(files: list[BandFile], tile: str | None, folder: Path) -> list[BandFile]:
    tiles = sorted({f.tile for f in files if f.tile is not None})
    if tile is not None:
        wanted = tile.upper().removeprefix("T")
        selected = [f for f in files if f.tile == wanted]
        if not selected:
            raise DataError(f"tile {tile} not found in {folder} (found: {', '.join(tiles) or 'none'})")
        return selected
    if len(tiles) > 1:
        raise DataError(f"{folder} holds several tiles ({', '.join(tiles)}): choose one with tile=")
    return files


def _choose_files(
    files: list[BandFile], bands: tuple[str, ...], headers: dict[Path, Any], folder: Path
) -> dict[pd.Timestamp, dict[str, BandFile]]:
    """Per acquisition time, one file per requested band (and SCL where present): the finest resolution
    where a band comes at several. An acquisition lacking a requested band raises DataError."""
    chosen: dict[pd.Timestamp, dict[str, BandFile]] = defaultdict(dict)
    for f in files:
        if f.band not in bands and f.band != SCL:
            continue
        current = chosen[f.time].get(f.band)
        if current is None or headers[f.path][0].resolution[0] < headers[current.path][0].resolution[0]:
            chosen[f.time][f.band] = f
    for time, by_band in chosen.items():
        missing = [b for b in bands if b not in by_band]
        if missing:
            raise DataError(
                f"band {missing[0]} missing for acquisition {time.isoformat()}"
                f"{_of_product(by_band)} in {folder} "
                f"(has {', '.join(sorted(by_band))})"
            )
    return {t: chosen[t] for t in sorted(chosen)}


def _of_product(by_band: dict[str, BandFile]) -> str:
    products = sorted({bf.product for bf in by_band.values() if bf.product})
    return f" (product {', '.join(products)})" if products else ""


def _target_grid(
    chosen: dict[pd.Timestamp, dict[str, BandFile]], headers: dict[Path, Any], request: CubeRequest
) -> Grid:
    """The cube's grid: the union of the files' extents in the target CRS, at the target resolution, its
    pixels aligned on the finest file's grid (same CRS), cropped to the bbox."""
    reflectance_files = [bf for by_band in chosen.values() for b, bf in by_band.items() if b != SCL]
    grids = [headers[bf.path][0] for bf in reflectance_files]
    reference = min(grids, key=lambda g: g.resolution[0])  # first of the finest (files are sorted)
    crs = CRS.from_user_input(request.crs) if request.crs is not None else reference.crs
    resolution = request.resolution
    if resolution is None:
        if crs != reference.crs:
            raise InputError("resolution=None needs the source CRS; give a resolution with crs=")
        resolution = reference.resolution[0]
    if crs.is_geographic and resolution >= 1:
        raise InputError(
            f"resolution {resolution} is in degrees for the geographic CRS {crs}; give it in degrees"
        )
    bounds = [transform_bbox(g.bounds, g.crs, crs) for g in grids]
    union = (
        min(b[0] for b in bounds),
        min(b[1] for b in bounds),
        max(b[2] for b in bounds),
        max(b[3] for b in bounds),
    )
    origin = (reference.transform.c, reference.transform.f) if reference.crs == crs else None
    grid = Grid.covering(union, resolution, crs, origin)
    if request.bbox is not None:
        bbox = (
            request.bbox if request.bbox_crs is None else transform_bbox(request.bbox, request.bbox_crs, crs)
        )
        grid = grid.crop(bbox)
    return grid


def _decide_offset(
    bf: BandFile,
    tags: dict[str, str],
    request: CubeRequest,
    folder: Path,
    cache: dict[Path, dict[str, Any] | None],
) -> OffsetDecision:
    found_offset = _tag(tags, "BOA_ADD_OFFSET")
    if found_offset is not None:
        return decide_boa_offset(
            boa_offset=request.boa_offset,
            processing_baseline=request.processing_baseline,
            found_offset=float(found_offset),
            found_baseline=_tag(tags, "PROCESSING_BASELINE"),
            found_by=f"file tag BOA_ADD_OFFSET of {bf.path.name}",
            where=str(bf.path),
        )
    baseline, found_by = _tag(tags, "PROCESSING_BASELINE"), f"file tag PROCESSING_BASELINE of {bf.path.name}"
    if baseline is None:
        meta_path, meta = _nearest_metadata(bf.path.parent, folder, cache)
        if meta is not None:
            value = meta.get("processing_baseline")
            if isinstance(value, dict):
                value = value.get(bf.time.date().isoformat(), value.get(bf.time.isoformat()))
            if value is not None:
                baseline, found_by = value, str(meta_path)
    return decide_boa_offset(
        boa_offset=request.boa_offset,
        processing_baseline=request.processing_baseline,
        found_baseline=baseline,
        found_by=found_by,
        where=f"{bf.path.name} in {folder}",
    )


def _tag(tags: dict[str, str], key: str) -> str | None:
    for name, value in tags.items():
        if name.upper() == key:
            return value
    return None


def _nearest_metadata(
    start: Path, root: Path, cache: dict[Path, dict[str, Any] | None]
) -> tuple[Path | None, dict[str, Any] | None]:
    """The closest ``metadata.json`` from ``start`` up to ``root`` (inclusive)."""
    folder = start
    while True:
        if folder not in cache:
            path = folder / METADATA_FILE
            cache[folder] = _read_metadata(path) if path.is_file() else None
        if cache[folder] is not None:
            return folder / METADATA_FILE, cache[folder]
        if folder == root or folder.parent == folder or root not in folder.parents:
            return None, None
        folder = folder.parent


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} must hold a JSON object")
    return meta


def _fmt_range(time: tuple[Any, Any]) -> str:
    start, end = time
    return (
        f"[{start.isoformat() if start is not None else '…'}, {end.isoformat() if end is not None else '…'}]"
    )
