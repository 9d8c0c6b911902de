"""Ingestion: a Sentinel-2 cube and labelled field polygons → an on-disk training dataset.

Every pixel whose centre lies in a field becomes one sample: its P × P patch sequence on the
regular time grid (gap-filled), its validity mask, the field's class and id. The composited cube is
computed once, one source chunk at a time, into a scratch Zarr beside the output; patches are then
cut from it block by block while the dataset's shards are written, so memory depends on the chunk
size, not on the scene size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cropstar.data.class_table import ClassEntry, ClassTable, normalise_code
from cropstar.data.clouds import Condition
from cropstar.data.cube import Cube
from cropstar.data.dataset import DEFAULT_SHARD_SIZE, write_dataset
from cropstar.data.fields import FieldProblem, Fields, field_pixels, fields_outside
from cropstar.data.patches import extract_patches
from cropstar.data.regularise import gap_fill, n_valid_obs, regularise
from cropstar.data.splits import DEFAULT_FRACTIONS, split_by_field
from cropstar.errors import DataError, InputError

Progress = Callable[[str, int, int], None]
SCRATCH_CHUNK = 64  # pixels: spatial chunk of the materialised cube
#: The extra classes (code, name) of per-time-step labels for steps without a clear observation, by
#: the step's condition (``unobserved="conditions"``); ``unobserved="class"`` uses only the last.
CONDITION_CLASSES: dict[Condition, tuple[str, str]] = {
    Condition.CLOUD: ("cloud", "cloud"),
    Condition.SHADOW: ("cloud_shadow", "cloud shadow"),
    Condition.SNOW: ("snow", "snow / ice"),
    Condition.NO_DATA: ("no_data", "no data"),
    Condition.UNOBSERVED: ("unobserved", "cloud / no observation"),
}
UNOBSERVED_MODES = ("conditions", "class", "ignore")


@dataclass
class IngestReport:
    """What :func:`ingest` wrote and what it skipped."""

    path: Path
    samples: int
    fields: int
    classes: int
    problems: list[FieldProblem] = field(default_factory=list)
    pixels_without_observation: int = 0


class PatchStream:
    """Patches and masks of chosen pixels, cut when sliced: ``patches[a:b]`` then ``mask[a:b]``.

    ``stacked`` is (T, C + 1, Y, X) with the observation condition as the last band (0 = clear), so
    one read serves both.
    """

    def __init__(
        self, stacked: Any, rows: np.ndarray, cols: np.ndarray, patch_size: int, block_size: int
    ) -> None:
        self.stacked = stacked
        self.rows, self.cols, self.patch_size, self.block_size = rows, cols, patch_size, block_size
        t, c = stacked.shape[0], stacked.shape[1] - 1
        self.shape = (len(rows), t, c, patch_size, patch_size)
        self._cached: tuple[slice, np.ndarray] | None = None

    def _cut(self, part: slice) -> np.ndarray:
        if self._cached is None or self._cached[0] != part:
            block = extract_patches(
                self.stacked, self.rows[part], self.cols[part], self.patch_size, block_size=self.block_size
            )
            self._cached = (part, block)
        return self._cached[1]

    @property
    def patches(self) -> _Sliced:
        return _Sliced(self.shape, lambda part: self._cut(part)[:, :, :-1])

    @property
    def mask(self) -> _Sliced:
        return _Sliced(self.shape[:2], lambda part: self.conditions_of(part) == Condition.CLEAR)

    def conditions_of(self, part: slice) -> np.ndarray:
        """(n, T) uint8 conditions at the centres of the samples in ``part``."""
        centre = self.patch_size // 2
        return self._cut(part)[:, :, -1, centre, centre].astype(np.uint8)

    def conditions(self) -> np.ndarray:
        """(N, T) uint8 conditions at the samples' centres, read one scratch chunk at a time."""
        out = np.empty(self.shape[:2], np.uint8)
        per_row = self.stacked.shape[3] // SCRATCH_CHUNK + 1
        chunk_of = (self.rows // SCRATCH_CHUNK) * per_row + self.cols // SCRATCH_CHUNK
        for chunk in np.unique(chunk_of):
            members = np.flatnonzero(chunk_of == chunk)
            r0 = self.rows[members[0]] // SCRATCH_CHUNK * SCRATCH_CHUNK
            c0 = self.cols[members[0]] // SCRATCH_CHUNK * SCRATCH_CHUNK
            window = self.stacked[:, -1, r0 : r0 + SCRATCH_CHUNK, c0 : c0 + SCRATCH_CHUNK]
            out[members] = window[:, self.rows[members] - r0, self.cols[members] - c0].T
        return out


def _per_timestep_labels(
    stream: PatchStream, labels: np.ndarray, class_table: ClassTable, unobserved: str
) -> tuple[ClassTable, _Sliced]:
    """The class table with the condition classes that occur, and the (N, T) labels as a stream."""
    lookup = np.full(len(Condition), -1, np.int64)  # class id of each condition's steps
    conditions = None if unobserved == "ignore" else stream.conditions()
    entries = list(class_table)
    for condition in [] if conditions is None else np.unique(conditions[conditions != Condition.CLEAR]):
        code, name = CONDITION_CLASSES[
            Condition(condition) if unobserved == "conditions" else Condition.UNOBSERVED
        ]
        entry = next((e for e in entries if e.code == code), None)
        if entry is None:
            if code in class_table:
                raise DataError(f"class code {code!r} is both a crop class and a per-time-step condition")
            entry = ClassEntry(len(entries), code, name)
            entries.append(entry)
        lookup[condition] = entry.id

    def cut(part: slice) -> np.ndarray:
        state = stream.conditions_of(part) if conditions is None else conditions[part]
        return np.where(state == Condition.CLEAR, labels[part, None], lookup[state])

    return ClassTable(entries), _Sliced(stream.shape[:2], cut)


def materialise(
    cube: Cube, window: tuple[slice, slice], folder: Path, progress: Progress | None = None
) -> Any:
    """Compute ``cube`` inside ``window`` (rows, cols) once into a Zarr array in ``folder``:
    (T, C + 1, y, x) float32 with the observation condition (:class:`Condition`) as the last band.

    The work goes one source chunk (of the cube's dask chunking) at a time, so memory holds one
    chunk's computation whatever the scene size; the patches are then cut from this array
    without recomputing anything.
    """
    import zarr

    condition = cube.conditions.astype(np.float32).expand_dims(band=["condition"], axis=1)
    stacked = xr.concat([cube.data, condition], dim="band").isel(y=window[0], x=window[1])
    # small spatial chunks: a block window with its halo then decodes little beyond itself
    target = zarr.open_array(
        folder,
        mode="w",
        shape=stacked.shape,
        dtype="float32",
        chunks=(*stacked.shape[:2], SCRATCH_CHUNK, SCRATCH_CHUNK),
    )
    row_edges = np.cumsum([0, *(stacked.chunks[2] if stacked.chunks else [stacked.shape[2]])])
    col_edges = np.cumsum([0, *(stacked.chunks[3] if stacked.chunks else [stacked.shape[3]])])
    pieces = [(r, c) for r in range(len(row_edges) - 1) for c in range(len(col_edges) - 1)]
    for done, (r, c) in enumerate(pieces, start=1):
        rows, cols = slice(row_edges[r], row_edges[r + 1]), slice(col_edges[c], col_edges[c + 1])
        target[:, :, rows, cols] = stacked.isel(y=rows, x=cols).values
        if progress is not None:
            progress("reading the cube", done, len(pieces))
    return target


@dataclass
class _Sliced:
    shape: tuple[int, ...]
    cut: Callable[[slice], np.ndarray]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.cut(part)


def _label_fields(
    fields: Fields, label_column: str, class_table: ClassTable | None, name_column: str | None = None
) -> tuple[np.ndarray, ClassTable, list[FieldProblem]]:
    """Class id per field (−1 = skipped) and the problems found."""
    frame = fields.frame
    if label_column not in frame.columns:
        columns = ", ".join(c for c in frame.columns if c != "geometry")
        raise InputError(f"fields have no label column {label_column!r}; their columns are: {columns}")
    codes = [None if pd.isna(v) else normalise_code(v) for v in frame[label_column]]
    if class_table is None:
        names: dict[str, str] = {}
        if name_column is not None:
            if name_column not in frame.columns:
                raise InputError(f"fields have no name column {name_column!r}")
            for code, name in zip(codes, frame[name_column]):
                if code is not None and not pd.isna(name):
                    names.setdefault(code, str(name))
        class_table = ClassTable.from_codes((c for c in codes if c is not None), names)
    known = {code: i for i, code in enumerate(class_table.codes)}
    ids = np.full(len(frame), -1, dtype=np.int64)
    problems = []
    for i, (field_id, code) in enumerate(zip(frame["field_id"], codes)):
        if code is None:
            problems.append(FieldProblem(field_id, f"no value in {label_column!r}: skipped"))
        elif code not in known:
            problems.append(FieldProblem(field_id, f"class code {code!r} is not in the class table: skipped"))
        else:
            ids[i] = known[code]
    return ids, class_table, problems


@dataclass
class _Samples:
    """Labelled pixels of a cube: positions, class ids, field ids, and the problems met."""

    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray
    field_ids: np.ndarray
    class_table: ClassTable
    problems: list[FieldProblem]


def _samples_from_fields(
    cube: Cube, fields: Fields, label_column: str, class_table: ClassTable | None, name_column: str | None
) -> _Samples:
    problems = list(fields.problems)
    frame = fields.frame.reset_index(drop=True)
    class_ids, class_table, label_problems = _label_fields(fields, label_column, class_table, name_column)
    problems += label_problems
    grid = cube.grid
    outside = fields_outside(frame, grid.bounds, cube.crs)
    problems += [FieldProblem(fid, "outside the cube: skipped") for fid in frame["field_id"][outside]]
    usable = (class_ids >= 0) & ~outside
    frame, class_ids = frame[usable].reset_index(drop=True), class_ids[usable]
    if len(frame) == 0:
        raise DataError(_no_usable_field(problems))
    rows, cols, field_of_pixel = field_pixels(frame, grid.transform, grid.shape, cube.crs)
    covered = np.bincount(field_of_pixel, minlength=len(frame)) > 0
    problems += [FieldProblem(fid, "covers no pixel centre: skipped") for fid in frame["field_id"][~covered]]
    if not covered.any():
        raise DataError(_no_usable_field(problems))
    field_ids = frame["field_id"].to_numpy().astype(str)[field_of_pixel]
    return _Samples(rows, cols, class_ids[field_of_pixel], field_ids, class_table, problems)


#: Problems listed in the error when no field is usable; the rest are counted.
LISTED_PROBLEMS = 5


def _no_usable_field(problems: list[FieldProblem]) -> str:
    """The error when every field was skipped: each field id and why (the first few; then how many more)."""
    listed = [f"{p.field_id}: {p.problem}" for p in problems[:LISTED_PROBLEMS]]
    if len(problems) > LISTED_PROBLEMS:
        listed.append(f"… and {len(problems) - LISTED_PROBLEMS} more")
    return "no usable field, every one was skipped: " + "; ".join(listed)


def _raster_on_grid(path: Path, cube: Cube) -> tuple[np.ndarray, float | None]:
    """Band 1 of the raster at ``path`` on the cube's grid (nearest neighbour), and its nodata."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    if not Path(path).is_file():
        raise InputError(f"label raster not found: {path}")
    grid = cube.grid
    try:
        with rasterio.open(path) as src:
            nodata = src.nodata
            if src.crs == grid.crs and src.transform == grid.transform and src.shape == grid.shape:
                return src.read(1), nodata
            out = np.full(grid.shape, nodata if nodata is not None else -1, dtype=np.float64)
            reproject(
                rasterio.band(src, 1),
                out,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                resampling=Resampling.nearest,
                dst_nodata=nodata if nodata is not None else -1,
            )
            return out, nodata if nodata is not None else -1
    except rasterio.errors.RasterioError as error:
        raise InputError(f"cannot read label raster {path}: {error}") from error


def _samples_from_label_raster(
    cube: Cube, label_raster: Path, class_table: ClassTable | None, field_raster: Path | None
) -> _Samples:
    from scipy import ndimage

    codes, nodata = _raster_on_grid(label_raster, cube)
    labelled = np.isfinite(codes) & (codes != nodata) if nodata is not None else np.isfinite(codes)
    labelled &= codes >= 0
    rows, cols = np.nonzero(labelled)
    if len(rows) == 0:
        raise DataError(f"label raster {label_raster} has no labelled pixel inside the cube")
    pixel_codes = np.array([normalise_code(int(v)) for v in codes[rows, cols]])
    table = class_table or ClassTable.from_codes(np.unique(pixel_codes))
    known = {code: i for i, code in enumerate(table.codes)}
    labels = np.array([known.get(code, -1) for code in pixel_codes], dtype=np.int64)
    problems = [
        FieldProblem(f"pixels of code {code}", f"class code {code!r} is not in the class table: skipped")
        for code in sorted(set(pixel_codes) - set(known))
    ]
    if field_raster is not None:
        ids, id_nodata = _raster_on_grid(field_raster, cube)
        field_ids = np.array([str(int(v)) for v in ids[rows, cols]])
        no_field = ids[rows, cols] == id_nodata if id_nodata is not None else np.zeros(len(rows), bool)
    else:  # connected patches of one class stand in for fields, so neighbours never straddle splits
        component = np.zeros(codes.shape, dtype=np.int64)
        next_id = 0
        for code in np.unique(codes[labelled]):
            parts, count = ndimage.label(labelled & (codes == code), structure=np.ones((3, 3)))
            component[parts > 0] = parts[parts > 0] + next_id
            next_id += count
        field_ids = np.array([f"patch-{v}" for v in component[rows, cols]])
        no_field = np.zeros(len(rows), bool)
    keep = (labels >= 0) & ~no_field
    return _Samples(rows[keep], cols[keep], labels[keep], field_ids[keep], table, problems)


def ingest(
    cube: Cube,
    fields: Fields,
    label_column: str,
    out: Path | str,
    *,
    class_table: ClassTable | None = None,
    name_column: str | None = None,
    **options: Any,
) -> IngestReport:
    """Write the training dataset of ``cube`` × labelled ``fields`` to ``out``.

    ``label_column`` holds each field's class code; ``class_table`` (default: the codes found, in
    sorted order, named from ``name_column``) maps codes to ids. Fields outside the cube, without a
    label, with an unknown code or covering no pixel centre are skipped and reported.
    Options: see :func:`write_samples`.
    """
    samples = _samples_from_fields(cube, fields, label_column, class_table, name_column)
    return write_samples(cube, samples, out, provenance_extra={"label_column": label_column}, **options)


def ingest_label_raster(
    cube: Cube,
    label_raster: Path | str,
    out: Path | str,
    *,
    class_table: ClassTable | None = None,
    field_raster: Path | str | None = None,
    **options: Any,
) -> IngestReport:
    """Write the training dataset of ``cube`` × a label raster (class codes per pixel, nodata or
    negative = unlabelled; reprojected to the cube's grid by nearest neighbour) to ``out``.

    Field ids come from ``field_raster`` (one id per pixel) or, without one, from connected patches
    of one class, so that the field-wise split never puts neighbouring pixels of one patch in two
    splits. Options: see :func:`write_samples`.
    """
    samples = _samples_from_label_raster(
        cube, Path(label_raster), class_table, None if field_raster is None else Path(field_raster)
    )
    return write_samples(cube, samples, out, provenance_extra={"label_raster": str(label_raster)}, **options)


def write_samples(
    cube: Cube,
    samples: _Samples,
    out: Path | str,
    *,
    patch_size: int = 3,
    period: str | None = "10D",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    block_size: int = 128,
    task: str = "per_sequence",
    unobserved: str = "conditions",
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    provenance_extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Cut and write the samples' patch sequences.

    ``period``: the regular time grid ("10D", "MS", "dekad", …; None keeps the acquisitions);
    composites are medians of valid observations, gaps filled linearly. Pixels without any valid
    observation are skipped and counted. Splits are by field, stratified by class, seeded.
    ``task``: ``per_sequence`` (one label per sample) or ``per_timestep`` (the class on every valid
    step). A step without a clear observation gets, with ``unobserved="conditions"``, the extra class
    of its condition — cloud, cloud shadow, snow / ice, no data, or "cloud / no observation" where the
    cube does not say (:data:`CONDITION_CLASSES`; only those that occur are added), as in the paper's
    task A; with ``unobserved="class"`` the one class "cloud / no observation"; with
    ``unobserved="ignore"`` −1.
    """
    if task not in ("per_sequence", "per_timestep"):
        raise InputError(f"task must be 'per_sequence' or 'per_timestep', got {task!r}")
    if unobserved not in UNOBSERVED_MODES:
        raise InputError(f"unobserved must be one of {', '.join(UNOBSERVED_MODES)}; got {unobserved!r}")
    grid = cube.grid
    points = {"y": xr.DataArray(samples.rows, dims="sample"), "x": xr.DataArray(samples.cols, dims="sample")}
    counts = n_valid_obs(cube).isel(points).values  # only at the samples: no scene-sized result
    observed = counts > 0
    if not observed.any():
        raise DataError("no labelled pixel has a valid observation")
    rows, cols = samples.rows[observed], samples.cols[observed]
    order = np.lexsort((cols, rows, cols // block_size, rows // block_size))  # block by block
    rows, cols = rows[order], cols[order]
    counts = counts[observed][order]
    labels = samples.labels[observed][order]
    field_ids = samples.field_ids[observed][order]

    filled = gap_fill(cube if period is None else regularise(cube, period))
    split = split_by_field(field_ids, labels, fractions, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.cube-") as scratch:
        half = patch_size // 2  # the window around all samples, with the patches' halo
        r0, c0 = max(0, rows.min() - half), max(0, cols.min() - half)
        r1, c1 = min(grid.height, rows.max() + half + 1), min(grid.width, cols.max() + half + 1)
        stacked = materialise(
            filled, (slice(r0, r1), slice(c0, c1)), Path(scratch) / "stacked.zarr", progress
        )
        stream = PatchStream(stacked, rows - r0, cols - c0, patch_size, block_size)
        class_table = samples.class_table
        written_labels: Any = labels
        if task == "per_timestep":
            class_table, written_labels = _per_timestep_labels(stream, labels, class_table, unobserved)
        path = write_dataset(
            out,
            patches=stream.patches,
            mask=stream.mask,
            labels=written_labels,
            field_ids=field_ids,
            split=split,
            class_table=class_table,
            dates=list(filled.times),
            bands=list(filled.bands),
            n_valid_obs=counts,
            coords=np.column_stack(grid.transform * (cols + 0.5, rows + 0.5)),
            crs=cube.crs.to_string() if cube.crs is not None else None,
            provenance={
                "cube": cube.attrs,
                "period": period,
                "fractions": list(fractions),
                "seed": seed,
                "problems": [f"{p.field_id}: {p.problem}" for p in samples.problems],
                **(provenance_extra or {}),
                **(provenance or {}),
            },
            shard_size=shard_size,
            overwrite=overwrite,
            progress=progress,
        )
    return IngestReport(
        path=Path(path),
        samples=len(rows),
        fields=len(np.unique(field_ids)),
        classes=len(class_table),
        problems=samples.problems,
        pixels_without_observation=int((~observed).sum()),
    )
