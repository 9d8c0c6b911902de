"""The accuracy of a class map against reference fields (DESIGN.md, "Conventions of the field": accuracy
reports): the fields are rasterised onto the map's own grid (pixel centres inside), the map is read
in windows at those pixels only, and map and reference are compared pixel by pixel where both have a
class — optionally with Olofsson et al. (2014) area-weighted estimates and a per-field comparison."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from cropstar.data.class_table import ClassTable, normalise_code
from cropstar.data.fields import Fields, field_pixels
from cropstar.errors import CropstarError, DataError, InputError
from cropstar.train.metrics import accuracy_report, area_weighted_report

Progress = Callable[[str, int, int], None]
#: Tags (dataset or band 1) that may hold the map's class table: JSON records [{"id", "code", "name"}]
#: (``cropstar classify`` writes ``classes``; GDAL metadata keys cannot hold a colon).
CLASS_TABLE_TAGS = ("classes", "class_table")
#: Side (pixels) of the windows the map is read in.
WINDOW = 1024


def map_class_table(map_path: Path | str) -> ClassTable | None:
    """The class table stored in the map's tags (:data:`CLASS_TABLE_TAGS`), or None."""
    with _open(map_path) as src:
        tags = {**src.tags(), **src.tags(1)}
    for key in CLASS_TABLE_TAGS:
        if key in tags:
            try:
                return ClassTable.from_records(json.loads(tags[key]))
            except (ValueError, CropstarError) as error:
                raise InputError(f"map {map_path}: tag {key!r} is not a class table: {error}") from None
    return None


def _open(map_path: Path | str) -> Any:
    import rasterio

    path = Path(map_path)
    if not path.is_file():
        raise InputError(f"map not found: {path}")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioError as error:
        raise InputError(f"cannot read map {path}: {error}") from None


def _groups(rows: np.ndarray, cols: np.ndarray, width: int) -> list[np.ndarray]:
    """Indices of the pixels grouped by :data:`WINDOW`-sized window."""
    window_of = (rows // WINDOW) * (width // WINDOW + 1) + cols // WINDOW
    order = np.argsort(window_of, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(window_of[order])) + 1) if len(order) else []


def _values_at(src: Any, rows: np.ndarray, cols: np.ndarray, progress: Progress | None) -> np.ndarray:
    """Band 1 of the open map at the pixels (rows, cols), read one window around them at a time."""
    from rasterio.windows import Window

    out = np.zeros(len(rows), dtype=np.float64)
    groups = _groups(rows, cols, src.width)
    for done, members in enumerate(groups, start=1):
        r, c = rows[members], cols[members]
        r0, c0 = int(r.min()), int(c.min())
        block = src.read(1, window=Window(c0, r0, int(c.max()) - c0 + 1, int(r.max()) - r0 + 1))
        out[members] = block[r - r0, c - c0]
        if progress is not None:
            progress("reading the map", done, len(groups))
    return out


def _mapped_pixels(src: Any, k: int, nodata: float | None, progress: Progress | None) -> np.ndarray:
    """(K,) pixels the map assigns to each class, counted block by block."""
    counts = np.zeros(k, np.int64)
    windows = [window for _, window in src.block_windows(1)]
    for done, window in enumerate(windows, start=1):
        values = src.read(1, window=window).ravel()
        keep = np.isfinite(values) & (values >= 0) & (values < k)
        if nodata is not None:
            keep &= values != nodata
        counts += np.bincount(values[keep].astype(np.int64), minlength=k)
        if progress is not None:
            progress("counting map classes", done, len(windows))
    return counts


def _pixel_hectares(src: Any) -> float | None:
    """The area of one pixel in hectares (None for a map without projected, linear units)."""
    if src.crs is None or not src.crs.is_projected:
        return None
    _, metres = src.crs.linear_units_factor
    return abs(src.transform.a * src.transform.e) * metres**2 / 1e4


def evaluate_map(
    map_path: Path | str,
    reference: Fields | gpd.GeoDataFrame,
    label_column: str,
    *,
    class_table: ClassTable | None = None,
    area_weighted: bool = False,
    per_field: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The accuracy report (:func:`cropstar.train.metrics.accuracy_report`) of the class map at
    ``map_path`` (band 1: class ids, its nodata value excluded) against the reference fields, pixel by
    pixel at the map pixels whose centres lie in a field (fields reprojected to the map's CRS).

    The class table comes from ``class_table``, else the map's tags (:data:`CLASS_TABLE_TAGS`). Each
    field's code in ``label_column`` is matched to the map's classes by code; codes the map does not
    know are not scored but counted in ``unknown_classes`` ({code: pixels}); fields without a label
    are counted in ``fields_without_label``; reference pixels where the map has no class in
    ``pixels_without_map_class``. Also: ``map``, ``label_column``, ``n_fields`` (fields scored),
    ``pixel_area_ha`` (None without a projected CRS).

    ``area_weighted``: ``area_weighted`` holds :func:`area_weighted_report` with every class's mapped
    area (its pixels over the whole map, in hectares where the pixel size allows, else pixels:
    ``area_unit``) — or None with ``area_weighted_problem`` saying why it cannot be estimated. The
    reference pixels stand in for a stratified sample, which they only are when the fields were
    sampled at random. ``per_field``: ``per_field`` holds the report of the majority map class of
    each scored field against its reference class.
    """
    frame = reference.frame if isinstance(reference, Fields) else reference
    if frame.crs is None:
        raise InputError("reference fields have no coordinate reference system")
    if label_column not in frame.columns:
        columns = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name)
        raise InputError(f"reference fields have no label column {label_column!r}; their columns are: {columns}")
    table = class_table or map_class_table(map_path)
    if table is None:
        raise InputError(
            f"map {map_path} carries no class table (tag {CLASS_TABLE_TAGS[0]!r}): give the model's (--model)"
        )
    frame = frame[~frame.geometry.isna() & ~frame.geometry.is_empty].reset_index(drop=True)
    codes = [None if pd.isna(v) else normalise_code(v) for v in frame[label_column]]
    labelled = np.array([code is not None for code in codes], dtype=bool)
    known = {code: i for i, code in enumerate(table.codes)}
    field_class = np.array([known.get(code, -1) if code is not None else -1 for code in codes], np.int64)
    k = len(table)

    with _open(map_path) as src:
        nodata = src.nodata
        rows, cols, which = field_pixels(frame[labelled], src.transform, src.shape, src.crs)
        owner = np.flatnonzero(labelled)[which]
        values = _values_at(src, rows, cols, progress)
        hectares = _pixel_hectares(src)
        mapped = _mapped_pixels(src, k, nodata, progress) if area_weighted else None

    has_class = np.isfinite(values) & ((values != nodata) if nodata is not None else True)
    truth = field_class[owner]
    unknown = pd.Series([codes[i] for i in owner[truth < 0]], dtype=object).value_counts()
    scored = has_class & (truth >= 0)
    if not scored.any():
        raise DataError(
            f"no reference pixel of a class the map knows has a map class: {len(rows)} pixels in the "
            f"reference fields, {int(has_class.sum())} with a map class"
        )
    predicted = values[scored].astype(np.int64)
    report = accuracy_report(truth[scored], predicted, table)
    report.update(
        map=str(map_path),
        label_column=label_column,
        n_fields=len(np.unique(owner[scored])),
        unknown_classes={str(code): int(n) for code, n in unknown.items()},
        fields_without_label=int((~labelled).sum()),
        pixels_without_map_class=int((~has_class & (truth >= 0)).sum()),
        pixel_area_ha=hectares,
    )
    if per_field:
        fields_scored, index = np.unique(owner[scored], return_inverse=True)
        votes = np.bincount(index * k + predicted, minlength=len(fields_scored) * k).reshape(-1, k)
        report["per_field"] = accuracy_report(field_class[fields_scored], votes.argmax(axis=1), table)
    if mapped is not None:
        area = mapped * (hectares if hectares is not None else 1.0)
        report["area_unit"] = "ha" if hectares is not None else "pixels"
        try:
            report["area_weighted"] = area_weighted_report(
                report["confusion_matrix"], area, table, rows="reference"
            )
        except CropstarError as error:
            report["area_weighted"], report["area_weighted_problem"] = None, str(error)
    return report
