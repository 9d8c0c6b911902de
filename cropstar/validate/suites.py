"""The data and the model of each validation suite (issue 8; DESIGN.md, "The paper's protocols").

mnist / pmnist: pixel-by-pixel MNIST from the IDX files (md5-checked), 28 / d squared steps of one
value, pMNIST with the fixed, seeded permutation; a deep RNN read at its last step
(:class:`~cropstar.nn.heads.FinalStateHead`). crops: patch sequences (:mod:`cropstar.validate.crops`)
with the masked average over valid steps (task B) or a classifier on every step (task A). Chrono
initialisation with T_max the sequence length throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cropstar.data.mnist import load_mnist, pixel_sequences
from cropstar.errors import InputError
from cropstar.nn import FinalStateHead, PerSequenceHead, PerTimestepHead, SequenceClassifier, make_rnn
from cropstar.validate.budgets import Budget

SUITES = ("mnist", "pmnist", "crops")
HEADS = {"final": FinalStateHead, "per_sequence": PerSequenceHead, "per_timestep": PerTimestepHead}
#: The split of the training images into training and validation samples is seeded by this alone.
SPLIT_SEED = 0


@dataclass
class Split:
    """Inputs ``x`` (N, T, I) float32, labels ``y`` (N,) int64, optional ``mask`` (N, T) bool."""

    x: Tensor
    y: Tensor
    mask: Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class SuiteData:
    """A suite's three splits and what a model needs to know of them: ``head`` one of :data:`HEADS`
    (labels (N,) for final / per_sequence, (N, T) with −1 = ignore for per_timestep)."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    head: str = "final"

    @property
    def steps(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[2])


def load_suite(
    name: str, budget: Budget, data: Path | None, *, cache: Path | None = None, task: str = "per_sequence"
) -> SuiteData:
    """The splits of suite ``name`` at ``budget``'s sizes, from ``data`` (crops: a WorldCereal parquet,
    else a synthetic scene built in ``cache``; ``task`` per_sequence or per_timestep)."""
    if name not in SUITES:
        raise InputError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    if name == "crops":
        return _crops(budget, data, cache, task)
    if data is None:
        raise InputError(f"{name} needs --data: a folder with the four MNIST IDX files (e.g. ../shared/data/mnist)")
    permuted = name == "pmnist"
    train = load_mnist(Path(data), "train")
    test = load_mnist(Path(data), "test")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train.labels))
    n_val = budget.val or 0
    val_index = order[len(order) - n_val :]
    train_index = order[: len(order) - n_val][: budget.train]
    test_count = len(test.labels) if budget.test is None else budget.test

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        x = pixel_sequences(images, permuted=permuted, downsample=budget.downsample)
        return Split(x, torch.from_numpy(labels))

    return SuiteData(
        name,
        split(train.images[train_index], train.labels[train_index]),
        split(train.images[val_index], train.labels[val_index]),
        split(test.images[:test_count], test.labels[:test_count]),
        num_classes=10,
    )


def _crops(budget: Budget, data: Path | None, cache: Path | None, task: str) -> SuiteData:
    from cropstar.data.dataset import open_dataset
    from cropstar.validate.crops import crops_dataset, read_split

    if cache is None:
        raise InputError("the crops suite needs a cache folder for its dataset")
    dataset = crops_dataset(cache, task, budget.scene_size, data)
    splits = [Split(*read_split(dataset, split, limit)) for split, limit in
              (("train", budget.train), ("val", budget.val), ("test", budget.test))]  # fmt: skip
    reader = open_dataset(dataset)
    source = dataset.parent.name if dataset.name == "dataset" else dataset.name  # synthetic-64-per_sequence …
    return SuiteData(f"crops {source}", *splits, num_classes=len(reader.class_table), head=reader.task)


def build_model(data: SuiteData, cell: str, layers: int, budget: Budget) -> SequenceClassifier:
    """The suite's classifier: ``layers`` distinct ``cell`` layers of ``budget.hidden_size`` units,
    chrono-initialised for the suite's sequence length, and the suite's head."""
    rnn = make_rnn(cell, data.input_size, budget.hidden_size, layers, t_max=data.steps)
    return SequenceClassifier(rnn, HEADS[data.head](budget.hidden_size, data.num_classes))
