"""Ensembles: ``members`` classifiers trained alike from seeds ``seed``, ``seed + 1`` …, each a run
folder of its own (``OUT/members/<i>``, resumed where it stopped), stored as one model artifact
(``OUT/model``) whose class probabilities are the members' mean (:class:`EnsembleClassifier`).

With ``bagged`` folds the members also differ in their data: the training and validation samples
are cut by field into ``members`` stratified folds, and member i validates (early stopping, model
selection) on fold i and trains on the others, so every labelled sample trains most members and
none is wasted on validation alone. Each member's copy of the dataset (``OUT/bagged/<i>``) keeps the
test samples and the source's normalisation, so the members share the inputs the card describes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropstar.data.dataset import DatasetReader, copy_dataset, is_dataset, open_dataset
from cropstar.data.splits import folds_by_field
from cropstar.errors import InputError
from cropstar.model.artifact import load_artifact, parameter_count, save_artifact
from cropstar.nn.ensemble import EnsembleClassifier
from cropstar.train.config import TrainConfig
from cropstar.train.distributed import World, barrier
from cropstar.train.trainer import CHECKPOINT, Progress, TrainResult, train


@dataclass
class EnsembleResult:
    """The ensemble's run folder and artifact, each member's :class:`TrainResult`, and its cost."""

    run: Path
    model: Path
    members: list[TrainResult]
    parameters: int
    train_seconds: float

    @property
    def notes(self) -> list[str]:
        return [f"member {i}: {note}" for i, member in enumerate(self.members) for note in member.notes]


def train_ensemble(
    config: TrainConfig,
    data: Path | str,
    out: Path | str,
    members: int,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    world: World | None = None,
    refit: bool = False,
    bagged: bool = False,
) -> EnsembleResult:
    """Train ``members`` classifiers with ``config`` but their seeds (``config.seed + i``) on
    ``data`` and store them as one averaging model in ``out/model``. With ``resume``, members already
    trained are kept and an interrupted one continues from its checkpoint. ``refit``: each member is
    refit on the training and validation samples (:func:`train`) and the refit members are kept.
    ``bagged``: member i trains on its own folds of the data (:func:`bagged_datasets`)."""
    if members < 2:
        raise InputError(f"an ensemble needs at least 2 members, got {members}")
    if bagged and refit:
        raise InputError("--bagged and --refit exclude each other: a bagged member's validation fold is what "
                         "selects its epoch, and refitting would train every member on the same samples")  # fmt: skip
    out = Path(out)
    world = world or World.from_env()
    member_data = bagged_datasets(data, out / "bagged", members, config.seed, world) if bagged else [data] * members
    results = []
    started = time.perf_counter()
    for i in range(members):
        if progress is not None:
            progress("member", i, members)
        member_out = out / "members" / str(i)
        member_config = config.model_copy(update={"seed": config.seed + i})
        again = resume and (member_out / CHECKPOINT).is_file()
        result = train(
            member_config, member_data[i], member_out, resume=again, progress=progress, world=world, refit=refit
        )
        results.append(result)
    if progress is not None:
        progress("member", members, members)
    if world.is_main:
        _save_ensemble(out, results, open_dataset(data), bagged)
    loaded = load_artifact(out / "model") if world.is_main else None
    seconds = sum(float(row.get("seconds") or 0) for r in results for row in r.history)
    return EnsembleResult(
        out,
        out / "model",
        results,
        parameter_count(loaded.model) if loaded is not None else 0,
        seconds if seconds else time.perf_counter() - started,
    )


def bagged_datasets(data: Path | str, folder: Path, members: int, seed: int, world: World) -> list[Path]:
    """A copy of ``data`` per member in ``folder/<i>``: its training and validation samples cut by
    field into ``members`` stratified folds (:func:`folds_by_field`), member i's validation split
    being fold i; test samples and normalisation as in ``data``. Copies already there are reused."""
    reader = open_dataset(data)
    split = reader.read("split")
    pool = np.flatnonzero(split < 2)
    fold = folds_by_field(reader.read("field_ids")[pool], reader.read("labels")[pool], members, seed)
    paths = []
    for i in range(members):
        target = folder / str(i)
        if world.is_main and not is_dataset(target):
            member_split = split.copy()
            member_split[pool] = np.where(fold == i, 1, 0)
            copy_dataset(reader, target, member_split, normalisation=reader.normalisation)
        paths.append(target)
    barrier(world)
    return paths


def _save_ensemble(out: Path, results: list[TrainResult], source: DatasetReader, bagged: bool) -> None:
    """One artifact of the members' best models: the first member's card with ``members`` set, the
    source dataset and what each member's run selected in its training record."""
    loaded = [load_artifact(result.model) for result in results]
    card = loaded[0].card
    architecture = dataclasses.replace(card.architecture, members=len(loaded))
    member_records: list[dict[str, Any]] = [
        {"run": str(result.run), "seed": m.card.training.get("seed"), "best_epoch": result.best_epoch,
         "best_loss": result.best_loss, "epochs_run": len(result.history), "metrics": m.card.metrics}
        for result, m in zip(results, loaded, strict=True)
    ]  # fmt: skip
    ensemble = {"members": member_records, "combined_by": "mean probability",
                "validation": "bagged folds: member i validates on fold i" if bagged else "the dataset's split"}  # fmt: skip
    training = {**card.training, "dataset": str(source.path), "fingerprint": source.fingerprint, "ensemble": ensemble}
    for key in ("seed", "best_epoch", "epochs_run", "stopped_early"):
        training.pop(key, None)
    ensemble_card = dataclasses.replace(
        card, architecture=architecture, training=training, metrics={}, description=card.description
    )
    model = EnsembleClassifier([m.model for m in loaded])
    save_artifact(out / "model", model, ensemble_card)
