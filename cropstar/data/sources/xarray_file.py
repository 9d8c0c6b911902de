"""Read a NetCDF file, a Zarr store or an in-memory xarray Dataset as a lazy cube, whatever its names.

Layout detection:

- time: the dimension whose coordinate is datetime64 (else one named ``time``, ``t``, ``date``);
- y / x: dimensions named ``y``/``x``, ``northing``/``easting``, ``lat``/``lon``, ``latitude``/``longitude``
  (or with CF ``axis``/``standard_name`` attributes);
- bands: either one variable with a band dimension whose labels are band names (a cropstar cube file:
  ``reflectance (time, band, y, x)``), or one variable per band whose name maps through
  :func:`cropstar.data.bands.canonical_band` (``B02``, ``blue``, ``S2-L2A-B02`` …); other variables
  (S1, meteo, DEM, ``crs``) are ignored. ``SCL`` (a variable or a band label) makes the mask; a boolean
  ``valid (time, y, x)`` variable is taken as a stored validity mask.
- CRS: the CF ``grid_mapping`` variable (``crs_wkt`` / ``spatial_ref``), a rioxarray ``spatial_ref``,
  a ``crs`` / ``epsg`` attribute; lat/lon dimensions without any → EPSG:4326; otherwise DataError.

Values (decided per band and recorded in ``attrs["value_scaling"]``):

- integers, or floats decoded from integers without ``scale_factor`` → L2A DN: reflectance =
  ``(DN + boa_offset) / 10000``; no data = DN 0, the ``_FillValue`` / ``nodata`` / ``missing_value``,
  and 65535 for uint16 (the WorldCereal / openEO convention);
- floats decoded with a ``scale_factor``, or with ``units`` "1" / "reflectance" → reflectance as is;
- other floats: one small eager peek (the first time step, every 8th pixel): maximum > 2 → DN.

BOA offset for DN: ``boa_offset=`` / ``processing_baseline=`` arguments, then ``BOA_ADD_OFFSET`` /
``processing_baseline`` attributes of the variable or dataset; where none is given a NetCDF/Zarr cube
is taken as an already harmonised composite (offset 0; WorldCereal/openEO cubes are) and
``decided_by`` says so.

Lazy: opened with dask chunks (the file's own chunking); in-memory numpy datasets are chunked.
Reprojection (``crs=`` or a different ``resolution``) is lazy per time step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from rasterio.crs import CRS
from rasterio.enums import Resampling

from cropstar.data.bands import QUANTIFICATION, SCL, band_or_none
from cropstar.data.harmonise import (
    Grid,
    OffsetDecision,
    decide_boa_offset,
    dn_to_reflectance,
    grid_of_dataarray,
    reflectance_resampling,
    reproject_cube,
    transform_bbox,
)
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.errors import DataError, InputError

NETCDF_ENGINES = ("h5netcdf", "netcdf4", "scipy")
TIME_NAMES = ("time", "t", "date", "times")
Y_NAMES = ("y", "northing", "lat", "latitude")
X_NAMES = ("x", "easting", "lon", "long", "longitude")
BAND_DIM_NAMES = ("band", "bands", "variable", "channel", "spectral")
UINT16_NODATA = 65535
REFLECTANCE_UNITS = frozenset({"1", "reflectance", "unitless"})
DN_PEEK_THRESHOLD = 2.0


def open_xarray(source: Path | xr.Dataset | xr.DataArray, request: CubeRequest, *, kind: str) -> SourceCube:
    """The reflectance, SCL and stored validity of a NetCDF file, Zarr store or xarray object."""
    where = str(source) if isinstance(source, Path) else f"in-memory {type(source).__name__}"
    ds = _open(source, kind) if isinstance(source, Path) else _as_dataset(source)
    ds = _promote_grid_mappings(ds)
    time_dim, y_dim, x_dim = _find_dims(ds, where)
    crs = _find_crs(ds, y_dim, where)
    ds = ds.rename({d: n for d, n in ((time_dim, "time"), (y_dim, "y"), (x_dim, "x")) if d != n})
    ds = _time_coordinate(ds, where)

    layers, scl, stored_valid, names = _find_bands(ds, where)
    available = sorted(layers)
    for band in request.bands:
        if band not in layers:
            raise DataError(f"band {band} not found in {where} (found: {', '.join(available) or 'none'})")

    scaling: dict[str, str] = {}
    decisions: dict[str, OffsetDecision] = {}
    arrays = []
    for band in request.bands:
        layer = layers[band]
        kind_of_values, reason = _value_kind(layer)
        if kind_of_values == "dn":
            decision = _decide_offset(layer, ds, request, where)
            decisions[band] = decision
            arrays.append(dn_to_reflectance(layer, decision.boa_offset, _nodata_values(layer)))
            scaling[band] = f"DN ({reason}) → (DN + {decision.boa_offset:g}) / {QUANTIFICATION:g}"
        else:
            arrays.append(layer.astype("float32"))
            scaling[band] = f"reflectance ({reason})"
    data = xr.concat(
        [
            a.transpose("time", "y", "x").drop_vars([c for c in a.coords if c not in ("time", "y", "x")])
            for a in arrays
        ],
        dim="band",
    ).transpose("time", "band", "y", "x")
    data = data.assign_coords(band=np.array(request.bands, dtype=str))
    data = data.astype("float32").rename("reflectance")
    data.attrs = {}
    if scl is not None:
        scl = _clean(scl).fillna(0).astype("uint8") if scl.dtype.kind == "f" else _clean(scl).astype("uint8")
    if stored_valid is not None:
        stored_valid = _clean(stored_valid).astype(bool)

    # time in order, north-up, then selections (positional, lazy), then the target grid
    order = np.argsort(data["time"].values, kind="stable")
    if (order != np.arange(len(order))).any():
        data, scl, stored_valid = (a if a is None else a.isel(time=order) for a in (data, scl, stored_valid))
    if data.sizes["y"] > 1 and float(data["y"][0]) < float(data["y"][-1]):
        data, scl, stored_valid = (
            a if a is None else a.isel(y=slice(None, None, -1)) for a in (data, scl, stored_valid)
        )
    keep = request.in_time(data["time"].values)
    if not keep.any():
        raise DataError(f"no time steps in {where} within the requested time range")
    data, scl, stored_valid = (
        a if a is None else a.isel(time=np.flatnonzero(keep)) for a in (data, scl, stored_valid)
    )
    data, scl, stored_valid = (_with_crs(a, crs) for a in (data, scl, stored_valid))
    if request.bbox is not None:
        grid = grid_of_dataarray(data)
        # the bbox is in the cube's CRS (the target crs= where given) unless bbox_crs says otherwise
        crop = grid.crop(transform_bbox(request.bbox, request.bbox_crs or request.crs or crs, crs))
        col0 = round((crop.transform.c - grid.transform.c) / grid.resolution[0])
        row0 = round((grid.transform.f - crop.transform.f) / grid.resolution[1])
        window = {"y": slice(row0, row0 + crop.height), "x": slice(col0, col0 + crop.width)}
        data, scl, stored_valid = (
            a if a is None else _with_crs(a.isel(window), crs) for a in (data, scl, stored_valid)
        )

    data, scl, stored_valid = (
        a if a is None else _chunked(a, request.chunks) for a in (data, scl, stored_valid)
    )
    source_grid = grid_of_dataarray(data)
    target = _target_grid(source_grid, request)
    resampling_note = "none (source grid kept)"
    if target is not None:
        resampling = reflectance_resampling(source_grid.resolution[0], target.resolution[0])
        data = reproject_cube(data, target, resampling)
        scl = None if scl is None else reproject_cube(scl, target, Resampling.nearest, nodata=0)
        stored_valid = (
            None
            if stored_valid is None
            else reproject_cube(stored_valid.astype("uint8"), target, Resampling.nearest, nodata=0).astype(
                bool
            )
        )
        resampling_note = f"{resampling.name} for reflectance, nearest for SCL / valid"
    grid = grid_of_dataarray(data)

    provenance = _stored_provenance(ds)
    attrs = {
        "source": where,
        "source_kind": kind,
        "variables": {band: names[band] for band in request.bands},
        "crs": grid.crs.to_string(),
        "resolution": grid.resolution[0],
        "native_resolution": source_grid.resolution[0],
        "resampling": resampling_note,
        "value_scaling": scaling,
        "products": [
            {
                "band": band,
                "processing_baseline": d.processing_baseline,
                "boa_offset": d.boa_offset,
                "decided_by": d.decided_by,
            }
            for band, d in decisions.items()
        ],
        "scl": "none" if scl is None else "all acquisitions",
        "stored_valid": stored_valid is not None,
    }
    if provenance is not None:
        attrs["stored_provenance"] = provenance
    return SourceCube(data=data, scl=scl, valid=stored_valid, attrs=attrs)


# ---------------------------------------------------------------------------------------------- opening


def _open(path: Path, kind: str) -> xr.Dataset:
    if kind == "zarr":
        try:
            try:
                return xr.open_dataset(path, engine="zarr", chunks={}, consolidated=True)
            except (KeyError, FileNotFoundError, ValueError):  # no consolidated metadata
                return xr.open_dataset(path, engine="zarr", chunks={}, consolidated=False)
        except Exception as error:  # noqa: BLE001 - zarr raises many types for unreadable stores
            raise InputError(f"cannot open Zarr store {path}: {error}") from None
    errors = []
    for engine in NETCDF_ENGINES:
        try:
            return xr.open_dataset(path, engine=engine, chunks={})
        except (ValueError, OSError, ImportError, TypeError) as error:
            errors.append(f"{engine}: {error}")
    raise InputError(f"cannot open NetCDF file {path} ({'; '.join(errors)})")


def _as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(obj, xr.Dataset):
        return obj
    return obj.to_dataset(name=obj.name or "reflectance")


def _promote_grid_mappings(ds: xr.Dataset) -> xr.Dataset:
    """Make CF grid-mapping variables (``crs``, ``spatial_ref``) coordinates, so they are not taken for
    data and rioxarray finds them."""
    names = {v.attrs.get("grid_mapping") or v.encoding.get("grid_mapping") for v in ds.data_vars.values()}
    names |= {n for n in ("spatial_ref", "crs") if n in ds.data_vars and ds[n].ndim == 0}
    names = {n for n in names if isinstance(n, str) and n in ds.data_vars}
    return ds.set_coords(sorted(names)) if names else ds


def _find_dims(ds: xr.Dataset, where: str) -> tuple[str, str, str]:
    dims = list(ds.dims)
    time = next((d for d in dims if d in ds.coords and np.issubdtype(ds[d].dtype, np.datetime64)), None)
    time = time or _by_name(dims, TIME_NAMES) or _by_attr(ds, dims, "T", ())
    y = _by_name(dims, Y_NAMES) or _by_attr(ds, dims, "Y", ("projection_y_coordinate", "latitude"))
    x = _by_name(dims, X_NAMES) or _by_attr(ds, dims, "X", ("projection_x_coordinate", "longitude"))
    missing = [name for name, dim in (("time", time), ("y", y), ("x", x)) if dim is None]
    if missing:
        raise DataError(f"{where}: cannot find the {', '.join(missing)} dimension(s) among {dims}")
    return time, y, x  # type: ignore[return-value]


def _by_name(dims: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {str(d).lower(): d for d in dims}
    return next((lowered[n] for n in names if n in lowered), None)


def _by_attr(ds: xr.Dataset, dims: list[str], axis: str, standard_names: tuple[str, ...]) -> str | None:
    for dim in dims:
        if dim in ds.coords:
            attrs = ds[dim].attrs
            if attrs.get("axis") == axis or attrs.get("standard_name") in standard_names:
                return dim
    return None


def _find_crs(ds: xr.Dataset, y_dim: str, where: str) -> CRS:
    crs = None
    for var in ds.data_vars.values():
        try:
            crs = var.rio.crs
        except Exception:  # noqa: BLE001 - rioxarray raises on malformed grid mappings; try the next
            crs = None
        if crs is not None:
            break
    if crs is None:
        for key in ("crs", "spatial_ref", "crs_wkt", "epsg", "proj:epsg"):
            value = ds.attrs.get(key)
            if value is not None:
                try:
                    crs = CRS.from_user_input(int(value) if key.endswith("epsg") else value)
                except Exception:  # noqa: BLE001 - pyproj/rasterio raise several types for bad text
                    raise DataError(f"{where}: cannot read the CRS attribute {key}={value!r}") from None
                break
    if crs is None and str(y_dim).lower() in ("lat", "latitude"):
        crs = CRS.from_epsg(4326)
    if crs is None:
        raise DataError(f"{where}: no CRS found (no grid_mapping variable, spatial_ref or crs attribute)")
    return CRS.from_user_input(crs)


def _time_coordinate(ds: xr.Dataset, where: str) -> xr.Dataset:
    if "time" not in ds.coords:
        raise DataError(f"{where}: the time dimension has no coordinate values")
    values = ds["time"].values
    if not np.issubdtype(values.dtype, np.datetime64):
        try:
            values = pd.DatetimeIndex(pd.to_datetime(values))
        except (ValueError, TypeError):
            raise DataError(f"{where}: time coordinate of dtype {values.dtype} is not a date") from None
    return ds.assign_coords(time=pd.DatetimeIndex(values).as_unit("ns"))


def _find_bands(
    ds: xr.Dataset, where: str
) -> tuple[dict[str, xr.DataArray], xr.DataArray | None, xr.DataArray | None, dict[str, str]]:
    """Band layers ``(time, y, x)`` by canonical name, the SCL layer, a stored ``valid`` mask, and the
    source's name of each band."""
    layers: dict[str, xr.DataArray] = {}
    names: dict[str, str] = {}
    stored_valid = None
    core = {"time", "y", "x"}

    def add(band: str, layer: xr.DataArray, name: str) -> None:
        if band in layers:
            raise DataError(f"{where}: both {names[band]!r} and {name!r} are band {band}")
        layers[band], names[band] = layer, name

    for var_name, var in ds.data_vars.items():
        extra = [d for d in var.dims if d not in core]
        if str(var_name) == "valid" and set(var.dims) == core:
            stored_valid = var
            continue
        if set(var.dims) == core:
            band = band_or_none(str(var_name))
            if band is not None:
                add(band, var, str(var_name))
        elif len(extra) == 1 and set(var.dims) - set(extra) == core and extra[0] in var.coords:
            labels = [str(v) for v in var[extra[0]].values]
            mapped = [band_or_none(label) for label in labels]
            if extra[0].lower() in BAND_DIM_NAMES or all(m is not None for m in mapped):
                for label, band in zip(labels, mapped, strict=True):
                    if band is not None:
                        add(band, var.sel({extra[0]: label}, drop=True), f"{var_name}[{label}]")
    scl = layers.pop(SCL, None)
    names.pop(SCL, None)
    return layers, scl, stored_valid, names



# ---------------------------------------------------------------------------------------------- values


def _value_kind(layer: xr.DataArray) -> tuple[str, str]:
    """("dn" | "reflectance", why)."""
    encoded = layer.encoding.get("dtype")
    units = str(layer.attrs.get("units", "")).strip().lower()
    if layer.dtype.kind in "iu":
        return "dn", f"integer {layer.dtype}"
    if "scale_factor" in layer.encoding:
        return "reflectance", f"decoded with scale_factor {layer.encoding['scale_factor']}"
    if encoded is not None and np.dtype(encoded).kind in "iu":
        return "dn", f"stored as {np.dtype(encoded)} without scale_factor"
    if units in REFLECTANCE_UNITS:
        return "reflectance", f"units {units!r}"
    sample = layer.isel({layer.dims[0]: 0})
    sample = sample.isel({d: slice(None, None, 8) for d in sample.dims})
    peak = float(np.nanmax(np.asarray(sample.values, dtype="float64"), initial=-np.inf))
    if math.isfinite(peak) and peak > DN_PEEK_THRESHOLD:
        return "dn", f"float values up to {peak:g}"
    return "reflectance", f"float values up to {peak:g}"


def _nodata_values(layer: xr.DataArray) -> list[float]:
    values: list[float] = [0]
    for source in (layer.encoding, layer.attrs):
        for key in ("_FillValue", "missing_value", "nodata"):
            value = source.get(key)
            if (
                value is not None
                and np.ndim(value) == 0
                and not (isinstance(value, float) and math.isnan(value))
            ):
                values.append(float(value))
    encoded = layer.encoding.get("dtype")
    if (
        layer.dtype == np.uint16
        or (encoded is not None and np.dtype(encoded) == np.uint16)
        or (layer.encoding.get("_Unsigned") in ("true", True) and layer.dtype.itemsize == 2)
    ):
        values.append(UINT16_NODATA)
    return sorted(set(values))


def _decide_offset(layer: xr.DataArray, ds: xr.Dataset, request: CubeRequest, where: str) -> OffsetDecision:
    for attrs, owner in ((layer.attrs, f"attribute of {layer.name}"), (ds.attrs, f"attribute of {where}")):
        for key, value in attrs.items():
            if key.lower() in ("boa_add_offset", "boa_offset"):
                return decide_boa_offset(
                    boa_offset=request.boa_offset,
                    processing_baseline=request.processing_baseline,
                    found_offset=float(value),
                    found_by=f"{key} {owner}",
                    where=where,
                )
            if key.lower() == "processing_baseline":
                return decide_boa_offset(
                    boa_offset=request.boa_offset,
                    processing_baseline=request.processing_baseline,
                    found_baseline=value,
                    found_by=f"{key} {owner}",
                    where=where,
                )
    if request.boa_offset is None and request.processing_baseline is None:
        return OffsetDecision(
            0.0,
            None,
            "assumed: a NetCDF/Zarr cube without processing baseline is an already harmonised composite",
        )
    return decide_boa_offset(
        boa_offset=request.boa_offset, processing_baseline=request.processing_baseline, where=where
    )


# ---------------------------------------------------------------------------------------------- grid


def _clean(layer: xr.DataArray) -> xr.DataArray:
    layer = layer.transpose("time", "y", "x")
    return layer.drop_vars([c for c in layer.coords if c not in ("time", "y", "x")])


def _with_crs(array: xr.DataArray | None, crs: CRS) -> xr.DataArray | None:
    if array is None:
        return None
    array = array.drop_vars([c for c in array.coords if c not in array.dims])
    return array.rio.write_crs(crs).rio.write_transform(array.rio.transform(recalc=True))


def _chunked(array: xr.DataArray, chunks: int) -> xr.DataArray:
    if array.chunks is not None:
        return array
    spec = {"time": 1, "y": chunks, "x": chunks}
    if "band" in array.dims:
        spec["band"] = -1
    return array.chunk(spec)


def _target_grid(source: Grid, request: CubeRequest) -> Grid | None:
    """The grid to warp onto, or None when the source grid already is the target."""
    crs = CRS.from_user_input(request.crs) if request.crs is not None else source.crs
    resolution = request.resolution if request.resolution is not None else source.resolution[0]
    same_res = math.isclose(resolution, source.resolution[0], rel_tol=1e-6) and math.isclose(
        resolution, source.resolution[1], rel_tol=1e-6
    )
    if crs == source.crs and same_res:
        return None
    if crs.is_geographic and resolution >= 1:
        raise InputError(
            f"resolution {resolution} is in degrees for the geographic CRS {crs}; give it in degrees"
        )
    bounds = transform_bbox(source.bounds, source.crs, crs)
    origin = (source.transform.c, source.transform.f) if crs == source.crs else None
    return Grid.covering(bounds, resolution, crs, origin)


def _stored_provenance(ds: xr.Dataset) -> Any:
    text = ds.attrs.get("cropstar_cube")
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
