"""Predicting a stored dataset with a model artifact, and its accuracy report (DESIGN.md,
"Conventions of the field": accuracy reports; per-time-step tasks also per step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropstar.data.dataset import DatasetReader, PatchSequenceDataset, open_dataset
from cropstar.errors import InputError
from cropstar.infer.predict import class_probabilities
from cropstar.model.artifact import LoadedModel, check_dataset, load_artifact, save_artifact
from cropstar.train.metrics import accuracy_report, per_timestep_report
from cropstar.train.report import write_metrics

Progress = Callable[[str, int, int], None]
SPLITS = ("train", "val", "test", "all")


@dataclass
class Predictions:
    """A model's output on one split: ``probabilities`` (n, K) or (n, T, K) float32, ``predicted`` class
    ids (n,) or (n, T), the reference ``labels`` in the MODEL's class ids (−1 = ignore, or a class the
    model does not know), ``mask`` (n, T) and the samples' rows in the dataset (``indices``)."""

    probabilities: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    indices: np.ndarray
    unknown_codes: dict[str, int] = field(default_factory=dict)  # reference codes the model lacks: count


@dataclass
class Evaluation:
    """:func:`evaluate`'s result: the accuracy report, per-step rows (per-time-step models) and files."""

    report: dict[str, Any]
    per_timestep: list[dict[str, Any]] | None
    files: dict[str, Path]


def _split(split: str) -> str | None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    return None if split == "all" else split


@torch.inference_mode()
def predict_dataset(
    loaded: LoadedModel,
    data: str | Path | DatasetReader,
    split: str = "test",
    *,
    batch_size: int = 4096,
    progress: Progress | None = None,
) -> Predictions:
    """Run the model over one split of a dataset (normalised with the MODEL's statistics) after checking
    that the dataset fits it (bands, patch size, time grid: ModelMismatchError names what differs)."""
    reader = data if isinstance(data, DatasetReader) else open_dataset(data)
    card = loaded.card
    check_dataset(card, reader, like=str(loaded.path))
    samples = PatchSequenceDataset(reader, _split(split), normalisation=card.normalisation)
    if len(samples) == 0:
        raise InputError(f"{reader.path} has no samples in split {split!r}")
    # the dataset's class ids → the model's, by code
    model_ids = {code: i for i, code in enumerate(card.class_table.codes)}
    to_model = np.array([model_ids.get(code, -2) for code in reader.class_table.codes] + [-1], np.int64)
    device = next(loaded.model.parameters()).device
    outputs, labels, masks = [], [], []
    order = np.argsort(samples.indices, kind="stable")  # shard order: each shard is read once
    for start in range(0, len(order), batch_size):
        items = [samples[int(i)] for i in order[start : start + batch_size]]
        x, mask, label = (torch.stack(parts) for parts in zip(*items))
        logits = loaded.model(x.to(device), mask.to(device))
        outputs.append(class_probabilities(loaded, logits))
        labels.append(label.numpy())
        masks.append(mask.numpy())
        if progress is not None:
            progress("predicting", min(start + batch_size, len(order)), len(order))
    inverse = np.argsort(order)
    probabilities = np.concatenate(outputs)[inverse]
    reference = np.concatenate(labels)[inverse]
    mapped = to_model[reference]  # −1 indexes the appended −1
    unknown = mapped == -2
    codes, counts = np.unique(np.array(reader.class_table.codes)[reference[unknown]], return_counts=True)
    return Predictions(
        probabilities=probabilities,
        predicted=probabilities.argmax(-1),
        labels=np.where(unknown, -1, mapped),
        mask=np.concatenate(masks)[inverse],
        indices=samples.indices,
        unknown_codes={str(c): int(n) for c, n in zip(codes, counts)},
    )


def evaluate(
    model: str | Path | LoadedModel,
    data: str | Path | DatasetReader,
    *,
    split: str = "test",
    out: str | Path | None = None,
    batch_size: int = 4096,
    progress: Progress | None = None,
) -> Evaluation:
    """The accuracy of ``model`` (an artifact folder or a loaded model) on one split of ``data``: overall
    accuracy, kappa, macro / weighted F1, per-class precision / recall / F1 and the confusion matrix,
    and per step for per-time-step models. With ``out``: ``metrics.json``, ``confusion_matrix.png``,
    ``per_class.csv`` (and ``per_timestep.*``) written there. Reference classes the model does not know
    are left out and counted in ``report["unknown_classes"]``."""
    loaded = model if isinstance(model, LoadedModel) else load_artifact(model)
    reader = data if isinstance(data, DatasetReader) else open_dataset(data)
    predictions = predict_dataset(loaded, reader, split, batch_size=batch_size, progress=progress)
    table = loaded.card.class_table
    report = accuracy_report(predictions.labels, predictions.predicted, table)
    report.update(
        model=str(loaded.path),
        dataset=str(reader.path),
        split=split,
        unknown_classes=predictions.unknown_codes,
    )
    per_step = None
    if predictions.labels.ndim == 2:
        per_step = per_timestep_report(predictions.labels, predictions.predicted, table, dates=reader.dates)
    files = write_metrics(report, Path(out), per_step) if out is not None else {}
    return Evaluation(report, per_step, files)


#: The report's figures a model card keeps (``metrics[split]``).
SUMMARY_KEYS = ("overall_accuracy", "kappa", "macro_f1", "weighted_f1", "n_samples")


def record_evaluation(model: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Keep the summary figures of ``report`` in the model card at ``model`` as ``metrics[split]``
    (the artifact is rewritten atomically); returns them."""
    loaded = load_artifact(model)
    summary = {key: report[key] for key in SUMMARY_KEYS} | {"dataset": report.get("dataset")}
    loaded.card.metrics[str(report.get("split", "test"))] = summary
    save_artifact(model, loaded.model, loaded.card)
    return summary
