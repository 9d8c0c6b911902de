"""Cube sources: recognise what a source is (a folder of band rasters, Sentinel-2 L2A SAFE products, tile
folders in the AWS ``sentinel-s2-l2a`` bucket layout, a STAC ItemCollection/catalog, a NetCDF file, a Zarr
store, an in-memory xarray object) and hand it to its reader. Each reader returns a
:class:`cropstar.data.sources.request.SourceCube` for :func:`cropstar.data.cube.open_cube` to mask."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr

from cropstar.errors import InputError

if TYPE_CHECKING:
    from cropstar.data.sources.request import CubeRequest, SourceCube

NETCDF_SUFFIXES = frozenset({".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5", ".h5nc"})
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")


def source_kind(source: Any) -> str:
    """``"tiff_folder"``, ``"safe"`` (a SAFE product folder or a folder of them), ``"aws_tile"`` (a tile
    folder of the AWS bucket layout, ``metadata.xml`` beside ``tileInfo.json``, or a folder of them),
    ``"stac"`` (a ``.json`` STAC file, local or http(s), or a ``pystac`` ItemCollection/Catalog/Item),
    ``"netcdf"``, ``"zarr"`` or ``"xarray"`` (an in-memory Dataset/DataArray).

    Raises InputError naming the source when it does not exist or is of a kind not supported (yet):
    remote sources other than STAC JSON, single raster files.
    """
    if isinstance(source, (xr.Dataset, xr.DataArray)):
        return "xarray"
    from cropstar.data.sources.stac import is_stac_object

    if is_stac_object(source):
        return "stac"
    if not isinstance(source, (str, Path)):
        raise InputError(
            f"cannot open a cube from a {type(source).__name__}; pass a path, a STAC ItemCollection or "
            "an xarray Dataset"
        )
    text = str(source)
    if "://" in text:
        if text.split("?", 1)[0].lower().endswith(".json"):
            return "stac"
        raise InputError(f"remote sources other than STAC JSON are not supported yet: {text}")
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"cube source not found: {path}")
    if path.is_dir():
        if path.suffix.lower() == ".zarr" or any((path / marker).exists() for marker in ZARR_MARKERS):
            return "zarr"
        from cropstar.data.sources.safe import is_safe

        if is_safe(path):
            return "safe"
        from cropstar.data.sources.aws_tile import is_aws_tile

        if is_aws_tile(path):
            return "aws_tile"
        return "tiff_folder"
    suffix = path.suffix.lower()
    if suffix in NETCDF_SUFFIXES:
        return "netcdf"
    if suffix == ".json":
        return "stac"
    if suffix in {".tif", ".tiff", ".jp2"}:
        raise InputError(
            f"{path} is a single raster file; pass the folder that holds the per-date band files"
        )
    raise InputError(f"unknown cube source format: {path} (expected a folder, .nc or .zarr)")


def open_source(source: Any, request: CubeRequest) -> SourceCube:
    """Read ``source`` with the reader for its kind (see :func:`source_kind`)."""
    kind = source_kind(source)
    if kind == "tiff_folder":
        from cropstar.data.sources.tiff_folder import open_tiff_folder

        return open_tiff_folder(Path(source).expanduser(), request)
    if kind == "safe":
        from cropstar.data.sources.safe import open_safe

        return open_safe(Path(source).expanduser(), request)
    if kind == "aws_tile":
        from cropstar.data.sources.aws_tile import open_aws_tile

        return open_aws_tile(Path(source).expanduser(), request)
    if kind == "stac":
        from cropstar.data.sources.stac import open_stac

        return open_stac(source, request)
    from cropstar.data.sources.xarray_file import open_xarray

    return open_xarray(source if kind == "xarray" else Path(source).expanduser(), request, kind=kind)
