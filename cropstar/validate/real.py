"""The real-data suite: STAR (one model, refit, an ensemble of seeds and a bagged ensemble), deep
baselines, a random forest and 1-nearest-neighbour on the same stratified folds of real crop time
series, with the same features for every method: the WorldCereal extractions of France 2023
(dekads), Corsica 2022 (months) and East Africa 2017 (months) as Sentinel-2 bands, France and
Corsica again with Sentinel-1 VV / VH and three spectral indices added (``*-s1-indices``), and UCR
Crop's training file (NDVI profiles).

Each fold's test samples are held out from every method; the neural networks take a stratified
15% of the fold's other samples as their validation split (model selection by the lowest
validation loss; a bagged ensemble's members each validate on their own fold of those samples
instead; STAR refit trains again on all of them for the epochs STAR's validation selected), the
random forest and the nearest neighbour fit all of them. Every finished
(data set, method, fold) is kept in ``OUT/runs/``, so a rerun resumes; ``OUT/results.csv``,
``results.md`` (mean ± std over folds and per-class F1) and a confusion matrix per data set
(``confusion_<data set>.png``, STAR's folds summed) are written from them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropstar.data.dataset import DatasetReader, copy_dataset, open_dataset
from cropstar.errors import InputError
from cropstar.files import write_text_atomic
from cropstar.train.metrics import accuracy_report

if TYPE_CHECKING:
    from cropstar.train.config import TrainConfig

WORLDCEREAL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
WORLDCEREAL_INDICES = ("NDVI", "NDRE", "NDMI")


@dataclass(frozen=True)
class RealDataset:
    """A real data set as the suite imports it from ``../shared/data``."""

    name: str
    path: str
    importer: str
    options: dict[str, Any] = field(default_factory=dict)


DATASETS = {
    d.name: d
    for d in (
        RealDataset("france-2023", "worldcereal/FRA_LPIS_2023_dekad.geoparquet", "worldcereal",
                    {"bands": list(WORLDCEREAL_BANDS), "min_samples": 10}),
        RealDataset("corsica-2022", "worldcereal/FRA_LPIS_2022_month.geoparquet", "worldcereal",
                    {"bands": list(WORLDCEREAL_BANDS), "min_samples": 10}),
        RealDataset("east-africa-2017", "worldcereal/test_public_extractions.parquet", "worldcereal",
                    {"bands": list(WORLDCEREAL_BANDS), "min_samples": 10}),
        RealDataset("ucr-crop", "ucr-crop/Crop_TRAIN.tsv", "ucr", {"feature": "NDVI"}),
        *(RealDataset(f"{name}-s1-indices", path, "worldcereal",
                      {"bands": [*WORLDCEREAL_BANDS, "VV", "VH"], "indices": list(WORLDCEREAL_INDICES),
                       "min_samples": 10})
          for name, path in (("france-2023", "worldcereal/FRA_LPIS_2023_dekad.geoparquet"),
                             ("corsica-2022", "worldcereal/FRA_LPIS_2022_month.geoparquet"))),
    )
}  # fmt: skip


@dataclass(frozen=True)
class RealBudget:
    """How much of each data set and of training a budget spends: ``folds`` of stratified k-fold,
    ``max_samples`` per data set (a stratified subsample; None: all), the training ``settings`` of
    the neural methods (overrides on top of the YAML file ``config``, relative to the working folder)
    and the ensemble's ``members``; ``refit``: the neural methods are scored after :func:`train`'s
    refit on the training and validation samples (as the random forest fits all of them)."""

    name: str
    folds: int
    max_samples: int | None
    config: str | None
    settings: tuple[str, ...]
    members: int
    refit: bool = False


BUDGETS = {
    "smoke": RealBudget("smoke", 2, 300, None, ("epochs=2", "model.hidden_size=8", "model.num_layers=2",
                                                 "batch_size=64", "device=cpu"), 2),
    "cpu": RealBudget("cpu", 5, None, "configs/crop_small.yaml", ("device=cpu",), 5),
    "full": RealBudget("full", 5, None, "configs/crop_small.yaml", (), 5),
}  # fmt: skip
METHODS = ("star", "star_refit", "star_ensemble", "star_bagged", "lstm", "gru", "random_forest",
           "nearest_neighbour")  # fmt: skip
ENSEMBLES = ("star_ensemble", "star_bagged")
CLASSICAL = ("random_forest", "nearest_neighbour")


def import_dataset(dataset: RealDataset, shared: Path, out: Path) -> Path:
    """The data set imported once into ``out`` (reused when it is there), every sample in training."""
    from cropstar.data.importers import import_ucr, import_worldcereal

    if (out / "zarr.json").exists() or (out / ".zgroup").exists():
        return out
    source = shared / dataset.path
    if not source.is_file():
        raise InputError(f"real data set {dataset.name}: {source} not found (the shared data folder)")
    run = import_ucr if dataset.importer == "ucr" else import_worldcereal
    options = dict(dataset.options)
    if dataset.importer == "worldcereal":
        legend = shared / "worldcereal" / "crop_type_class_mappings.csv"
        options["legend"] = legend if legend.is_file() else None
    run(source, out, fractions=(1.0, 0.0, 0.0), overwrite=True, **options)
    return out


def fold_splits(labels: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Per fold, a split code per sample: 2 = the fold's test samples, 1 = a stratified 15% of the
    others (at least one per class; validation, for the neural methods), 0 = training."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    plans = []
    for rest, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels):
        plan = np.full(len(labels), 2, np.uint8)
        size = max(round(0.15 * len(rest)), len(np.unique(labels)))
        fit, val = train_test_split(rest, test_size=size, stratify=labels[rest], random_state=seed)
        plan[fit], plan[val] = 0, 1
        plans.append(plan)
    return plans


def subsample(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Rows of a stratified subsample of at most ``limit`` samples (all rows when None or more)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(np.arange(len(labels)), train_size=limit, stratify=labels, random_state=seed)
    return np.sort(kept)


def _features(reader: DatasetReader, rows: np.ndarray) -> np.ndarray:
    """The gap-filled (T·C·P·P) values of each sample, the input of the classical methods."""
    return np.nan_to_num(reader.read("patches")[rows].reshape(len(rows), -1))


def classical(method: str, x: np.ndarray, labels: np.ndarray, split: np.ndarray, seed: int) -> np.ndarray:
    """Predictions on the test samples (split 2) of a 500-tree random forest or a 1-nearest-neighbour
    (Euclidean, on features z-scored with the training samples' statistics), fit on all others."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    fit, test = split < 2, split == 2
    if method == "random_forest":
        model = RandomForestClassifier(n_estimators=500, random_state=seed, n_jobs=1)
        return model.fit(x[fit], labels[fit]).predict(x[test])
    mean, std = x[fit].mean(0), x[fit].std(0)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    return KNeighborsClassifier(1).fit(z[fit], labels[fit]).predict(z[test])


def refits(method: str, budget: RealBudget) -> bool:
    """Whether ``method`` is scored after :func:`train`'s refit (the budget's choice, or STAR refit)."""
    return budget.refit or method == "star_refit"


def neural_config(method: str, budget: RealBudget, seed: int) -> TrainConfig:
    """The training config of a neural method: the budget's, with the method's cell and ``seed``."""
    from cropstar.train.config import load_config

    settings = [*budget.settings, f"seed={seed}"]
    if method in ("lstm", "gru"):
        settings.append(f"model.cell={method}")
    return load_config(budget.config, settings)


def neural(method: str, dataset: Path, run: Path, budget: RealBudget, seed: int) -> dict[str, Any]:
    """The accuracy report on the test split of ``dataset`` of STAR (one model, refit on the
    training and validation samples for the epochs validation selected, or an ensemble) or a deep
    baseline (the same settings, another cell), trained in ``run``."""
    from cropstar.train.ensemble import train_ensemble
    from cropstar.train.evaluate import evaluate
    from cropstar.train.trainer import train

    config = neural_config(method, budget, seed)
    resume = (run / "checkpoint.pt").is_file() or (run / "members").is_dir()
    if method in ENSEMBLES:
        bagged = method == "star_bagged"
        model = train_ensemble(
            config, dataset, run, budget.members, resume=resume, refit=budget.refit and not bagged, bagged=bagged
        ).model
    else:
        model = train(config, dataset, run, resume=resume, refit=refits(method, budget)).model
    return evaluate(model, dataset, split="test").report


def run_identity(name: str, method: str, fold: int, budget: RealBudget) -> dict[str, Any]:
    """What a stored run must match to be reused: data set, method, fold, budget and, for the neural
    methods, every training setting that differs from its default (so a changed config trains again,
    while a setting added to cropstar later, off by default, keeps the runs already made)."""
    identity: dict[str, Any] = {"dataset": name, "method": method, "fold": fold, "budget": budget.name}
    if method not in CLASSICAL:
        identity["config"] = neural_config(method, budget, fold).model_dump(mode="json", exclude_defaults=True)
        identity["refit"] = refits(method, budget)
        identity["members"] = budget.members if method in ENSEMBLES else 1
    return identity


@dataclass
class RealRun:
    """The result of one method on one fold of one data set."""

    dataset: str
    method: str
    fold: int
    report: dict[str, Any]
    seconds: float


def run_suite(
    shared: Path,
    out: Path,
    budget: RealBudget,
    datasets: list[str],
    methods: list[str],
    progress: Callable[[int, int, str], None] | None = None,
    train_missing: bool = True,
) -> list[RealRun]:
    """Every method on every fold of every data set; finished ones are read back from ``out/runs``
    (``train_missing=False``: only those, the others left out)."""
    unknown = [d for d in datasets if d not in DATASETS] + [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown data set or method {', '.join(unknown)}; data sets: {', '.join(DATASETS)}; "
                         f"methods: {', '.join(METHODS)}")  # fmt: skip
    plan = [(d, k, m) for d in datasets for k in range(budget.folds) for m in methods]
    runs: list[RealRun] = []
    for index, (name, fold, method) in enumerate(plan):
        label = f"{name} fold {fold + 1} {method}"
        if progress is not None:
            progress(index, len(plan), label)
        path = out / "runs" / f"{name}-{method}-fold{fold + 1}.json"
        identity = run_identity(name, method, fold, budget)
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored["identity"] == identity:
                runs.append(RealRun(name, method, fold, stored["report"], stored["seconds"]))
                continue
        if not train_missing:
            continue
        reader = open_dataset(import_dataset(DATASETS[name], shared, out / "data" / name))
        labels = reader.read("labels")
        rows = subsample(labels, budget.max_samples)
        split = fold_splits(labels[rows], budget.folds)[fold]
        started = time.perf_counter()
        if method in CLASSICAL:
            predicted = classical(method, _features(reader, rows), labels[rows], split, seed=fold)
            report = accuracy_report(labels[rows][split == 2], predicted, reader.class_table)
        else:
            copy = copy_dataset(reader, out / "folds" / f"{name}-fold{fold + 1}", split, rows)
            shared_run = "star" if method == "star_refit" else method  # its first part is STAR's run
            run = out / "train" / f"{name}-{shared_run}-fold{fold + 1}"
            report = neural(method, copy, run, budget, fold)
        seconds = time.perf_counter() - started
        write_text_atomic(path, json.dumps({"identity": identity, "report": report, "seconds": seconds}) + "\n")
        runs.append(RealRun(name, method, fold, report, seconds))
    if progress is not None:
        progress(len(plan), len(plan), "done")
    return runs
