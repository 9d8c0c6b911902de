"""Field polygons: reading (GeoJSON, GeoPackage, Shapefile, GeoParquet), checking, bringing them to a
cube's CRS, and rasterising them to a field-index raster (one field id per pixel)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import rasterio.transform
import shapely
from affine import Affine
from rasterio.features import rasterize

from cropstar.data.polygon_repair import repair_polygon
from cropstar.errors import DataError, InputError

ID_COLUMNS: tuple[str, ...] = ("field_id", "id", "fid", "parcel_id")
NO_FIELD = -1


@dataclass
class FieldProblem:
    """A field that was skipped or changed, and why."""

    field_id: str
    problem: str


@dataclass
class Fields:
    """Checked field polygons: ``frame`` with a string ``field_id`` column, and what was skipped."""

    frame: gpd.GeoDataFrame
    problems: list[FieldProblem] = field(default_factory=list)


def read_fields(path: Path | str, *, id_column: str | None = None, label_column: str | None = None) -> Fields:
    """Read and check field polygons.

    The id comes from ``id_column`` or the first of field_id / id / fid / parcel_id, else the row
    number. GeoJSON without a CRS is WGS 84 (RFC 7946); any other file must carry one. Empty and
    non-polygonal geometries are skipped, invalid ones repaired (``shapely.make_valid``) — each
    recorded in ``problems``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"fields file not found: {path}")
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(path)
    except Exception as error:
        raise InputError(f"cannot read fields from {path}: {error}") from error
    if frame.crs is None:
        if path.suffix.lower() in (".geojson", ".json"):
            frame = frame.set_crs("EPSG:4326")
        else:
            raise DataError(f"{path} has no coordinate reference system; set one (e.g. with ogr2ogr -a_srs)")
    if label_column is not None and label_column not in frame.columns:
        columns = ", ".join(c for c in frame.columns if c != "geometry")
        raise InputError(f"{path} has no label column {label_column!r}; its columns are: {columns}")
    frame = frame.copy()
    frame["field_id"] = _field_ids(frame, id_column, path)
    return check_fields(frame)


def _field_ids(frame: gpd.GeoDataFrame, id_column: str | None, path: Path) -> list[str]:
    if id_column is not None:
        if id_column not in frame.columns:
            raise InputError(f"{path} has no id column {id_column!r}")
        ids = frame[id_column].astype(str)
    else:
        found = next((c for c in ID_COLUMNS if c in frame.columns), None)
        ids = frame[found].astype(str) if found else frame.index.astype(str).to_series(index=frame.index)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise DataError(f"{path}: field ids are not unique, e.g. {', '.join(map(str, duplicated[:5]))}")
    return list(ids)


def repair_polygons(geometries: list[shapely.Geometry]) -> list[shapely.Geometry | str | None]:
    """:func:`repair_polygon` of each geometry, here and without a time limit (the service runs it in
    a worker process with a deadline: ``service.repair_worker``)."""
    return [repair_polygon(geometry) for geometry in geometries]


#: What GEOS says of a valid geometry (``shapely.is_valid_reason``).
VALID = "Valid Geometry"

#: ``repair(invalid geometries)`` → per geometry: the repaired one, None (nothing polygonal left) or
#: the reason it was not repaired.
Repair = Callable[[list[shapely.Geometry]], list[shapely.Geometry | str | None]]


def check_fields(frame: gpd.GeoDataFrame, repair: Repair = repair_polygons) -> Fields:
    """Skip empty / non-polygonal geometries and repair invalid ones with ``repair``, recording each."""
    problems: dict[int, FieldProblem] = {}
    keep = np.ones(len(frame), dtype=bool)
    geometries = list(frame.geometry)
    field_ids = list(frame["field_id"])
    reasons: dict[int, str] = {}  # why each invalid polygon is invalid (one validity check each)
    for i, geometry in enumerate(geometries):
        if geometry is None or geometry.is_empty:
            keep[i] = False
            problems[i] = FieldProblem(field_ids[i], "empty geometry: skipped")
        elif geometry.geom_type not in ("Polygon", "MultiPolygon"):
            keep[i] = False
            problems[i] = FieldProblem(field_ids[i], f"{geometry.geom_type} is not a polygon: skipped")
        elif (reason := shapely.is_valid_reason(geometry)) != VALID:
            reasons[i] = reason
    invalid = list(reasons)
    for i, repaired in zip(invalid, repair([geometries[i] for i in invalid]) if invalid else [], strict=True):
        reason = reasons[i]
        if isinstance(repaired, str) or repaired is None:
            keep[i] = False
            why = repaired if isinstance(repaired, str) else "could not be repaired"
            problems[i] = FieldProblem(field_ids[i], f"invalid geometry ({reason}) {why}: skipped")
        else:
            problems[i] = FieldProblem(field_ids[i], f"invalid geometry ({reason}): repaired")
            geometries[i] = repaired
    checked = frame.set_geometry(gpd.GeoSeries(geometries, index=frame.index, crs=frame.crs))
    return Fields(frame=checked[keep].reset_index(drop=True), problems=[problems[i] for i in sorted(problems)])


def rasterise_fields(
    frame: gpd.GeoDataFrame | gpd.GeoSeries,
    transform: Affine,
    shape: tuple[int, int],
    crs: object,
    values: np.ndarray | None = None,
    *,
    fill: int = NO_FIELD,
) -> np.ndarray:
    """Burn the fields into a (height, width) int32 raster on the grid (transform, shape, crs).

    A pixel takes ``values[i]`` (default: the row number i) of the field covering its centre, or
    ``fill``; fields are brought to ``crs`` first. Where fields overlap, the later row wins.
    """
    if frame.crs is None:
        raise DataError("fields have no coordinate reference system")
    projected = frame.to_crs(crs)
    burn = np.arange(len(projected)) if values is None else np.asarray(values)
    if len(burn) != len(projected):
        raise InputError(f"{len(burn)} values for {len(projected)} fields")
    shapes = [(g, int(v)) for g, v in zip(projected.geometry, burn) if g is not None and not g.is_empty]
    if not shapes:
        return np.full(shape, fill, dtype=np.int32)
    return rasterize(shapes, out_shape=shape, transform=transform, fill=fill, dtype="int32")


def field_pixels(
    frame: gpd.GeoDataFrame | gpd.GeoSeries,
    transform: Affine,
    shape: tuple[int, int],
    crs: object,
    *,
    window: int = 2048,
    overlaps: Literal["later", "each"] = "later",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of the grid (transform, shape, crs) whose centres lie in a field: ``rows``, ``cols``
    and the field's row number in ``frame``, as :func:`rasterise_fields` burns them but one
    ``window`` × ``window`` block at a time, with only the fields that reach the block, so memory
    follows the block and the fields, not the scene. Where fields overlap, ``overlaps="later"``
    gives a pixel to the later row (one label per pixel, for training); ``"each"`` gives it to every
    field it lies in (a pixel may then be listed once per field), so each field gets the pixels it
    would get alone."""
    projected = frame.to_crs(crs).reset_index(drop=True)
    index = projected.sindex
    layer = overlap_layers(projected.geometry) if overlaps == "each" else np.zeros(len(projected), np.int64)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    height, width = shape
    for r0 in range(0, height, window):
        for c0 in range(0, width, window):
            h, w = min(window, height - r0), min(window, width - c0)
            block_transform = transform * Affine.translation(c0, r0)
            bounds = rasterio.transform.array_bounds(h, w, block_transform)
            near = np.sort(index.query(shapely.box(bounds[0], bounds[1], bounds[2], bounds[3])))
            for level in np.unique(layer[near]):
                chosen = near[layer[near] == level]
                burnt = rasterise_fields(projected.iloc[chosen], block_transform, (h, w), crs, values=chosen)
                rows, cols = np.nonzero(burnt >= 0)
                found.append((rows + r0, cols + c0, burnt[rows, cols].astype(np.int64)))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols, fields = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((fields, cols, rows))
    return rows[order].astype(np.int64), cols[order].astype(np.int64), fields[order]


def overlap_layers(geometries: gpd.GeoSeries) -> np.ndarray:
    """A layer number per geometry such that no two geometries of one layer share interior (touching
    ones may): each takes the lowest layer none of the earlier ones it overlaps holds. Fields that
    do not overlap all lie in layer 0."""
    left, right = geometries.sindex.query(geometries, predicate="intersects")
    pairs = left < right
    left, right = left[pairs], right[pairs]
    values = geometries.to_numpy()
    inner = shapely.relate_pattern(values[left], values[right], "T********")  # interiors meet
    earlier: dict[int, list[int]] = {}
    for a, b in zip(left[inner], right[inner], strict=True):
        earlier.setdefault(int(b), []).append(int(a))
    layer = np.zeros(len(values), np.int64)
    for j in sorted(earlier):
        taken = {int(layer[i]) for i in earlier[j]}
        layer[j] = next(k for k in range(len(taken) + 1) if k not in taken)
    return layer


def fields_outside(frame: gpd.GeoDataFrame | gpd.GeoSeries, bounds: tuple[float, float, float, float], crs: object) -> np.ndarray:
    """Boolean (n_fields,): fields that do not intersect the box ``bounds`` (in ``crs``), counting as
    outside those with a point ``crs`` cannot express (PROJ gives inf far beyond a UTM zone, say)."""
    geometries = frame.to_crs(crs).geometry
    outside = ~finite_coordinates(geometries)
    outside[~outside] = ~geometries[~outside].intersects(shapely.box(*bounds)).to_numpy()
    return outside


def finite_coordinates(geometries: gpd.GeoSeries) -> np.ndarray:
    """Boolean (n,): geometries whose coordinates are all finite (GEOS refuses inf and NaN)."""
    coordinates, owner = shapely.get_coordinates(geometries.to_numpy(), return_index=True)
    finite = np.ones(len(geometries), bool)
    np.logical_and.at(finite, owner, np.isfinite(coordinates).all(axis=1))
    return finite
