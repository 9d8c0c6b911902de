"""On-disk datasets of patch sequences (docs/data-formats.md, "On-disk dataset"): a Zarr v3 group
whose arrays are chunked along N in shards, written atomically; a reader with the metadata; a
map-style torch ``Dataset`` streaming its shards.

- :func:`write_dataset` writes patches, masks, labels, field ids, splits and ``n_valid_obs`` shard
  by shard into a temporary folder beside the target, computes the per-band normalisation over
  the valid training steps and the content fingerprint on the way, and renames the folder when
  complete (a failure leaves no dataset; an existing one is replaced only with ``overwrite``).
- :func:`open_dataset` returns a :class:`DatasetReader` (metadata, arrays, shards) after checking
  the structure; :meth:`DatasetReader.validate` checks the content; :func:`info` summarises.
- :class:`PatchSequenceDataset` yields ``(x (T, C·P·P) float32 normalised, mask (T,) bool, label)``
  for one split, caching the last shard(s) read so sequential access reads each shard once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from cropstar.data.class_table import ClassTable
from cropstar.data.normalisation import BandStatistics, Normalisation
from cropstar.data.splits import SPLITS, split_code
from cropstar.errors import DataError, InputError
from cropstar.files import replace_folder

FORMAT = "cropstar-dataset"
VERSION = 1
DEFAULT_SHARD_SIZE = 4096
Task = Literal["per_sequence", "per_timestep"]
#: Arrays of a dataset, in fingerprint order, with their dtype kinds.
ARRAYS: tuple[str, ...] = ("patches", "mask", "labels", "field_ids", "split", "n_valid_obs", "coords")
_DTYPES: dict[str, str] = {
    "patches": "float32",
    "mask": "bool",
    "labels": "int64",
    "split": "uint8",
    "n_valid_obs": "int32",
    "coords": "float64",
}
REQUIRED_ATTRS = ("dates", "bands", "patch_size", "task", "class_table", "normalisation", "splits")
#: ``progress(stage, done, total)``, called by long-running functions.
ProgressCallback = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def iso_dates(dates: Sequence[Any] | np.ndarray) -> list[str]:
    """Dates (strings, datetime64, pandas timestamps) → ISO ``YYYY-MM-DD``, strictly increasing."""
    try:
        days = np.asarray([np.datetime64(str(d)[:10], "D") for d in dates])
    except ValueError as error:
        raise DataError(f"dates must be ISO dates like 2023-06-01: {error}") from None
    if days.size > 1 and np.any(np.diff(days).astype(np.int64) <= 0):
        at = int(np.flatnonzero(np.diff(days).astype(np.int64) <= 0)[0])
        raise DataError(f"dates must increase strictly: {days[at]} is followed by {days[at + 1]}")
    return [str(d) for d in days]


def is_dataset(path: Path) -> bool:
    """Whether ``path`` holds a complete cropstar dataset (its root metadata says so)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("attributes", {}).get("format") == FORMAT


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    empty_dir = path.is_dir() and not any(path.iterdir())
    if not (is_dataset(path) or empty_dir):
        raise InputError(f"refusing to overwrite {path}: it is not a cropstar dataset")


class _Fingerprint:
    """sha256 over the arrays' content: one digest per array (shape, dtype, bytes in C order), then
    one over the names and digests."""

    def __init__(self) -> None:
        self._hashes = {name: hashlib.sha256() for name in ARRAYS}

    def update(self, name: str, block: np.ndarray) -> None:
        self._hashes[name].update(np.ascontiguousarray(block).tobytes())

    def hexdigest(self, arrays: Mapping[str, Any]) -> str:
        total = hashlib.sha256()
        for name in ARRAYS:
            array = arrays[name]
            total.update(
                f"{name}:{array.dtype.str}:{tuple(array.shape)}:{self._hashes[name].hexdigest()}\n".encode()
            )
        return total.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_dataset(
    path: str | Path,
    *,
    patches: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    field_ids: Sequence[str] | np.ndarray,
    split: np.ndarray,
    class_table: ClassTable,
    dates: Sequence[Any],
    bands: Sequence[str],
    n_valid_obs: np.ndarray | None = None,
    coords: np.ndarray | None = None,
    crs: str | None = None,
    normalisation: Normalisation | None = None,
    provenance: Mapping[str, Any] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write a dataset folder at ``path`` atomically and return the path.

    ``patches`` (N, T, C, P, P) float32 reflectance; ``mask`` (N, T) bool (True = valid);
    ``labels`` (N,) or (N, T) int64 class ids (−1 = ignore); ``field_ids`` (N,); ``split`` (N,)
    0/1/2. Arrays are read shard by shard (any sliceable array works: numpy, memmap, zarr), so a
    dataset larger than memory streams through. ``normalisation`` defaults to the per-band
    statistics over the valid steps of the training split; ``n_valid_obs`` to ``mask.sum(1)``.
    """
    import zarr
    from zarr.errors import UnstableSpecificationWarning

    from cropstar import __version__

    path = Path(path)
    _check_target(path, overwrite)
    mask, labels, split = (a if hasattr(a, "shape") else np.asarray(a) for a in (mask, labels, split))
    if shard_size < 1:
        raise InputError(f"shard_size must be at least 1, got {shard_size}")
    if getattr(patches, "ndim", 0) != 5:
        raise DataError(f"patches must be (N, T, C, P, P), got shape {getattr(patches, 'shape', None)}")
    n, t, c, p, p2 = (int(v) for v in patches.shape)
    if n == 0:
        raise DataError("no samples to write: the dataset would be empty")
    if p != p2:
        raise DataError(f"patches must be square (P, P), got {p}×{p2}")
    date_list = iso_dates(dates)
    band_list = [str(b).strip() for b in bands]
    if len(date_list) != t:
        raise DataError(f"patches have T={t} time steps but {len(date_list)} dates were given")
    if len(band_list) != c:
        raise DataError(f"patches have C={c} bands but {len(band_list)} band names were given: {band_list}")
    if len(set(band_list)) != c or not all(band_list):
        raise DataError(f"band names must be unique and non-empty: {band_list}")
    field_ids = np.asarray(field_ids).astype(str)
    expected = {"mask": (n, t), "field_ids": (n,), "split": (n,)}
    given = {"mask": mask, "field_ids": field_ids, "split": split}
    if n_valid_obs is not None:
        expected["n_valid_obs"], given["n_valid_obs"] = (n,), n_valid_obs
    if coords is not None:
        expected["coords"], given["coords"] = (n, 2), coords
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise DataError(
                f"{name} must have shape {shape} to match patches {tuple(patches.shape)}, "
                f"got {tuple(given[name].shape)}"
            )
    if tuple(labels.shape) == (n,):
        task: Task = "per_sequence"
    elif tuple(labels.shape) == (n, t):
        task = "per_timestep"
    else:
        raise DataError(f"labels must be (N,) = ({n},) or (N, T) = ({n}, {t}), got {tuple(labels.shape)}")
    if normalisation is not None and normalisation.num_bands != c:
        raise DataError(f"normalisation has {normalisation.num_bands} bands, patches {c}")
    width = max(1, int(max((len(f) for f in field_ids), default=1)))
    num_classes = len(class_table)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; datasets are meant to be shared
        group = zarr.open_group(tmp, mode="w")
        shapes = {
            "patches": (n, t, c, p, p),
            "mask": (n, t),
            "labels": tuple(labels.shape),
            "field_ids": (n,),
            "split": (n,),
            "n_valid_obs": (n,),
            "coords": (n, 2),
        }
        dtypes = {**_DTYPES, "field_ids": f"<U{width}"}
        arrays = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnstableSpecificationWarning)  # fixed-width unicode field ids
            for name in ARRAYS:
                shape = shapes[name]
                arrays[name] = group.create_array(
                    name, shape=shape, chunks=(min(shard_size, n), *shape[1:]), dtype=dtypes[name]
                )
        stats = BandStatistics(c)
        fingerprint = _Fingerprint()
        counts = np.zeros(3, dtype=np.int64)
        num_shards = -(-n // shard_size)
        for shard in range(num_shards):
            start, stop = shard * shard_size, min(n, (shard + 1) * shard_size)
            block = {
                "patches": np.asarray(patches[start:stop], dtype=np.float32),
                "mask": np.asarray(mask[start:stop]).astype(bool),
                "labels": np.asarray(labels[start:stop]).astype(np.int64),
                "field_ids": field_ids[start:stop].astype(f"<U{width}"),
                "split": np.asarray(split[start:stop]),
            }
            block["n_valid_obs"] = (
                block["mask"].sum(axis=1) if n_valid_obs is None else np.asarray(n_valid_obs[start:stop])
            ).astype(np.int32)
            block["coords"] = (
                np.full((stop - start, 2), np.nan) if coords is None else np.asarray(coords[start:stop])
            ).astype(np.float64)
            bad = (block["labels"] < -1) | (block["labels"] >= num_classes)
            if bad.any():
                local = int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
                value = int(block["labels"][local].ravel()[bad[local].ravel()][0])
                row = start + local
                raise DataError(
                    f"label {value} of sample {row} (field {field_ids[row]}) is outside the "
                    f"class table (−1 or 0…{num_classes - 1})"
                )
            if not np.isin(block["split"], (0, 1, 2)).all():
                row = start + int(np.flatnonzero(~np.isin(block["split"], (0, 1, 2)))[0])
                raise DataError(
                    f"split {split[row]} of sample {row} (field {field_ids[row]}) is not 0, 1 or 2"
                )
            block["split"] = block["split"].astype(np.uint8)
            counts += np.bincount(block["split"], minlength=3)
            train = block["split"] == 0
            if normalisation is None and train.any():
                stats.update(block["patches"][train], block["mask"][train])
            for name in ARRAYS:
                arrays[name][start:stop] = block[name]
                fingerprint.update(name, block[name])
            if progress is not None:
                progress("writing shards", shard + 1, num_shards)
        if normalisation is None:
            if counts[0] == 0:
                raise DataError("no training samples (split 0): cannot compute normalisation statistics")
            normalisation = stats.result(band_list)
        attrs = {
            "format": FORMAT,
            "version": VERSION,
            "dates": date_list,
            "bands": band_list,
            "patch_size": p,
            "task": task,
            "crs": crs,
            "class_table": class_table.to_records(),
            "normalisation": normalisation.to_dict(),
            "splits": {name: int(counts[code]) for code, name in enumerate(SPLITS)},
            "shard_size": int(shard_size),
            "provenance": _jsonable(
                {
                    "cropstar_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    **(provenance or {}),
                }
            ),
            "fingerprint": fingerprint.hexdigest(arrays),
        }
        group.attrs.update(attrs)
        _replace(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` folder to ``path``, swapping out an old dataset only at the end."""
    if path.exists():
        _check_target(path, overwrite)
    replace_folder(tmp, path)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class DatasetReader:
    """An opened dataset: metadata attributes, arrays (zarr, lazy) and shard access.

    ``reader.shape`` is (N, T, C, P, P); ``dates``, ``bands``, ``class_table``, ``normalisation``,
    ``splits``, ``provenance``, ``fingerprint`` come from the group attributes.
    """

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"dataset not found: {self.path}")
        try:
            self._group = zarr.open_group(self.path, mode="r")
        except Exception as error:  # noqa: BLE001 - zarr raises many types for unreadable stores
            raise InputError(f"cannot open {self.path} as a Zarr dataset: {error}") from None
        self.attrs: dict[str, Any] = dict(self._group.attrs)
        problems = self._structure_problems()
        if problems:
            raise DataError(f"{self.path} is not a valid cropstar dataset: " + "; ".join(problems))
        self.dates: list[str] = list(self.attrs["dates"])
        self.bands: list[str] = list(self.attrs["bands"])
        self.patch_size: int = int(self.attrs["patch_size"])
        self.task: Task = self.attrs["task"]
        self.class_table = ClassTable.from_records(self.attrs["class_table"])
        self.normalisation = Normalisation.from_dict(self.attrs["normalisation"])
        self.splits: dict[str, int] = {k: int(v) for k, v in self.attrs["splits"].items()}
        self.provenance: dict[str, Any] = dict(self.attrs.get("provenance", {}))
        self.fingerprint: str = str(self.attrs.get("fingerprint", ""))
        n, t, c, p, _ = (int(v) for v in self.array("patches").shape)
        self.shape: tuple[int, int, int, int, int] = (n, t, c, p, p)
        self.shard_size: int = int(self.array("patches").chunks[0])

    def _structure_problems(self) -> list[str]:
        attrs = self.attrs
        if attrs.get("format") != FORMAT:
            return [f"format attribute is {attrs.get('format')!r}, expected {FORMAT!r}"]
        if attrs.get("version") != VERSION:
            return [f"version {attrs.get('version')!r} is not supported (this cropstar reads {VERSION})"]
        problems = [f"missing attribute {name!r}" for name in REQUIRED_ATTRS if name not in attrs]
        present = set(self._group.array_keys())
        problems += [f"missing array {name!r}" for name in ARRAYS if name not in present]
        if problems:
            return problems
        arrays = {name: self._group[name] for name in ARRAYS}
        shape = arrays["patches"].shape
        if len(shape) != 5:
            return [f"patches must be (N, T, C, P, P), found shape {shape}"]
        n, t, c, _, _ = shape
        want = {
            "patches": (
                n,
                len(attrs["dates"]),
                len(attrs["bands"]),
                attrs["patch_size"],
                attrs["patch_size"],
            ),
            "mask": (n, t),
            "labels": (n,) if attrs["task"] == "per_sequence" else (n, t),
            "field_ids": (n,),
            "split": (n,),
            "n_valid_obs": (n,),
        }
        if attrs["task"] not in ("per_sequence", "per_timestep"):
            problems.append(f"task {attrs['task']!r} is neither per_sequence nor per_timestep")
        for name, expected in want.items():
            if tuple(arrays[name].shape) != tuple(expected):
                problems.append(
                    f"array {name!r} has shape {tuple(arrays[name].shape)}, expected {tuple(expected)}"
                )
        for name, dtype in _DTYPES.items():
            if str(arrays[name].dtype) != dtype:
                problems.append(f"array {name!r} has dtype {arrays[name].dtype}, expected {dtype}")
        if arrays["field_ids"].dtype.kind != "U":
            problems.append(
                f"array 'field_ids' has dtype {arrays['field_ids'].dtype}, expected fixed-width unicode"
            )
        norm = attrs["normalisation"]
        if not isinstance(norm, dict) or any(len(norm.get(k, ())) != c for k in ("mean", "std")):
            problems.append(f"normalisation must hold 'mean' and 'std' for each of the {c} bands")
        try:
            ClassTable.from_records(attrs["class_table"])
        except DataError as error:
            problems.append(f"class table: {error}")
        return problems

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DatasetReader({str(self.path)!r}, shape={self.shape}, {len(self.class_table)} classes)"

    @property
    def num_shards(self) -> int:
        return -(-self.shape[0] // self.shard_size)

    def array(self, name: str) -> Any:
        """The zarr array ``name`` (one of :data:`ARRAYS`), read lazily."""
        if name not in ARRAYS:
            raise InputError(f"unknown dataset array {name!r}; arrays: {', '.join(ARRAYS)}")
        return self._group[name]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples ``start:stop`` of array ``name`` as numpy."""
        return np.asarray(self.array(name)[start:stop])

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.num_shards:
            raise InputError(f"shard {shard} outside 0…{self.num_shards - 1} of {self.path}")
        return shard * self.shard_size, min(self.shape[0], (shard + 1) * self.shard_size)

    def read_shard(self, shard: int, names: Sequence[str] = ARRAYS) -> dict[str, np.ndarray]:
        """All arrays (or ``names``) of one shard."""
        start, stop = self.shard_bounds(shard)
        return {name: self.read(name, start, stop) for name in names}

    def split_indices(self, split: str | None) -> np.ndarray:
        """Sample indices of one split (``"train"``, ``"val"``, ``"test"``; None = all), ascending."""
        if split is None:
            return np.arange(self.shape[0])
        return np.flatnonzero(self.read("split") == split_code(split))

    def validate(self) -> list[str]:
        """Check the content against the metadata; return the problems found (empty = valid):
        labels inside the class table, split codes and counts, no field in two splits, the fingerprint."""
        problems: list[str] = []
        k = len(self.class_table)
        fingerprint = _Fingerprint()
        counts = np.zeros(3, dtype=np.int64)
        field_split: dict[str, int] = {}
        for shard in range(self.num_shards):
            block = self.read_shard(shard)
            start, _ = self.shard_bounds(shard)
            for name in ARRAYS:
                fingerprint.update(name, block[name])
            labels = block["labels"].reshape(len(block["labels"]), -1)
            bad = np.flatnonzero(((labels < -1) | (labels >= k)).any(axis=1))
            if bad.size:
                row = int(bad[0])
                problems.append(
                    f"sample {start + row} (field {block['field_ids'][row]}) has a label outside "
                    f"−1…{k - 1}: {labels[row][(labels[row] < -1) | (labels[row] >= k)][0]}"
                )
            wrong = np.flatnonzero(block["split"] > 2)
            if wrong.size:
                problems.append(f"sample {start + int(wrong[0])} has split code {block['split'][wrong[0]]}")
            counts += np.bincount(np.minimum(block["split"], 2), minlength=3)
            for field, code in zip(block["field_ids"].tolist(), block["split"].tolist(), strict=True):
                if field_split.setdefault(field, code) != code:
                    first = field_split[field]
                    problems.append(
                        f"field {field} is in two splits ({SPLITS[min(first, 2)]} and {SPLITS[min(code, 2)]})"
                    )
                    field_split[field] = code
        found = {name: int(counts[code]) for code, name in enumerate(SPLITS)}
        if found != self.splits:
            problems.append(f"split sizes {found} differ from the recorded {self.splits}")
        digest = fingerprint.hexdigest({name: self.array(name) for name in ARRAYS})
        if self.fingerprint and digest != self.fingerprint:
            problems.append(
                f"content fingerprint {digest[:12]}… differs from the recorded {self.fingerprint[:12]}…"
            )
        return problems

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: shape, classes (with sample counts per split), bands, dates, splits,
        fields, valid fraction, normalisation, provenance."""
        k = len(self.class_table)
        per_split = np.zeros((3, k), dtype=np.int64)
        valid = 0
        fields: set[str] = set()
        for shard in range(self.num_shards):
            block = self.read_shard(shard, ("labels", "split", "mask", "field_ids"))
            labels = block["labels"].reshape(len(block["labels"]), -1)
            for code in range(3):
                rows = labels[block["split"] == code]
                for class_id in range(k):
                    per_split[code, class_id] += int((rows == class_id).any(axis=1).sum())
            valid += int(block["mask"].sum())
            fields.update(block["field_ids"].tolist())
        n, t = self.shape[:2]
        classes = [
            {
                **entry.to_dict(),
                "count": int(per_split[:, entry.id].sum()),
                **{name: int(per_split[code, entry.id]) for code, name in enumerate(SPLITS)},
            }
            for entry in self.class_table
        ]
        return {
            "path": str(self.path),
            "format": FORMAT,
            "version": VERSION,
            "shape": list(self.shape),
            "crs": self.attrs.get("crs"),
            "task": self.task,
            "patch_size": self.patch_size,
            "bands": self.bands,
            "dates": self.dates,
            "classes": classes,
            "splits": {name: int(self.splits.get(name, 0)) for name in SPLITS},
            "n_fields": len(fields),
            "valid_fraction": valid / (n * t) if n * t else 0.0,
            "normalisation": self.normalisation.to_dict(),
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "provenance": self.provenance,
            "fingerprint": self.fingerprint,
        }


#: The per-sample arrays :func:`copy_dataset` carries over.
SAMPLE_ARRAYS = tuple(name for name in ARRAYS if name != "split")


def copy_dataset(
    reader: DatasetReader,
    target: str | Path,
    split: np.ndarray,
    rows: np.ndarray | None = None,
    normalisation: Normalisation | None = None,
) -> Path:
    """A copy of ``reader``'s samples ``rows`` (default all) at ``target`` with new split codes
    ``split`` (one per kept sample): the same dates, bands, classes and provenance; normalisation
    recomputed on the new training samples unless ``normalisation`` is given."""
    rows = np.arange(len(reader)) if rows is None else np.asarray(rows)
    if len(split) != len(rows):
        raise InputError(f"copy of {reader.path}: {len(rows)} samples but {len(split)} split codes")
    arrays = {name: reader.read(name)[rows] for name in SAMPLE_ARRAYS}
    return write_dataset(
        target, **arrays, split=np.asarray(split, np.uint8), class_table=reader.class_table,
        dates=reader.dates, bands=reader.bands, crs=reader.attrs.get("crs"), normalisation=normalisation,
        provenance=reader.provenance, overwrite=True,
    )  # fmt: skip


def open_dataset(path: str | Path) -> DatasetReader:
    """Open the dataset folder ``path``: checks its structure (:meth:`DatasetReader.validate`
    checks the content)."""
    return DatasetReader(path)


def info(path: str | Path) -> dict[str, Any]:
    """The summary of the dataset at ``path`` (see :meth:`DatasetReader.info`)."""
    return open_dataset(path).info()


def validate_dataset(path: str | Path) -> list[str]:
    """The problems found in the dataset at ``path`` (empty = valid)."""
    return open_dataset(path).validate()


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------
class PatchSequenceDataset(Dataset):
    """One split of a stored dataset as a map-style torch ``Dataset``.

    Item ``i`` is ``(x, mask, label)``: x (T, C·P·P) float32 normalised with the dataset's
    per-band statistics (or ``normalisation``; values still NaN after gap-filling become 0, the
    band mean), flattened in C-order of (C, P, P); mask (T,) bool, True = valid step; label an int64
    scalar (per-sequence) or (T,) (per-timestep), −1 = ignore. Shards are read whole and the last
    ``cache_shards`` are kept, so sequential (or shard-sorted) access reads each shard once;
    ``shard_reads`` counts the reads. Safe with DataLoader workers (each opens its own reader).
    """

    def __init__(
        self,
        dataset: str | Path | DatasetReader,
        split: str | None = "train",
        *,
        normalise: bool = True,
        normalisation: Normalisation | None = None,
        cache_shards: int = 1,
    ) -> None:
        reader = dataset if isinstance(dataset, DatasetReader) else open_dataset(dataset)
        self.path = reader.path
        self.split = split
        self.indices = reader.split_indices(split)
        self.normalisation = (normalisation or reader.normalisation) if normalise else None
        if self.normalisation is not None and self.normalisation.num_bands != reader.shape[2]:
            raise DataError(
                f"normalisation has {self.normalisation.num_bands} bands, {reader.path} has {reader.shape[2]}"
            )
        self.shape = reader.shape
        self.task = reader.task
        self.class_table = reader.class_table
        self.dates = reader.dates
        self.bands = reader.bands
        self.shard_size = reader.shard_size
        self.cache_shards = max(1, int(cache_shards))
        self.shard_reads = 0
        self._reader: DatasetReader | None = reader
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def input_size(self) -> int:
        """Features per step, C·P·P."""
        _, _, c, p, _ = self.shape
        return c * p * p

    @property
    def seq_len(self) -> int:
        return self.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_table)

    def labels(self) -> np.ndarray:
        """The labels of this split's samples, (n,) or (n, T) int64 (for class weights, samplers)."""
        return self._open().read("labels")[self.indices]

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"], state["_cache"] = None, OrderedDict()
        return state

    def _open(self) -> DatasetReader:
        if self._reader is None:
            self._reader = open_dataset(self.path)
        return self._reader

    def _shard(self, shard: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        block = self._open().read_shard(shard, ("patches", "mask", "labels"))
        patches = block["patches"]
        if self.normalisation is not None:
            patches = self.normalisation.apply(patches)
        n, t = patches.shape[:2]
        x = np.nan_to_num(patches.reshape(n, t, -1), nan=0.0)
        entry = (
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(block["mask"].astype(bool)),
            torch.from_numpy(block["labels"].astype(np.int64)),
        )
        self.shard_reads += 1
        self._cache[shard] = entry
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return entry

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples ({self.split or 'all'})")
        row = int(self.indices[index])
        shard, local = divmod(row, self.shard_size)
        x, mask, labels = self._shard(shard)
        return x[local], mask[local], labels[local]
