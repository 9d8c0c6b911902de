"""The model artifact (DESIGN.md, "Data contracts": model artifact): one folder holding
``model.safetensors`` (the weights, never pickle) and ``model.json`` (the :class:`ModelCard`:
architecture, classes with codes and names, band order, patch size, time grid, normalisation,
training provenance and metrics, with STAC MLM extension fields where they fit).

:func:`save_artifact` writes the folder atomically, :func:`load_artifact` rebuilds the classifier,
:func:`check_dataset` / :func:`check_cube` say whether data fits a model, listing every difference.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cropstar.data.class_table import ClassTable
from cropstar.data.dataset import DatasetReader, iso_dates
from cropstar.data.features import describe_features
from cropstar.data.normalisation import Normalisation
from cropstar.errors import BrokenModelError, CropstarError, InputError, ModelMismatchError
from cropstar.files import file_sha256, replace_folder, write_text_atomic
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.nn import SequenceClassifier
from cropstar.nn.ensemble import EnsembleClassifier

if TYPE_CHECKING:
    from cropstar.data.cube import Cube

FORMAT = "cropstar-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
#: The member of ``model.json`` holding the SHA-256 of the weights file, checked on load.
WEIGHTS_SHA256 = "weights_sha256"
CARD = "model.json"
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.0/schema.json"
#: Shortest length in days of the calendar periods (a one-period shift moves the start at least this far).
_CALENDAR_PERIOD_DAYS = {"dekad": 8.0, "MS": 28.0}


# ---------------------------------------------------------------------------------------------
# the card
# ---------------------------------------------------------------------------------------------
def canonical_period(period: str | None) -> str | None:
    """``"monthly"`` → ``"MS"``, ``"10-day"`` → ``"10D"``, ``"Dekad"`` → ``"dekad"``; None stays None."""
    from pandas.tseries.frequencies import to_offset

    from cropstar.data.regularise import DEKAD, PERIOD_ALIASES

    if period is None:
        return None
    key = str(period).strip()
    if key.lower() == DEKAD:
        return DEKAD
    key = PERIOD_ALIASES.get(key.lower(), key)
    try:
        return to_offset(key).freqstr
    except (ValueError, TypeError):
        return key


@dataclass(frozen=True)
class TimeGrid:
    """The time steps a model was trained on: ``period`` ("10D", "MS", "dekad", …; None = the
    acquisitions as given, or unknown) and the ISO ``dates`` of the steps."""

    period: str | None
    dates: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "period", canonical_period(self.period))
        object.__setattr__(self, "dates", tuple(iso_dates(self.dates)))

    @property
    def steps(self) -> int:
        return len(self.dates)

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "steps": self.steps, "dates": list(self.dates)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TimeGrid:
        return cls(values.get("period"), tuple(values["dates"]))


def _days(dates: tuple[str, ...] | list[str]) -> np.ndarray:
    """ISO dates → days since 1970 (int64)."""
    return np.asarray(dates, dtype="datetime64[D]").astype(np.int64)


def infer_period(dates: tuple[str, ...] | list[str]) -> str | None:
    """The period of evenly spaced ``dates``: ``"<n>D"`` (equal spacing), ``"dekad"`` (days 1/11/21
    of consecutive dekads), ``"MS"`` (firsts of consecutive months); None otherwise."""
    if len(dates) < 2:
        return None
    days = pd.DatetimeIndex(dates)
    months = days.year * 12 + days.month
    if set(days.day) == {1} and np.all(np.diff(months) == 1):
        return "MS"
    gaps = np.diff(_days(dates))
    if np.all(gaps == gaps[0]):
        return f"{int(gaps[0])}D"
    dekads = months * 3 + (days.day - 1) // 10
    if set(days.day) <= {1, 11, 21} and np.all(np.diff(dekads) == 1):
        return "dekad"
    return None


@dataclass
class ModelCard:
    """Everything ``model.json`` records about a model besides its weights."""

    architecture: Architecture
    class_table: ClassTable
    bands: list[str]
    patch_size: int
    time_grid: TimeGrid
    normalisation: Normalisation
    name: str = "cropstar-model"
    version: str | None = None
    created: str | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a, c, p = self.architecture, len(self.bands), self.patch_size
        problems = []
        if len(self.class_table) != a.num_classes:
            problems.append(
                f"the architecture has {a.num_classes} classes, the class table {len(self.class_table)}"
            )
        if c * p * p != a.input_size:
            problems.append(
                f"{c} bands × {p}×{p} pixels = {c * p * p} inputs, the architecture {a.input_size}"
            )
        if self.normalisation.num_bands != c:
            problems.append(f"the normalisation has {self.normalisation.num_bands} bands, the model {c}")
        if problems:
            raise ModelMismatchError(f"model card {self.name!r} is inconsistent: " + "; ".join(problems))

    @property
    def task(self) -> str:
        return self.architecture.task

    def features(self) -> list[dict[str, Any]]:
        """Each input feature (the ``bands``, in order): its kind, unit or formula, and the mean and
        standard deviation it is z-scored with (derived, so a card that lacks it reads the same)."""
        return [
            {**entry, "mean": float(mean), "std": float(std)}
            for entry, mean, std in zip(
                describe_features(self.bands), self.normalisation.mean, self.normalisation.std, strict=True
            )
        ]

    def to_dict(self, total_parameters: int | None = None) -> dict[str, Any]:
        """The ``model.json`` document (``total_parameters`` counted from the architecture if not given)."""
        from cropstar import __version__

        if total_parameters is None:
            total_parameters = parameter_count(build_classifier(self.architecture))
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "cropstar_version": __version__,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "description": self.description,
            "task": self.task,
            "architecture": self.architecture.to_dict(),
            "classes": self.class_table.to_records(),
            "bands": list(self.bands),
            "features": self.features(),
            "patch_size": self.patch_size,
            "time_grid": self.time_grid.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "training": _plain(self.training),
            "metrics": _plain(self.metrics),
            "stac_extensions": [MLM_SCHEMA],
            **self._mlm(total_parameters),
        }

    def _mlm(self, total_parameters: int) -> dict[str, Any]:
        """STAC MLM fields: the model reads (B, T, C·P·P) z-scored reflectance and returns class logits."""
        steps, k = self.time_grid.steps, len(self.class_table)
        per_step = self.task == "per_timestep"
        std = [float(s) if s > 0 else 1.0 for s in self.normalisation.std]
        return {
            "mlm:name": self.name,
            "mlm:architecture": _architecture_name(self.architecture),
            "mlm:tasks": ["classification"],
            "mlm:framework": "pytorch",
            "mlm:framework_version": torch.__version__,
            "mlm:total_parameters": total_parameters,
            "mlm:pretrained": bool(self.training.get("init_from")),
            "mlm:input": [
                {
                    "name": "patch_sequences",
                    "description": (
                        f"{self.patch_size}×{self.patch_size}-pixel patches of {len(self.bands)} bands "
                        f"on {steps} time steps, flattened per step in C-order of (band, y, x); "
                        "an optional (batch, time) validity mask"
                    ),
                    "bands": list(self.bands),
                    "input": {
                        "shape": [-1, steps, self.architecture.input_size],
                        "dim_order": ["batch", "time", "channel"],
                        "data_type": "float32",
                    },
                    "value_scaling": [
                        {"type": "z-score", "mean": float(m), "stddev": s}
                        for m, s in zip(self.normalisation.mean, std, strict=True)
                    ],
                }
            ],
            "mlm:output": [
                {
                    "name": "class_logits",
                    "tasks": ["classification"],
                    "result": {
                        "shape": [-1, steps, k] if per_step else [-1, k],
                        "dim_order": ["batch", "time", "class"] if per_step else ["batch", "class"],
                        "data_type": "float32",
                    },
                    "classification:classes": [
                        {"value": e.id, "name": e.name, "description": f"class code {e.code}"}
                        for e in self.class_table
                    ],
                }
            ],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelCard:
        """The card of a ``model.json`` document (the features and MLM fields are derived, so ignored)."""
        return cls(
            architecture=Architecture.from_dict(values["architecture"]),
            class_table=ClassTable.from_records(values["classes"]),
            bands=[str(b) for b in values["bands"]],
            patch_size=int(values["patch_size"]),
            time_grid=TimeGrid.from_dict(values["time_grid"]),
            normalisation=Normalisation.from_dict(values["normalisation"]),
            name=str(values.get("name", "cropstar-model")),
            version=values.get("version"),
            created=values.get("created"),
            description=str(values.get("description", "")),
            training=dict(values.get("training") or {}),
            metrics=dict(values.get("metrics") or {}),
        )


def _architecture_name(a: Architecture) -> str:
    single = f"{a.num_layers}-layer {a.cell} RNN"
    return single if a.members == 1 else f"ensemble of {a.members} {single}s (mean probability)"


def _plain(value: Any) -> Any:
    """``value`` with JSON types only: numpy scalars/arrays and paths converted, NaN/±inf → None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def parameter_count(model: torch.nn.Module) -> int:
    """The number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def card_for_dataset(reader: DatasetReader, architecture: Architecture, **fields: Any) -> ModelCard:
    """The card of a model trained on ``reader``: bands, patch size, class table, normalisation, time
    grid (period from the dataset's provenance, else inferred from the dates) and the dataset's path
    and fingerprint in ``training``; ``fields`` set or override any other card field."""
    dates = tuple(reader.dates)
    values: dict[str, Any] = {
        "architecture": architecture,
        "class_table": reader.class_table,
        "bands": list(reader.bands),
        "patch_size": reader.patch_size,
        "time_grid": TimeGrid(reader.provenance.get("period") or infer_period(dates), dates),
        "normalisation": reader.normalisation,
        **fields,
    }
    values["training"] = {
        "dataset": str(reader.path),
        "fingerprint": reader.fingerprint,
        **fields.get("training", {}),
    }
    card = ModelCard(**values)
    check_dataset(card, reader)
    return card


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------
def save_artifact(folder: Path | str, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write ``model``'s weights and ``card`` to the artifact ``folder`` and return it.

    Everything is written into a temporary folder beside ``folder`` first and swapped in at the end:
    an existing artifact is replaced whole, and a failure leaves the old one (or none) untouched.
    ``card.created`` is set to now (UTC) when None.
    """
    folder = Path(folder)
    _check_target(folder)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    _check_tensors(build_classifier(card.architecture).state_dict(), tensors, f"model for {folder}")
    _check_finite(tensors, f"the model for {folder}")
    if card.created is None:
        card = replace(card, created=datetime.now(UTC).isoformat(timespec="seconds"))
    document = card.to_dict(total_parameters=parameter_count(model))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; artifacts are meant to be shared
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt", "cropstar": FORMAT})
        os.chmod(tmp / WEIGHTS, 0o644)
        document[WEIGHTS_SHA256] = file_sha256(tmp / WEIGHTS)
        write_text_atomic(tmp / CARD, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _is_artifact(folder: Path) -> bool:
    try:
        return json.loads((folder / CARD).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(folder: Path) -> None:
    if folder.exists() and not (_is_artifact(folder) or (folder.is_dir() and not any(folder.iterdir()))):
        raise InputError(f"refusing to overwrite {folder}: it is not a cropstar model artifact")


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` to ``folder``; an old artifact is moved aside and removed only after."""
    replace_folder(tmp, folder)


def _check_tensors(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """ModelMismatchError naming each missing, unexpected or wrongly shaped tensor of ``found``."""
    problems = [f"tensor {name!r} is missing" for name in expected if name not in found]
    problems += [f"unexpected tensor {name!r}" for name in found if name not in expected]
    problems += [
        f"tensor {name!r} has shape {tuple(found[name].shape)}, the architecture needs {tuple(t.shape)}"
        for name, t in expected.items()
        if name in found and found[name].shape != t.shape
    ]
    if problems:
        raise ModelMismatchError(f"{where} does not match its architecture: " + "; ".join(problems))


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """BrokenModelError naming the tensors of ``tensors`` that hold NaN or infinite values."""
    broken = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise BrokenModelError(
            f"{where} has non-finite weights (NaN or infinite) in {_listed(broken)}: it would give "
            "meaningless answers; retrain it (a diverged training) or restore the artifact"
        )


def read_card(folder: Path | str) -> ModelCard:
    """The :class:`ModelCard` of the artifact ``folder`` (``model.json`` only; weights are not read)."""
    path = Path(folder) / CARD
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"model card not found: {path} (is {folder} a model artifact?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read model card {path}: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise InputError(f"{path} is not a cropstar model card: format is {found!r}, expected {FORMAT!r}")
    if document.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has format version {document.get('format_version')!r}; "
            f"this cropstar reads version {FORMAT_VERSION}"
        )
    try:
        return ModelCard.from_dict(document)
    except ModelMismatchError as error:
        raise ModelMismatchError(f"{path}: {error}") from None
    except (CropstarError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"invalid model card {path}: {type(error).__name__}: {error}") from None


@dataclass
class LoadedModel:
    """A classifier rebuilt from an artifact (in eval mode), its card and its folder."""

    model: SequenceClassifier | EnsembleClassifier
    card: ModelCard
    path: Path


def load_artifact(folder: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the artifact ``folder``: build the classifier its card describes and load the weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"model artifact not found: {folder} is not a folder")
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise InputError(f"model weights not found: {weights}")
    recorded = json.loads((folder / CARD).read_text()).get(WEIGHTS_SHA256)
    if recorded is not None and file_sha256(weights) != recorded:
        raise BrokenModelError(
            f"{weights} does not match the checksum its card records ({WEIGHTS_SHA256} in {folder / CARD}): "
            "the weights were changed or damaged after the model was saved"
        )
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{weights} is not a readable safetensors file: {error}") from None
    model = build_classifier(card.architecture)
    _check_tensors(model.state_dict(), tensors, str(weights))
    _check_finite(tensors, str(weights))
    model.load_state_dict(tensors)
    return LoadedModel(model.to(device).eval(), card, folder)


# ---------------------------------------------------------------------------------------------
# does data fit a model?
# ---------------------------------------------------------------------------------------------
def _period_days(period: str | None, dates: tuple[str, ...]) -> float | None:
    """Days a season's start may move and stay within one period: the shortest length of a calendar
    period, the length of a fixed one, else the median spacing of ``dates`` (None: cannot tell)."""
    from pandas.tseries.frequencies import to_offset
    from pandas.tseries.offsets import Tick

    if period in _CALENDAR_PERIOD_DAYS:
        return _CALENDAR_PERIOD_DAYS[period]
    if period is not None:
        try:
            offset = to_offset(period)
            if isinstance(offset, Tick):
                return offset.nanos / 86_400e9
        except (ValueError, TypeError):
            pass
    if len(dates) < 2:
        return None
    return float(np.median(np.diff(_days(dates))))


def _time_grid_problems(model: TimeGrid, data: TimeGrid, what: str) -> list[str]:
    """Number of steps, period and season alignment (start day of year within one period)."""
    problems = []
    if model.steps != data.steps:
        problems.append(f"time steps: model expects {model.steps}, {what} has {data.steps}")
    if model.period and data.period and model.period != data.period:
        problems.append(f"time grid period: model expects {model.period}, {what} has {data.period}")
    tolerance = _period_days(model.period, model.dates)
    if tolerance is not None and model.dates and data.dates:
        a, b = pd.Timestamp(model.dates[0]).day_of_year, pd.Timestamp(data.dates[0]).day_of_year
        shift = min(abs(a - b), 365 - abs(a - b))
        if shift >= tolerance:
            problems.append(
                f"season: model steps start on {model.dates[0]} (day {a}), {what} on {data.dates[0]} "
                f"(day {b}): {shift} days apart, more than one period ({tolerance:g} days)"
            )
    return problems


def _listed(values: list[str] | tuple[str, ...]) -> str:
    return ",".join(values)


def _raise(card: ModelCard, where: str, problems: list[str]) -> None:
    if problems:
        raise ModelMismatchError(f"model {card.name!r} does not fit {where}: " + "; ".join(problems))


def dataset_problems(card: ModelCard, reader: DatasetReader) -> tuple[list[str], bool]:
    """Every way the dataset differs from what the model expects (band order, patch size, input size,
    time steps, period and season alignment, task), and whether `cropstar ingest --like` repairs them
    (it does all but a different task)."""
    _, _, c, p, _ = reader.shape
    problems = []
    if list(reader.bands) != list(card.bands):
        problems.append(
            f"bands: model expects {_listed(card.bands)} but the dataset has {_listed(reader.bands)}"
        )
    if p != card.patch_size:
        problems.append(f"patch size: model expects {card.patch_size}, the dataset has {p}")
    if c * p * p != card.architecture.input_size:
        problems.append(
            f"input size: model expects {card.architecture.input_size}, the dataset has {c * p * p}"
        )
    dates = tuple(reader.dates)
    grid = TimeGrid(reader.provenance.get("period") or infer_period(dates), dates)
    problems += _time_grid_problems(card.time_grid, grid, "the dataset")
    regrid = bool(problems)
    if reader.task != card.task:
        problems.append(f"task: model predicts {card.task}, the dataset is labelled {reader.task}")
    return problems, regrid


def check_dataset(card: ModelCard, reader: DatasetReader, like: str | None = None) -> None:
    """ModelMismatchError listing every way the dataset differs from what the model expects
    (:func:`dataset_problems`). ``like``: how the user names the model (a folder or registry
    reference); where bands, patch size or time grid differ, the error then ends with the
    `cropstar ingest --like` command that cuts the dataset to fit."""
    problems, regrid = dataset_problems(card, reader)
    if regrid and like is not None:
        from cropstar.data.reingest import regrid_fix

        problems[-1] += f". To fix, {regrid_fix(reader, like)}"
    _raise(card, f"dataset {reader.path}", problems)


def check_cube(card: ModelCard, cube: Cube) -> None:
    """ModelMismatchError listing every way ``cube`` (after regularisation) differs from what the
    model expects: band order and time grid (the patch size is not a property of a cube)."""
    problems = []
    if list(cube.bands) != list(card.bands):
        problems.append(f"bands: model expects {_listed(card.bands)} but the cube has {_listed(cube.bands)}")
    dates = tuple(str(t.date()) for t in cube.times)
    period = cube.attrs.get("regularisation", {}).get("period") or infer_period(dates)
    problems += _time_grid_problems(card.time_grid, TimeGrid(period, dates), "the cube")
    _raise(card, "the cube", problems)


def on_model_grid(card: ModelCard, cube: Cube) -> Cube:
    """``cube`` composited onto the model's time grid in the cube's own season: the model's period and
    number of steps, starting on the model's first date moved by whole years to the season of the
    cube's acquisitions (``regularise``: medians of valid observations, steps without any are
    invalid). Raises ModelMismatchError for a model without a regular period."""
    from cropstar.data.regularise import regularise, time_grid

    grid = card.time_grid
    if not grid.period or not grid.dates:
        raise ModelMismatchError(
            f"model {card.name!r} has no regular time grid (period {grid.period!r}): composite the cube "
            "onto its dates yourself"
        )
    first, last = pd.Timestamp(grid.dates[0]), pd.Timestamp(grid.dates[-1])
    times = cube.times
    years = round(((times.min() + (times.max() - times.min()) / 2) - (first + (last - first) / 2)).days / 365.25)
    start = first + pd.DateOffset(years=years)
    edges = time_grid(grid.period, start, start + pd.Timedelta(days=32 * (grid.steps + 1)))[: grid.steps + 1]
    return regularise(cube, grid.period, start=start, end=edges[-1] - pd.Timedelta(1, "ns"))
