"""Importers of point extractions into the on-disk dataset format (docs/data-formats.md): WorldCereal
extractions (long or wide parquet, ``ewoc_code`` labels named from the legend) and generic tables
(CSV / TSV / Parquet; one row per sample with T×C value columns, or one row per sample and date).

The features are any named column families (:mod:`cropstar.data.features`): Sentinel-2 bands (as
any provider spells them; digital numbers become reflectance), spectral indices, Sentinel-1 VV / VH,
meteorology or anything else, taken as given. Point samples become P = 1 patches. The time axis is
every distinct date of the file; a step is valid where its row exists and every selected
Sentinel-2 feature (band or index; without any, every feature) holds a value (not no-data, not
NaN); invalid steps are masked, and each feature's gaps are filled linearly in time from its own
observations (nearest value at the edges). Samples with no valid step, a feature without any value,
a missing label or a class code the legend / class table does not know are skipped and
reported by sample and field; classes under ``min_samples`` are dropped and reported; the rest is
split by field (stratified, seeded) and written with :func:`cropstar.data.dataset.write_dataset`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cropstar.data.bands import DEFAULT_BANDS
from cropstar.data.class_table import ClassTable, normalise_code, read_legend
from cropstar.data.dataset import DEFAULT_SHARD_SIZE, ProgressCallback, Task, write_dataset
from cropstar.data.features import (
    SPECTRAL_INDICES,
    canonical_feature,
    canonical_features,
    feature_kind,
    index_values,
    spectral_index,
)
from cropstar.data.regularise import fill_linear
from cropstar.data.splits import (
    DEFAULT_FRACTIONS,
    SPLITS,
    check_fractions,
    split_by_field,
    split_class_counts,
)
from cropstar.errors import CropstarError, DataError, InputError
from cropstar.files import file_sha256

#: WorldCereal extractions: uint16 reflectance × 10000, already offset-corrected; 65535 = no data.
WORLDCEREAL_NODATA = 65535
WORLDCEREAL_SCALE = 1e-4


def _worldcereal_backscatter(dn: np.ndarray) -> np.ndarray:
    """WorldCereal's compressed Sentinel-1 σ0 (uint16) → dB: 20 log10(DN) − 83."""
    return 20.0 * np.log10(dn) - 83.0


def _hundredths(value: np.ndarray) -> np.ndarray:
    return value / 100.0


def worldcereal_decoders(features: Sequence[str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """How WorldCereal extractions store the features other than reflectance: Sentinel-1 VV / VH
    compressed (dB = 20 log10(DN) − 83), AgERA5 meteorology (``AGERA5-*``, ``METEO-*``) × 100;
    the rest (slope, elevation) as they are."""
    decoders: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for feature in features:
        if feature_kind(feature) == "backscatter":
            decoders[feature] = _worldcereal_backscatter
        elif feature.upper().startswith(("AGERA5-", "METEO-")):
            decoders[feature] = _hundredths
    return decoders
#: What to do with samples whose class code the legend (or a given class table) lacks.
UnknownCodes = Literal["skip", "error", "keep"]
TableLayout = Literal["auto", "wide", "long"]

ID_COLUMNS = ("sample_id", "id", "point_id")
FIELD_COLUMNS = ("field_id", "parcel_id", "field")
DATE_COLUMNS = ("date", "timestamp", "time", "acquisition_date")
_WIDE = (
    re.compile(r"^(?P<band>.+?)[-_]ts(?P<t>\d+)(?:[-_]\d+m)?$", re.IGNORECASE),
    re.compile(r"^(?P<band>.+?)[-_](?P<t>\d+)$"),
)


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out of the dataset and why."""

    sample_id: str
    field_id: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.sample_id} (field {self.field_id}): {self.reason}"


@dataclass
class PointSamples:
    """Samples as read, before gap-filling: ``values`` (N, T, C) float32 reflectance (NaN = none),
    ``valid`` (N, T), ``codes`` (N,) or (N, T) raw class codes (None = missing), ids, dates, bands."""

    values: np.ndarray
    valid: np.ndarray
    codes: np.ndarray
    sample_ids: np.ndarray
    field_ids: np.ndarray
    dates: list[str]
    bands: list[str]
    scale: float = 1.0
    skipped: list[SkippedSample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: (N,) rows already reported in ``skipped`` while reading
    excluded: np.ndarray | None = None
    #: (N, 2) longitude, latitude (WGS 84) where the file has ``lon`` / ``lat`` columns
    coords: np.ndarray | None = None

    def keep(self, rows: np.ndarray) -> None:
        self.values, self.valid, self.codes = self.values[rows], self.valid[rows], self.codes[rows]
        self.sample_ids, self.field_ids = self.sample_ids[rows], self.field_ids[rows]
        self.excluded = None if self.excluded is None else self.excluded[rows]
        self.coords = None if self.coords is None else self.coords[rows]


def _lon_lat(df: pd.DataFrame, sample_index: np.ndarray | None = None) -> np.ndarray | None:
    """(N, 2) lon/lat per sample from ``lon`` / ``lat`` columns (first row of each sample), if present."""
    if not {"lon", "lat"} <= set(df.columns):
        return None
    values = df[["lon", "lat"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if sample_index is None:
        return values
    return pd.DataFrame(values).groupby(sample_index).first().to_numpy(dtype=np.float64)


@dataclass
class ImportReport:
    """What an importer wrote and what it left out."""

    out: Path
    source: Path
    shape: tuple[int, ...]
    dates: list[str]
    bands: list[str]
    class_table: ClassTable
    class_counts: dict[str, list[int]]
    splits: dict[str, int]
    valid_fraction: float
    skipped: list[SkippedSample]
    dropped_classes: list[dict[str, Any]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "source": str(self.source),
            "shape": list(self.shape),
            "dates": [self.dates[0], self.dates[-1]] if self.dates else [],
            "n_dates": len(self.dates),
            "bands": self.bands,
            "classes": [
                {**e.to_dict(), **{s: self.class_counts[s][e.id] for s in SPLITS}} for e in self.class_table
            ],
            "splits": self.splits,
            "valid_fraction": self.valid_fraction,
            "skipped": [
                {"sample_id": s.sample_id, "field_id": s.field_id, "reason": s.reason} for s in self.skipped
            ],
            "dropped_classes": self.dropped_classes,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------
# reading tables
# ---------------------------------------------------------------------------------------------
def read_table(path: Path) -> pd.DataFrame:
    """A CSV (``,`` or ``;``), TSV or Parquet file as a DataFrame; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    suffix = "".join(path.suffixes[-1:]).lower()
    try:
        if suffix in (".parquet", ".geoparquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".tsv", ".tab"):
            return pd.read_csv(path, sep="\t")
        if suffix == ".csv":
            with open(path, encoding="utf-8-sig", errors="replace") as handle:
                header = handle.readline()
            return pd.read_csv(
                path, sep=";" if header.count(";") > header.count(",") else ",", encoding="utf-8-sig"
            )
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - pyarrow raises its own types for corrupt parquet
        raise InputError(f"cannot read {path}: {type(error).__name__}: {error}") from None
    raise InputError(f"{path}: unknown table format {suffix!r}; expected .csv, .tsv or .parquet")


def _pick(
    columns: Sequence[str],
    given: str | None,
    candidates: Sequence[str],
    what: str,
    path: Path,
    required: bool,
) -> str | None:
    if given is not None:
        if given not in columns:
            raise InputError(f"{path} has no {what} column {given!r}; columns: {_list(columns)}")
        return given
    for candidate in candidates:
        if candidate in columns:
            return candidate
    if required:
        raise InputError(f"{path}: no {what} column (looked for {', '.join(candidates)}); name it explicitly")
    return None


def _list(items: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in list(items)[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _wanted_features(features: Sequence[str] | None) -> list[str]:
    return canonical_features(features or DEFAULT_BANDS, "bands")


def _features_to_read(bands: Sequence[str] | None, indices: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(the features to read from the table, the dataset's features): the ``bands``, then the
    spectral ``indices`` computed from them; a band an index needs but ``bands`` leaves out is read
    for it only. InputError names an index also listed among the bands."""
    wanted = _wanted_features(bands)
    names = list(dict.fromkeys(spectral_index(name).name for name in indices or []))
    twice = [name for name in names if name in wanted]
    if twice:
        raise InputError(f"{', '.join(twice)} listed both as a band column and as an index to compute")
    extra = [band for name in names for band in SPECTRAL_INDICES[name].bands if band not in wanted]
    return [*wanted, *dict.fromkeys(extra)], [*wanted, *names]


def _with_indices(samples: PointSamples, features: list[str]) -> None:
    """Append to ``samples`` the spectral indices among ``features`` (computed from each step's
    own reflectance, before gap filling) and keep only ``features``, in that order."""
    names = [f for f in features if f not in samples.bands]
    if not names and features == samples.bands:
        return
    values = np.concatenate([samples.values, index_values(samples.values, samples.bands, names)], axis=-1)
    order = [[*samples.bands, *names].index(f) for f in features]
    samples.values, samples.bands = values[..., order], list(features)
    samples.valid = samples.valid & _valid_steps(samples.values, features)


def _feature_key(name: str) -> str | None:
    """How a column (group) name is matched to a wanted feature: its canonical name, case-folded for
    features outside the known families; None for a name that cannot be a feature."""
    try:
        feature = canonical_feature(name)
    except CropstarError:
        return None
    return feature.casefold() if feature_kind(feature) == "other" else feature


def _long_band_columns(columns: Sequence[str], wanted: list[str], path: Path) -> list[str]:
    keys = {_feature_key(feature): feature for feature in wanted}
    found: dict[str, str] = {}
    for column in columns:
        feature = keys.get(_feature_key(str(column)))
        if feature is not None:
            if feature in found:
                raise InputError(f"{path}: columns {found[feature]!r} and {column!r} both hold {feature}")
            found[feature] = column
    missing = [f for f in wanted if f not in found]
    if missing:
        raise DataError(
            f"{path}: no column for {', '.join(missing)}; columns: {_list([str(c) for c in columns])}"
        )
    return [found[f] for f in wanted]


def _wide_band_columns(
    columns: Sequence[str], wanted: list[str], path: Path
) -> tuple[list[list[str]], list[str]]:
    """(C lists of T column names, names of ignored column groups)."""
    keys = {_feature_key(feature): feature for feature in wanted}
    steps: dict[str, dict[int, str]] = {}
    groups: set[str] = set()
    for column in columns:
        for pattern in _WIDE:
            match = pattern.match(str(column))
            if match:
                groups.add(match.group("band"))
                feature = keys.get(_feature_key(match.group("band")))
                if feature is not None:
                    t = int(match.group("t"))
                    if t in steps.setdefault(feature, {}):
                        raise InputError(
                            f"{path}: columns {steps[feature][t]!r} and {column!r} both hold {feature} "
                            f"at step {t}"
                        )
                    steps[feature][t] = column
                break
    missing = [f for f in wanted if f not in steps]
    if missing:
        raise DataError(
            f"{path}: no wide columns (like {missing[0]}_0 or {missing[0]}-ts0) for {', '.join(missing)}; "
            f"column groups found: {_list(sorted(groups)) or 'none'}"
        )
    num_steps = max(max(s) for s in steps.values()) + 1
    for feature in wanted:
        absent = [t for t in range(num_steps) if t not in steps[feature]]
        if absent:
            raise DataError(
                f"{path}: {feature} has no column for time step(s) {_list(absent)} of 0…{num_steps - 1}"
            )
    ignored = sorted(g for g in groups if _feature_key(g) not in keys)
    return [[steps[f][t] for t in range(num_steps)] for f in wanted], ignored


def _numeric(df: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    """The ``columns`` as float64 (rows, len(columns)); a non-numeric value raises DataError naming
    its column."""
    try:
        return df[columns].to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        for column in columns:
            converted = pd.to_numeric(df[column], errors="coerce")
            bad = converted.isna() & df[column].notna()
            if bad.any():
                raise DataError(
                    f"{path}: column {column!r} holds non-numeric values, e.g. {df[column][bad].iloc[0]!r} "
                    f"(row {bad.idxmax()})"
                ) from None
        raise


def _scaled(
    values: np.ndarray,
    nodata: float | None,
    scale: float | None,
    notes: list[str],
    features: Sequence[str],
    decoders: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> tuple[np.ndarray, float]:
    """Values (float64, features on the last axis) → float32 with NaN for no data. Sentinel-2
    reflectance features × ``scale`` (None: × 1e-4 when their valid values look like digital numbers,
    i.e. their median exceeds 1.5); a feature with a decoder goes through it; the rest as given."""
    values = values.copy()
    if nodata is not None:
        values[values == nodata] = np.nan
    reflectance = np.array([feature_kind(f) == "reflectance" for f in features])
    if scale is None:
        finite = values[..., reflectance]
        finite = finite[np.isfinite(finite)]
        if finite.size and float(np.median(finite)) > 1.5:
            scale = 1e-4
            notes.append(
                "reflectance values look like digital numbers (median > 1.5): reflectance = value / 10000 "
                "(pass scale to override)"
            )
        else:
            scale = 1.0
    values[..., reflectance] *= scale
    for i, feature in enumerate(features):
        decode = (decoders or {}).get(feature)
        if decode is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                decoded = decode(values[..., i])
            values[..., i] = np.where(np.isfinite(decoded), decoded, np.nan)
    return values.astype(np.float32), scale


def _codes(series: pd.Series) -> np.ndarray:
    """Raw labels → normalised code strings (object array, None where missing)."""
    index, unique = pd.factorize(series)

    def code(value: Any) -> str | None:
        try:
            return normalise_code(value)
        except DataError:
            return None

    lookup = np.array([*(code(v) for v in unique), None], dtype=object)
    return lookup[index]  # index −1 (missing) picks the trailing None


def _long_samples(
    df: pd.DataFrame,
    path: Path,
    *,
    id_column: str,
    date_column: str,
    label_column: str,
    field_column: str | None,
    band_columns: list[str],
    bands: list[str],
    nodata: float | None,
    scale: float | None,
    task: Task,
    decoders: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> PointSamples:
    notes: list[str] = []
    try:
        days = pd.to_datetime(df[date_column]).dt.normalize()
    except (ValueError, TypeError) as error:
        raise DataError(f"{path}: column {date_column!r} does not hold dates: {error}") from None
    if days.isna().any():
        raise DataError(f"{path}: column {date_column!r} has {int(days.isna().sum())} empty dates")
    if days.dt.tz is not None:
        days = days.dt.tz_convert(None)
    sample_index, sample_ids = pd.factorize(df[id_column].astype(str), sort=True)
    dates = np.sort(days.unique().to_numpy())
    t_index = np.searchsorted(dates, days.to_numpy())
    n, t = len(sample_ids), len(dates)
    key = sample_index.astype(np.int64) * t + t_index
    _, first = np.unique(key, return_index=True)
    if len(first) < len(key):
        notes.append(f"{len(key) - len(first)} duplicate (sample, date) rows: the first of each was kept")
    raw, applied = _scaled(_numeric(df, band_columns, path), nodata, scale, notes, bands, decoders)
    values = np.full((n, t, len(band_columns)), np.nan, dtype=np.float32)
    present = np.zeros((n, t), dtype=bool)
    values[sample_index[first], t_index[first]] = raw[first]
    present[sample_index[first], t_index[first]] = True
    valid = present & _valid_steps(values, bands)
    row_codes = _codes(df[label_column])
    skipped: list[SkippedSample] = []
    fields = (
        pd.Series(df[field_column].astype(str).to_numpy()).groupby(sample_index).first().to_numpy()
        if field_column
        else np.asarray(sample_ids)
    )
    excluded = np.zeros(n, dtype=bool)
    if task == "per_timestep":
        codes = np.full((n, t), None, dtype=object)
        codes[sample_index[first], t_index[first]] = row_codes[first]
    else:
        frame = pd.DataFrame({"s": sample_index, "c": row_codes}).dropna().drop_duplicates()
        codes = np.full(n, None, dtype=object)
        codes[frame["s"].to_numpy()] = frame["c"].to_numpy()
        several = frame["s"].value_counts()
        excluded[several[several > 1].index.to_numpy()] = True
        for s, found in frame[frame["s"].isin(several[several > 1].index)].groupby("s")["c"]:
            reason = f"labels differ between its rows ({_list(sorted(found))})"
            skipped.append(SkippedSample(str(sample_ids[s]), str(fields[s]), reason))
    samples = PointSamples(
        values,
        valid,
        codes,
        np.asarray(sample_ids).astype(str),
        np.asarray(fields).astype(str),
        [str(d)[:10] for d in dates.astype("datetime64[D]")],
        bands,
        applied,
        skipped,
        notes,
        excluded,
    )
    samples.coords = _lon_lat(df, sample_index)
    return samples


def _wide_samples(
    df: pd.DataFrame,
    path: Path,
    *,
    id_column: str | None,
    label_column: str,
    field_column: str | None,
    columns: list[list[str]],
    bands: list[str],
    nodata: float | None,
    scale: float | None,
    dates: list[str],
    decoders: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> PointSamples:
    notes: list[str] = []
    n = len(df)
    flat = _numeric(df, [column for band_cols in columns for column in band_cols], path)
    raw = flat.reshape(n, len(columns), -1).transpose(0, 2, 1)  # (N, C·T) → (N, T, C)
    values, applied = _scaled(raw, nodata, scale, notes, bands, decoders)
    valid = _valid_steps(values, bands)
    sample_ids = df[id_column].astype(str).to_numpy() if id_column else np.array([str(i) for i in range(n)])
    fields = df[field_column].astype(str).to_numpy() if field_column else sample_ids
    return PointSamples(
        values,
        valid,
        _codes(df[label_column]),
        sample_ids.astype(str),
        np.asarray(fields).astype(str),
        dates,
        bands,
        applied,
        [],
        notes,
        coords=_lon_lat(df),
    )


def _wide_dates(
    df: pd.DataFrame,
    path: Path,
    num_steps: int,
    dates: Sequence[str] | None,
    start_date: str | None,
    freq: str,
) -> list[str]:
    if dates is not None:
        if len(dates) != num_steps:
            raise InputError(f"{path} has {num_steps} time steps but {len(dates)} dates were given")
        return [str(pd.Timestamp(d).date()) for d in dates]
    if start_date is None and "start_date" in df.columns:
        starts = pd.unique(df["start_date"].astype(str))
        if len(starts) > 1:
            raise DataError(
                f"{path}: column 'start_date' holds {len(starts)} different dates ({_list(sorted(starts))}); "
                "the steps of different rows would not align: pass the start date explicitly"
            )
        start_date = str(starts[0])
    if start_date is None:
        raise InputError(
            f"{path} is a wide table without dates: pass dates, or a start date and a step "
            "frequency (e.g. --start-date 2023-01-01 --freq MS)"
        )
    try:
        return [str(d.date()) for d in pd.date_range(pd.Timestamp(start_date), periods=num_steps, freq=freq)]
    except ValueError as error:
        raise InputError(
            f"cannot build {num_steps} dates from start {start_date!r} and frequency {freq!r}: {error}"
        ) from None


# ---------------------------------------------------------------------------------------------
# from samples to a dataset
# ---------------------------------------------------------------------------------------------
def fill_gaps(values: np.ndarray, valid: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Fill the invalid steps of ``values`` (N, T, C) linearly in time between the nearest valid
    steps before and after (``days`` (T,): positions in days), with the nearest valid value at the
    edges (:func:`cropstar.data.regularise.fill_linear`). ``valid`` is (N, T) for all features at
    once or (N, T, C) for each. Rows without any valid step are NaN."""
    valid = valid[:, :, None] if valid.ndim == 2 else valid
    filled = fill_linear(
        np.moveaxis(values, 1, -1), np.moveaxis(valid, 1, -1), np.asarray(days, dtype=np.float64)
    )
    return np.ascontiguousarray(np.moveaxis(filled, -1, 1))


def _observed(values: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """(N, T, C): which values to fill the gaps from. The Sentinel-2 bands of a step count together
    (a step lacking one band is a gap in all of them); any other feature counts on its own, so
    Sentinel-1 or meteorology observed under a cloud keep their values where reflectance is filled."""
    observed = np.isfinite(values)
    reflectance = np.array([feature_kind(f) == "reflectance" for f in features])
    if reflectance.any():
        observed[..., reflectance] = observed[..., reflectance].all(axis=-1, keepdims=True)
    return observed


def _valid_steps(values: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """(N, T): the steps a model reads as observed. Where the features include Sentinel-2
    reflectance (or indices of it), the steps where all of those hold a value: a clear-sky
    observation, whatever Sentinel-1 or meteorology did that day; otherwise the steps where every
    feature does."""
    optical = np.array([feature_kind(f) in ("reflectance", "index") for f in features])
    chosen = values[..., optical] if optical.any() else values
    return np.isfinite(chosen).all(axis=-1)


def _rows(codes: np.ndarray) -> np.ndarray:
    """Codes as (N, T) or (N, 1) rows."""
    return codes if codes.ndim == 2 else codes[:, None]


def _finish(
    samples: PointSamples,
    source: Path,
    out: Path,
    *,
    importer: str,
    legend: Mapping[str, str] | None,
    class_table: ClassTable | None,
    unknown_codes: UnknownCodes,
    min_samples: int,
    fractions: Sequence[float],
    seed: int,
    shard_size: int,
    overwrite: bool,
    parameters: Mapping[str, Any],
    radiometry: str,
    progress: ProgressCallback | None,
) -> ImportReport:
    fractions = check_fractions(fractions)
    if unknown_codes not in ("skip", "error", "keep"):
        raise InputError(f"unknown_codes must be skip, error or keep, got {unknown_codes!r}")
    if unknown_codes == "keep" and class_table is not None:
        raise InputError("unknown codes cannot be kept when a fixed class table is given (use skip or error)")
    skipped = list(samples.skipped)
    per_timestep = samples.codes.ndim == 2
    keep = np.ones(len(samples.sample_ids), dtype=bool) if samples.excluded is None else ~samples.excluded

    def drop(rows: np.ndarray, reason: str | Callable[[int], str]) -> None:
        for row in np.flatnonzero(rows & keep):
            text = reason(row) if callable(reason) else reason
            skipped.append(SkippedSample(str(samples.sample_ids[row]), str(samples.field_ids[row]), text))
        keep[rows] = False

    codes = _rows(samples.codes)  # a view: edits reach samples.codes
    drop(pd.isna(codes).all(axis=1), "missing label")
    drop(
        ~samples.valid.any(axis=1),
        f"no valid observation on any of the {len(samples.dates)} dates (bands {', '.join(samples.bands)})",
    )
    never = ~np.isfinite(samples.values).any(axis=1)  # (N, C): a feature without any value
    drop(never.any(axis=1), lambda row: f"no value of {', '.join(np.array(samples.bands)[never[row]])} on any date")
    known = (
        set(class_table.codes) if class_table is not None else (set(legend) if legend is not None else None)
    )
    if known is not None:
        row_of, step_of = np.nonzero(~pd.isna(codes))
        unknown = ~pd.Series(codes[row_of, step_of]).isin(known).to_numpy()
        unknown_rows = np.zeros(len(keep), dtype=bool)
        unknown_rows[row_of[unknown]] = True
        unknown_rows &= keep
        unknown_set = sorted(set(codes[row_of[unknown], step_of[unknown]][keep[row_of[unknown]]]))
        where = "the class table" if class_table is not None else "the legend"
        if unknown_set and unknown_codes == "error":
            row = int(np.flatnonzero(unknown_rows)[0])
            raise DataError(
                f"{source}: class code(s) {_list(unknown_set)} not in {where} "
                f"(first: sample {samples.sample_ids[row]}, field {samples.field_ids[row]})"
            )
        if unknown_set and unknown_codes == "skip":
            if per_timestep:
                codes[row_of[unknown], step_of[unknown]] = None
                samples.notes.append(
                    f"time steps with class code(s) {_list(unknown_set)} not in {where} set to ignore"
                )
            else:
                drop(unknown_rows, lambda row: f"class code {codes[row, 0]} not in {where}")
        if unknown_set and unknown_codes == "keep":
            samples.notes.append(f"class code(s) {_list(unknown_set)} not in the legend: named by their code")
    samples.keep(keep)

    # rare classes: samples per code (a sample counted once per code it holds)
    codes = _rows(samples.codes)
    row_of, step_of = np.nonzero(~pd.isna(codes))
    pairs = pd.DataFrame({"row": row_of, "code": codes[row_of, step_of]}).drop_duplicates()
    counts = pairs["code"].value_counts()
    names = {e.code: e.name for e in class_table} if class_table is not None else dict(legend or {})
    dropped = sorted(
        ((str(code), int(n)) for code, n in counts.items() if n < min_samples),
        key=lambda item: (-item[1], item[0]),
    )
    dropped_classes = [{"code": code, "name": names.get(code, code), "samples": n} for code, n in dropped]
    if dropped:
        rare = pd.Series(codes.ravel()).isin({code for code, _ in dropped}).to_numpy().reshape(codes.shape)
        codes[rare] = None
        samples.keep(~pd.isna(codes).all(axis=1))
    if len(samples.sample_ids) == 0:
        raise DataError(
            f"{source}: no sample left to import ({len(skipped)} skipped, "
            f"{len(dropped_classes)} classes under {min_samples} samples)"
        )

    table = class_table or ClassTable.from_codes(
        {c for row in _rows(samples.codes) for c in row if c is not None}, names
    )
    labels = table.encode(samples.codes, unknown="ignore")
    split = split_by_field(samples.field_ids, labels, fractions, seed)
    days = np.asarray(samples.dates, dtype="datetime64[D]").astype(np.int64)
    filled = fill_gaps(samples.values, _observed(samples.values, samples.bands), days)
    n, t, c = filled.shape
    provenance = {
        "importer": importer,
        "source": str(source.resolve()),
        "source_sha256": file_sha256(source),
        "parameters": dict(parameters),
        "radiometry": radiometry,
        "boa_offset_applied": 0.0,
        "gap_filling": "linear in time between valid steps, nearest value at the edges",
        "skipped_samples": len(skipped),
        "dropped_classes": dropped_classes,
    }
    write_dataset(
        out,
        patches=filled.reshape(n, t, c, 1, 1),
        mask=samples.valid,
        labels=labels,
        field_ids=samples.field_ids,
        split=split,
        class_table=table,
        dates=samples.dates,
        bands=samples.bands,
        coords=samples.coords,
        crs="EPSG:4326" if samples.coords is not None else None,
        provenance=provenance,
        shard_size=shard_size,
        overwrite=overwrite,
        progress=progress,
    )
    per_split = split_class_counts(split, labels, len(table))
    notes = list(samples.notes)
    absent = [
        f"{table[k].name} ({SPLITS[s]})"
        for k in range(len(table))
        for s in (1, 2)
        if fractions[s] > 0 and per_split[s, k] == 0
    ]
    if absent:
        notes.append(f"{len(absent)} class/split pairs without samples (too few fields): {_list(absent, 8)}")
    return ImportReport(
        out=out,
        source=source,
        shape=(n, t, c, 1, 1),
        dates=samples.dates,
        bands=samples.bands,
        class_table=table,
        class_counts={name: per_split[code].tolist() for code, name in enumerate(SPLITS)},
        splits={name: int((split == code).sum()) for code, name in enumerate(SPLITS)},
        valid_fraction=float(samples.valid.mean()),
        skipped=skipped,
        dropped_classes=dropped_classes,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# the importers
# ---------------------------------------------------------------------------------------------
def _parcel_ids(df: pd.DataFrame, sample_ids: np.ndarray) -> np.ndarray:
    """WorldCereal parcel ids: the suffix of ``sample_id`` after its ``ref_id`` (prefixed by the
    ``ref_id`` where the file mixes several collections, so parcels of different ones stay apart)."""
    if "ref_id" not in df.columns:
        return sample_ids
    ref = df.groupby(df["sample_id"].astype(str), sort=False)["ref_id"].first().astype(str)
    ref = ref.reindex(sample_ids).to_numpy()
    several = len(set(ref)) > 1
    out = []
    for sample, ref_id in zip(sample_ids, ref, strict=True):
        parcel = sample[len(ref_id) + 1 :] if sample.startswith(f"{ref_id}_") else sample
        out.append(f"{ref_id}/{parcel}" if several else parcel)
    return np.array(out)


def import_worldcereal(
    parquet: str | Path,
    out: str | Path,
    *,
    legend: str | Path | None = None,
    bands: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    min_samples: int = 1,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    class_table: ClassTable | None = None,
    unknown_codes: UnknownCodes = "skip",
    freq: str = "MS",
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import a WorldCereal point-extraction parquet into a dataset at ``out`` (P = 1, per-sequence
    ``ewoc_code`` labels named from the ``legend`` CSV).

    Long files (one row per sample and ``timestamp``) take every distinct timestamp as the time
    axis; wide files (``OPTICAL-B02-ts0-10m`` …) take ``start_date`` and steps of ``freq`` (monthly).
    Reflectance = DN / 10000 with no BOA offset: the extractions are composites already
    offset-corrected upstream; 65535 = no data (0 is kept as a valid, dark value). The field id is
    the parcel id from ``sample_id``. ``bands`` names the columns' features (Sentinel-2 bands,
    ``VV`` / ``VH``, any other column family); ``indices`` are computed from the bands.
    """
    parquet, out = Path(parquet), Path(out)
    wanted, features = _features_to_read(bands, indices)
    if min_samples < 1:
        raise InputError(f"min_samples must be at least 1, got {min_samples}")
    if progress is not None:
        progress("reading", 0, 1)
    df = read_table(parquet)
    names = read_legend(Path(legend)) if legend is not None else None
    for column in ("sample_id", "ewoc_code"):
        if column not in df.columns:
            raise DataError(f"{parquet} is not a WorldCereal extraction: no {column!r} column")
    decoders = worldcereal_decoders(wanted)
    common = {
        "label_column": "ewoc_code",
        "bands": wanted,
        "nodata": WORLDCEREAL_NODATA,
        "scale": WORLDCEREAL_SCALE,
        "decoders": decoders,
    }
    if "timestamp" in df.columns:
        columns = _long_band_columns(list(df.columns), wanted, parquet)
        samples = _long_samples(
            df,
            parquet,
            id_column="sample_id",
            date_column="timestamp",
            field_column=None,
            band_columns=columns,
            task="per_sequence",
            **common,
        )
        layout = "long"
    else:
        wide_columns, _ = _wide_band_columns(list(df.columns), wanted, parquet)
        dates = _wide_dates(df, parquet, len(wide_columns[0]), None, None, freq)
        samples = _wide_samples(
            df, parquet, id_column="sample_id", field_column=None, columns=wide_columns, dates=dates, **common
        )
        layout = "wide"
    samples.field_ids = _parcel_ids(df, samples.sample_ids)
    for feature, series in zip(wanted, np.moveaxis(samples.values, 2, 0), strict=True):
        if not np.isfinite(series).any():
            raise DataError(
                f"{parquet}: {feature} holds no data at all (every value is {WORLDCEREAL_NODATA}); "
                f"leave it out of the bands"
            )
    _with_indices(samples, features)
    if progress is not None:
        progress("reading", 1, 1)
    return _finish(
        samples,
        parquet,
        out,
        importer="worldcereal",
        legend=names,
        class_table=class_table,
        unknown_codes=unknown_codes,
        min_samples=min_samples,
        fractions=fractions,
        seed=seed,
        shard_size=shard_size,
        overwrite=overwrite,
        progress=progress,
        parameters={
            "layout": layout,
            "legend": str(legend) if legend else None,
            "bands": features,
            "min_samples": min_samples,
            "fractions": list(fractions),
            "seed": seed,
            "freq": freq,
            "unknown_codes": unknown_codes,
        },
        radiometry="reflectance = DN / 10000; WorldCereal composites are already offset-corrected "
        "(no BOA_ADD_OFFSET applied here); 65535 = no data"
        + "".join(
            f"; {feature} = " + ("20 log10(DN) − 83 dB" if decode is _worldcereal_backscatter else "value / 100")
            for feature, decode in decoders.items()
        ),
    )


def import_table(
    file: str | Path,
    out: str | Path,
    *,
    label_column: str,
    layout: TableLayout = "auto",
    id_column: str | None = None,
    field_column: str | None = None,
    date_column: str | None = None,
    bands: Sequence[str] | None = None,
    indices: Sequence[str] | None = None,
    nodata: float | None = None,
    scale: float | None = None,
    dates: Sequence[str] | None = None,
    start_date: str | None = None,
    freq: str = "MS",
    task: Task = "per_sequence",
    legend: str | Path | None = None,
    min_samples: int = 1,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    class_table: ClassTable | None = None,
    unknown_codes: UnknownCodes = "skip",
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    table: pd.DataFrame | None = None,
    importer: str = "table",
) -> ImportReport:
    """Import your own extractions (CSV / TSV / Parquet) into a dataset at ``out`` (P = 1).

    Wide layout: one row per sample, value columns ``{band}_{t}`` or ``{band}-ts{t}`` (band names as
    any provider spells them, e.g. ``B02_0``, ``blue_0``, ``OPTICAL-B02-ts0-10m``), dates from
    ``dates``, or ``start_date`` (else a ``start_date`` column) and ``freq``. Long layout: one row
    per sample and date (``date_column``, auto-detected: date, timestamp, time), one column per
    band. ``auto`` picks long where a date column exists. Values equal to ``nodata`` (and NaN) are
    missing; ``scale`` turns values into reflectance (None: ×1e-4 where they look like digital
    numbers). Samples are their own field unless ``field_column`` (or a field_id / parcel_id
    column) says otherwise. ``task="per_timestep"`` (long layout) keeps one label per row.
    ``bands`` names the features (:mod:`cropstar.data.features`; Sentinel-2 bands by default);
    ``indices`` are computed from the bands (each step's own reflectance, before gap filling).
    ``table``: the file's contents already read, by an importer of another format (``importer``).
    """
    file, out = Path(file), Path(out)
    wanted, features = _features_to_read(bands, indices)
    if min_samples < 1:
        raise InputError(f"min_samples must be at least 1, got {min_samples}")
    if layout not in ("auto", "wide", "long"):
        raise InputError(f"layout must be auto, wide or long, got {layout!r}")
    if task not in ("per_sequence", "per_timestep"):
        raise InputError(f"task must be per_sequence or per_timestep, got {task!r}")
    if progress is not None:
        progress("reading", 0, 1)
    df = read_table(file) if table is None else table
    columns = [str(c) for c in df.columns]
    df.columns = columns
    names = read_legend(Path(legend)) if legend is not None else None
    _pick(columns, label_column, (), "label", file, True)
    date_col = _pick(
        columns, date_column, DATE_COLUMNS if layout != "wide" else (), "date", file, layout == "long"
    )
    fields = _pick(columns, field_column, FIELD_COLUMNS, "field", file, False)
    common = {
        "label_column": label_column,
        "bands": wanted,
        "nodata": nodata,
        "scale": scale,
        "field_column": fields,
    }
    if date_col is not None:
        ids = _pick(columns, id_column, ID_COLUMNS, "sample id", file, True)
        assert ids is not None
        band_cols = _long_band_columns(
            [c for c in columns if c not in (ids, date_col, label_column, fields)], wanted, file
        )
        samples = _long_samples(
            df, file, id_column=ids, date_column=date_col, band_columns=band_cols, task=task, **common
        )
        chosen = "long"
    else:
        if task == "per_timestep":
            raise InputError("per-timestep labels need the long layout (one row per sample and date)")
        ids = _pick(columns, id_column, ID_COLUMNS, "sample id", file, False)
        wide_columns, ignored = _wide_band_columns(columns, wanted, file)
        if ignored:
            common_notes = [
                f"wide column groups not among the bands asked for were ignored: {_list(ignored)}"
            ]
        else:
            common_notes = []
        when = _wide_dates(df, file, len(wide_columns[0]), dates, start_date, freq)
        samples = _wide_samples(df, file, id_column=ids, columns=wide_columns, dates=when, **common)
        samples.notes.extend(common_notes)
        chosen = "wide"
    _with_indices(samples, features)
    if fields is None:
        samples.notes.append("no field column: every sample is its own field for the splits")
    if progress is not None:
        progress("reading", 1, 1)
    return _finish(
        samples,
        file,
        out,
        importer=importer,
        legend=names,
        class_table=class_table,
        unknown_codes=unknown_codes,
        min_samples=min_samples,
        fractions=fractions,
        seed=seed,
        shard_size=shard_size,
        overwrite=overwrite,
        progress=progress,
        parameters={
            "layout": chosen,
            "label_column": label_column,
            "id_column": ids,
            "field_column": fields,
            "date_column": date_col,
            "bands": features,
            "nodata": nodata,
            "scale": scale,
            "task": task,
            "legend": str(legend) if legend else None,
            "min_samples": min_samples,
            "fractions": list(fractions),
            "seed": seed,
            "unknown_codes": unknown_codes,
        },
        radiometry=(
            "values taken as reflectance"
            if samples.scale == 1.0
            else f"reflectance = value × {samples.scale:g}"
        )
        + "; no BOA offset applied",
    )


def import_ucr(
    file: str | Path,
    out: str | Path,
    *,
    feature: str = "NDVI",
    start_date: str = "2000-01-01",
    freq: str = "8D",
    **options: Any,
) -> ImportReport:
    """Import a UCR time-series archive file (e.g. ``Crop_TRAIN.tsv``: tab- or comma-separated, no
    header, the class label in the first column and one value per step after it) into a dataset at
    ``out``: every series one sample and its own field, its values the single ``feature`` as given.
    The archive gives no dates: the steps are placed from ``start_date`` every ``freq``. Other
    ``options`` as :func:`import_table` (fractions, seed, min_samples, legend …)."""
    file = Path(file)
    if not file.is_file():
        raise InputError(f"file not found: {file}")
    name = canonical_feature(feature)
    try:
        with open(file, encoding="utf-8") as handle:
            first = handle.readline()
        frame = pd.read_csv(file, sep="\t" if "\t" in first else ",", header=None)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read {file} as a UCR archive file: {error}") from None
    if frame.shape[1] < 2:
        raise DataError(
            f"{file}: a UCR file holds a label and at least one value per row, found {frame.shape[1]} column"
        )
    frame.columns = ["label", *(f"{name}_{t}" for t in range(frame.shape[1] - 1))]
    frame["label"] = frame["label"].map(lambda value: f"{value:g}" if isinstance(value, float) else value)
    return import_table(
        file, out, label_column="label", layout="wide", bands=[name], start_date=start_date, freq=freq,
        table=frame, importer="ucr", **options,
    )  # fmt: skip
