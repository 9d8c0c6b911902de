"""Field-level predictions (DESIGN.md, "Data contracts": field predictions): the class probabilities
of every pixel whose centre lies in a field, aggregated per field (mean probability or majority vote),
with a status for each field that could not be classified instead of an error.

The cube is read only around the fields, one window of at most :data:`WINDOW` pixels at a time
(composited once per window by :func:`cropstar.data.ingest.materialise`, patches cut block by block),
so memory and work follow the fields, not the scene.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from cropstar.data.cube import Cube
from cropstar.data.fields import (
    ID_COLUMNS,
    Fields,
    Repair,
    check_fields,
    field_pixels,
    fields_outside,
    repair_polygons,
)
from cropstar.data.harmonise import Grid
from cropstar.data.ingest import PatchStream, materialise
from cropstar.errors import DataError, InputError
from cropstar.files import write_text_atomic
from cropstar.infer.cog import class_colour
from cropstar.infer.geojson import to_feature_collection
from cropstar.infer.predict import predict_patches, prepare_cube
from cropstar.model.artifact import LoadedModel

Progress = Callable[[str, int, int], None]
AGGREGATES = ("mean", "majority")
#: ``status`` values: classified, or why not.
STATUSES = ("ok", "outside_cube", "no_pixels", "no_valid_observations", "invalid_geometry")
#: The columns :func:`classify_fields` adds (input properties of the same name become ``input_<name>``).
RESULT_COLUMNS = (
    "crop", "crop_code", "crop_id", "crop_colour", "confidence", "probabilities", "n_pixels", "n_valid_obs",
    "model", "season", "status", "message",
)
#: File suffixes :func:`write_fields` writes, and their formats.
FORMATS = {".geojson": "geojson", ".json": "geojson", ".gpkg": "gpkg", ".parquet": "parquet", ".geoparquet": "parquet"}
#: Largest side (pixels) of one window of the cube read at a time.
WINDOW = 1024
PROBABILITY_DIGITS = 4


def classify_fields(
    model: LoadedModel,
    cube: Cube,
    fields: Fields | gpd.GeoDataFrame,
    *,
    aggregate: str = "mean",
    batch_size: int = 8192,
    season: int | tuple[Any, Any] | None = None,
    block_size: int = 128,
    scratch: Path | str | None = None,
    progress: Progress | None = None,
    repair: Repair = repair_polygons,
) -> gpd.GeoDataFrame:
    """The crop of every field: one row per input field, in input order, with its properties, its
    geometry (repaired where it was invalid; in the input CRS) and :data:`RESULT_COLUMNS`:

    - ``crop`` / ``crop_code`` / ``crop_id`` / ``crop_colour``: the chosen class's name, code, model id
      and colour in class maps ("#rrggbb");
    - ``probabilities``: {class code: aggregated probability} (rounded to 4 decimals) and
      ``confidence``: the chosen class's value there. ``aggregate="mean"``: the mean of the class
      probabilities of the field's pixels, the class of the largest mean; ``"majority"``: each pixel
      votes for its most probable class, ``probabilities`` are the vote shares, the most voted class
      wins (ties: the larger mean probability). Per-time-step models are read at their last step
      (the crop as the whole season shows it);
    - ``n_pixels``: the pixels used (centre inside the field — a pixel covered by overlapping fields
      counts in each, so a field's answer does not depend on the others — and at least one valid
      observation); ``n_valid_obs``: the mean number
      of the model's time steps with a valid observation over those pixels;
    - ``model`` ("name:version", else the artifact path), ``season`` (first/last day of the model's
      time grid in the cube's season, ISO interval);
    - ``status`` (:data:`STATUSES`) and ``message``: ``outside_cube``, ``no_pixels`` (no pixel centre
      inside), ``no_valid_observations`` (none of its pixels ever observed), ``invalid_geometry``
      (empty, not a polygon, not repairable) leave the crop columns null; a repaired geometry is
      ``ok`` with a message.

    ``fields``: checked :class:`Fields` (their skipped fields come back last, without geometry) or
    a GeoDataFrame with a CRS (checked here; ``field_id`` from the first of :data:`ID_COLUMNS`, else
    the row number). ``season``: a year or (start, end) to select the cube's acquisitions first (a
    date-only end is inclusive). ``scratch``: folder for the temporary composited windows (default:
    the system's temporary folder). ``progress(stage, done, total)``. ``repair``: how invalid
    geometries are repaired (:func:`cropstar.data.fields.check_fields`).
    """
    check_aggregate(aggregate)
    prepared = prepare_cube(model.card, in_season(cube, season))
    frame, usable, messages = checked_fields(fields, repair)
    located = locate_fields(frame, usable, prepared.grid, prepared.crs)
    probabilities, n_valid = _pixel_probabilities(
        model, prepared, located.rows, located.cols, batch_size=batch_size, block_size=block_size,
        scratch=scratch, progress=progress,
    )
    return field_table(model, frame, messages, located, probabilities, n_valid, season_interval(prepared),
                       aggregate)  # fmt: skip


def check_aggregate(aggregate: str) -> None:
    """InputError unless ``aggregate`` is one of :data:`AGGREGATES`."""
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")


@dataclass(frozen=True)
class LocatedFields:
    """Where the fields fall on a grid: ``status`` per field ("ok", "invalid_geometry" or
    "outside_cube" so far) and the pixels (``rows``, ``cols``) whose centres lie in a field, with
    the field (row of the frame) each belongs to (``owner``); a pixel in overlapping fields is
    listed once for each."""

    status: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    owner: np.ndarray
    resolution: float


def locate_fields(frame: gpd.GeoDataFrame, usable: np.ndarray, grid: Grid, crs: Any) -> LocatedFields:
    """The pixels of ``grid`` (in ``crs``) inside each usable field of ``frame``
    (:func:`checked_fields`), and which fields lie outside the grid."""
    status = np.where(usable, "ok", "invalid_geometry").astype(object)
    candidates = np.flatnonzero(usable)
    projected = frame.geometry.iloc[candidates].to_crs(crs)  # once, and geometries only: cheaper
    outside = fields_outside(projected, grid.bounds, crs)
    status[candidates[outside]] = "outside_cube"
    inside = candidates[~outside]
    rows, cols, which = field_pixels(projected.iloc[~outside], grid.transform, grid.shape, crs, overlaps="each")
    return LocatedFields(status, rows, cols, inside[which], float(grid.resolution[0]))


def field_table(
    model: LoadedModel,
    frame: gpd.GeoDataFrame,
    messages: list[str | None],
    located: LocatedFields,
    probabilities: np.ndarray,
    n_valid: np.ndarray,
    season: str,
    aggregate: str,
) -> gpd.GeoDataFrame:
    """The result table of :func:`classify_fields` from the located fields' pixel ``probabilities``
    (N, K) and valid steps ``n_valid`` (N,): statuses and their messages, aggregated scores and the
    chosen classes, joined to the input properties (:func:`join_results`)."""
    n, owner, status = len(frame), located.owner, located.status.copy()
    used = n_valid > 0
    n_total = np.bincount(owner, minlength=n)
    n_pixels = np.bincount(owner[used], minlength=n)
    status[(status == "ok") & (n_total == 0)] = "no_pixels"
    status[(status == "ok") & (n_pixels == 0)] = "no_valid_observations"
    scores, chosen = aggregate_probabilities(probabilities[used], owner[used], n, aggregate)
    mean_obs = np.bincount(owner[used], weights=n_valid[used], minlength=n) / np.maximum(n_pixels, 1)
    reasons = {
        "outside_cube": "the field lies outside the cube",
        "no_pixels": f"no pixel centre lies inside the field ({located.resolution:g} m pixels): too small "
        "or too thin",
        "no_valid_observations": f"none of the field's pixels has a valid observation in {season}",
    }
    card = model.card
    label = f"{card.name}:{card.version}" if card.version else str(model.path)
    results = []
    for i in range(n):
        row: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS)
        row.update(
            n_pixels=int(n_pixels[i]), model=label, season=season, status=status[i],
            message=reasons.get(status[i], messages[i]),
        )
        if status[i] == "ok":
            entry = card.class_table[int(chosen[i])]
            shares = {e.code: round(float(scores[i, e.id]), PROBABILITY_DIGITS) for e in card.class_table}
            row.update(
                crop=entry.name, crop_code=entry.code, crop_id=entry.id, crop_colour=class_colour(entry.id),
                confidence=shares[entry.code],
                probabilities=shares, n_valid_obs=round(float(mean_obs[i]), 2),
            )
        results.append(row)
    return join_results(frame, pd.DataFrame(results, columns=list(RESULT_COLUMNS)))


def in_season(cube: Cube, season: int | tuple[Any, Any] | None) -> Cube:
    """The cube's acquisitions in ``season`` (a year, or inclusive (start, end))."""
    if season is None:
        return cube
    start, end = (f"{season}-01-01", f"{season}-12-31") if isinstance(season, int) else season
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if end == end.normalize():
        end += pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    keep = np.flatnonzero((cube.times >= start) & (cube.times <= end))
    if len(keep) == 0:
        raise DataError(f"the cube has no acquisition between {start.date()} and {end.date()}")
    return cube.isel(time=keep)


def checked_fields(
    fields: Fields | gpd.GeoDataFrame, repair: Repair = repair_polygons
) -> tuple[gpd.GeoDataFrame, np.ndarray, list[str | None]]:
    """All fields (input order; those :class:`Fields` skipped appended without geometry), which are
    usable polygons, and the geometry check's message of each (None: nothing to say); a
    GeoDataFrame's invalid geometries are repaired with ``repair``."""
    if isinstance(fields, Fields):
        frame = fields.frame.reset_index(drop=True)
        said = {p.field_id: p.problem for p in fields.problems}
        present = set(frame["field_id"])
        skipped = [p for p in fields.problems if p.field_id not in present]
        if skipped:
            lost = gpd.GeoDataFrame({"field_id": [p.field_id for p in skipped]}, geometry=[None] * len(skipped),
                                    crs=frame.crs)
            frame = pd.concat([frame, lost], ignore_index=True)
        usable = np.arange(len(frame)) < len(fields.frame)
        return frame, usable, [said.get(field_id) for field_id in frame["field_id"]]
    if not isinstance(fields, gpd.GeoDataFrame):
        raise InputError(f"fields must be Fields or a GeoDataFrame, got {type(fields).__name__}")
    if fields.crs is None:
        raise InputError("fields have no coordinate reference system (GeoJSON: set EPSG:4326)")
    frame = fields.reset_index(drop=True)
    if "field_id" not in frame.columns:
        found = next((c for c in ID_COLUMNS if c in frame.columns), None)
        frame["field_id"] = frame[found].astype(str) if found else [str(i) for i in range(len(frame))]
    probe = gpd.GeoDataFrame({"field_id": [str(i) for i in range(len(frame))]}, geometry=frame.geometry.values,
                             crs=frame.crs)
    checked = check_fields(probe, repair)
    kept = checked.frame["field_id"].astype(int).to_numpy()
    geometry = frame.geometry.copy()
    geometry.iloc[kept] = checked.frame.geometry.values
    frame = frame.set_geometry(geometry)
    usable = np.zeros(len(frame), bool)
    usable[kept] = True
    messages: list[str | None] = [None] * len(frame)
    for problem in checked.problems:
        messages[int(problem.field_id)] = problem.problem
    return frame, usable, messages


def _pixel_probabilities(
    model: LoadedModel, prepared: Cube, rows: np.ndarray, cols: np.ndarray, *, batch_size: int,
    block_size: int, scratch: Path | str | None, progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) class probabilities (NaN where a pixel has no valid observation) and (N,) valid steps of
    the pixels (rows, cols) of the prepared cube, composited one window at a time; a pixel listed
    more than once (overlapping fields) is classified once."""
    pixels, listed = np.unique(np.stack([rows, cols]), axis=1, return_inverse=True)
    if pixels.shape[1] < len(rows):
        probabilities, n_valid = _pixel_probabilities(
            model, prepared, pixels[0], pixels[1], batch_size=batch_size, block_size=block_size,
            scratch=scratch, progress=progress,
        )  # fmt: skip
        return probabilities[listed.ravel()], n_valid[listed.ravel()]
    k = model.card.architecture.num_classes
    probabilities = np.full((len(rows), k), np.nan, np.float32)
    n_valid = np.zeros(len(rows), np.int64)
    if len(rows) == 0:
        return probabilities, n_valid
    half, (height, width) = model.card.patch_size // 2, prepared.grid.shape
    window_of = (rows // WINDOW) * (width // WINDOW + 1) + cols // WINDOW
    order = np.lexsort((cols, rows, cols // block_size, rows // block_size, window_of))  # block by block
    windows = np.split(order, np.flatnonzero(np.diff(window_of[order])) + 1)
    done = 0
    with tempfile.TemporaryDirectory(dir=scratch, prefix="cropstar-fields-") as tmp:
        for number, members in enumerate(windows, start=1):
            r, c = rows[members], cols[members]
            r0, c0 = max(0, r.min() - half), max(0, c.min() - half)
            r1, c1 = min(height, r.max() + half + 1), min(width, c.max() + half + 1)
            stage = "reading the cube" + (f" ({number}/{len(windows)})" if len(windows) > 1 else "")
            folder = Path(tmp) / f"window-{number}.zarr"
            stacked = materialise(
                prepared, (slice(r0, r1), slice(c0, c1)), folder,
                None if progress is None else lambda _, i, total, stage=stage: progress(stage, i, total),
            )
            stream = PatchStream(stacked, r - r0, c - c0, model.card.patch_size, block_size)
            for start in range(0, len(members), batch_size):
                part = slice(start, start + batch_size)
                patches, mask = stream.patches[part], stream.mask[part]
                n_valid[members[part]] = mask.sum(axis=1)
                seen = mask.any(axis=1)
                if seen.any():
                    predicted = predict_patches(model, patches[seen], mask[seen], batch_size=batch_size)
                    probabilities[members[part][seen]] = predicted[:, -1] if predicted.ndim == 3 else predicted
                done += len(patches)
                if progress is not None:
                    progress("classifying pixels", done, len(rows))
            shutil.rmtree(folder, ignore_errors=True)
    return probabilities, n_valid


def aggregate_probabilities(
    probabilities: np.ndarray, owner: np.ndarray, n: int, aggregate: str
) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) per-field scores — mean probabilities, or vote shares — and the chosen class of each
    field: the largest score (votes: ties go to the larger mean, which adds less than one vote)."""
    k = probabilities.shape[1]
    counts = np.maximum(np.bincount(owner, minlength=n), 1)[:, None]
    sums = np.stack([np.bincount(owner, weights=probabilities[:, j], minlength=n) for j in range(k)], axis=1)
    means = sums.reshape(n, k) / counts
    if aggregate == "mean":
        return means, means.argmax(axis=1)
    votes = np.bincount(owner * k + probabilities.argmax(axis=1), minlength=n * k).reshape(n, k)
    return votes / counts, np.argmax(votes + means, axis=1)


def season_interval(prepared: Cube) -> str:
    """First/last day of the prepared cube's time grid as an ISO interval."""
    first = prepared.times[0]
    end = prepared.attrs.get("regularisation", {}).get("end")
    last = pd.Timestamp(end) - pd.Timedelta(days=1) if end else prepared.times[-1]
    return f"{first.date()}/{last.date()}"


def input_names(properties: Iterable[str]) -> dict[str, str]:
    """Renames that keep input properties apart from the result columns: a property named like a
    result column ``x`` becomes ``input_x``; an ``input_x`` it would meet becomes ``input_input_x``,
    and so on."""
    names, renames = set(properties), {}
    for column in RESULT_COLUMNS:
        chain = [column] if column in names else []
        while chain and f"input_{chain[-1]}" in names:
            chain.append(f"input_{chain[-1]}")
        renames.update({name: f"input_{name}" for name in chain})
    return renames


def join_results(frame: gpd.GeoDataFrame, results: pd.DataFrame) -> gpd.GeoDataFrame:
    """Input properties (renamed by :func:`input_names`), results, geometry."""
    properties = frame.drop(columns=frame.geometry.name)
    properties = properties.rename(columns=input_names(properties.columns))
    results["crop_id"] = results["crop_id"].astype("Int64")
    results["confidence"] = results["confidence"].astype(float)
    results["n_valid_obs"] = results["n_valid_obs"].astype(float)
    joined = pd.concat([properties, results], axis=1)
    return gpd.GeoDataFrame(joined, geometry=frame.geometry.values, crs=frame.crs)


def output_format(path: Path | str) -> str:
    """The format :func:`write_fields` writes to ``path`` ("geojson", "gpkg", "parquet"), by suffix;
    InputError for any other suffix (check before the work)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot write fields to {path}: use .geojson, .gpkg or .parquet")
    return FORMATS[suffix]


def write_fields(frame: gpd.GeoDataFrame, path: Path | str) -> Path:
    """Write field predictions by ``path``'s suffix, atomically: ``.geojson`` / ``.json`` (RFC 7946:
    :func:`cropstar.infer.geojson.to_feature_collection`, ``probabilities`` a JSON object), ``.gpkg``
    or ``.parquet`` (GeoParquet); in the last two ``probabilities`` is JSON text."""
    path = Path(path)
    kind = output_format(path)
    if kind == "geojson":
        text = json.dumps(to_feature_collection(frame), ensure_ascii=False, separators=(",", ":"))
        return write_text_atomic(path, text + "\n")
    flat = frame.copy()
    for column in flat.columns:
        if column != flat.geometry.name and flat[column].map(lambda v: isinstance(v, (dict, list))).any():
            flat[column] = [None if v is None else json.dumps(v) for v in flat[column]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{path.suffix}")
    try:
        if kind == "gpkg":
            flat.to_file(tmp, driver="GPKG", layer=path.stem)
        else:
            flat.to_parquet(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
