"""The data and the model of each validation suite (DESIGN.md, "The paper's protocols").

mnist / pmnist: pixel-by-pixel MNIST from the IDX files (md5-checked), 28 / d squared steps of one
value, pMNIST with the fixed, seeded permutation; a deep RNN read at its last step
(:class:`~cropstar.nn.heads.FinalStateHead`). crops: patch sequences (:mod:`cropstar.validate.crops`)
with the masked average over valid steps (task B) or a classifier on every step (task A). gestures:
clips of MNIST digits whose class is their motion (:func:`cropstar.validate.gestures.moving_digits`), or
20BN-Jester v1 clips for those who hold it, through a conv RNN, its outputs averaged over time and a
4-layer CNN head (:mod:`cropstar.nn.gesture_classifier`). Chrono initialisation with T_max the
sequence length throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn import FinalStateHead, PerSequenceHead, PerTimestepHead, SequenceClassifier, make_rnn
from cropstar.validate.budgets import Budget
from cropstar.validate.gestures import GESTURE_CLASSES, ClipStack, load_jester, moving_digits
from cropstar.validate.mnist import load_mnist, pixel_sequences

SUITES = ("mnist", "pmnist", "crops", "gestures")
HEADS = {"final": FinalStateHead, "per_sequence": PerSequenceHead, "per_timestep": PerTimestepHead}
#: The split of the training images into training and validation samples is seeded by this alone.
SPLIT_SEED = 0
#: Moving-digit clips per split where the budget says "all" (None): the full budget, which reads all
#: of a Jester split, gets as many as Jester's validation split offers in all.
MOVING_DIGIT_CLIPS = {"train": 20000, "val": 2000, "test": 2000}


@dataclass
class Split:
    """Inputs ``x`` (N, T, I) float32 (conv suites: (N, T, C, h, w), or a :class:`ClipStack` that
    decodes the clips a batch indexes), labels ``y`` (N,) int64, optional ``mask`` (N, T) bool."""

    x: Tensor | ClipStack
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
    def conv(self) -> bool:
        """Clips (N, T, C, h, w) for conv cells, not sequences of vectors."""
        return self.train.x.dim() == 5

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
    if name == "gestures":
        return _gestures(budget, data)
    if data is None:
        raise InputError(
            f"{name} needs --data: a folder with the four MNIST IDX files (e.g. ../shared/data/mnist)"
        )
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


def _gestures(budget: Budget, data: Path | None) -> SuiteData:
    if data is None:
        raise InputError("gestures needs --data: the MNIST folder (moving digits) or a 20BN-Jester v1 root")
    data = Path(data)
    if (data / "jester-v1-labels.csv").is_file():  # the real dataset, streamed (ClipStack)
        train = load_jester(
            data, "jester-v1-train.csv", frames=budget.frames, size=budget.size, limit=budget.train
        )
        n_val = budget.val or 0
        held_out = None if budget.test is None else n_val + budget.test  # the labelled validation split
        validation = load_jester(data, "jester-v1-validation.csv", frames=budget.frames, size=budget.size,
                                 limit=held_out)  # fmt: skip
        if len(validation) <= n_val:
            raise InputError(f"{data / 'jester-v1-validation.csv'}: {len(validation)} clips, but the budget's "
                             f"{n_val} validation clips and a test split need more")  # fmt: skip
        splits = [ClipStack(clips, positions) for clips, positions in
                  ((train, range(len(train))), (validation, range(n_val)),
                   (validation, range(n_val, len(validation))))]  # fmt: skip
        return SuiteData("gestures jester", *(Split(s, s.labels) for s in splits), num_classes=len(train.classes),
                         head="gesture")  # fmt: skip
    mnist_train, mnist_test = load_mnist(data, "train"), load_mnist(data, "test")
    sizes = {split: MOVING_DIGIT_CLIPS[split] if count is None else count for split, count in
             (("train", budget.train), ("val", budget.val), ("test", budget.test))}  # fmt: skip
    splits = []
    for seed, (split, count) in enumerate(sizes.items()):
        digits = mnist_test.images if split == "test" else mnist_train.images  # test digits never trained on
        clips = moving_digits(digits, n_clips=count, frames=budget.frames, size=budget.size, seed=seed)
        stack = ClipStack(clips, range(len(clips)))  # uint8 until a batch is read: 8 GB at the full budget
        splits.append(Split(stack, stack.labels))
    return SuiteData("gestures moving-digits", *splits, num_classes=len(GESTURE_CLASSES), head="gesture")


def build_model(data: SuiteData, cell: str, layers: int, budget: Budget) -> nn.Module:
    """The suite's classifier: ``layers`` distinct ``cell`` layers of ``budget.hidden_size`` units
    (gestures: ``budget.filters`` filters), initialised by the budget's ``init_options`` (chrono with
    the suite's sequence length unless told otherwise), and the suite's head."""
    init = budget.init_options(data.steps)
    if data.head == "gesture":
        from cropstar.nn.gesture_classifier import make_gesture_classifier

        return make_gesture_classifier(cell, data.train.x.shape[2], filters=budget.filters, layers=layers,
                                       num_classes=data.num_classes, head_filters=budget.head_filters,
                                       **init)  # fmt: skip
    rnn = make_rnn(cell, data.input_size, budget.hidden_size, layers, **init)
    return SequenceClassifier(rnn, HEADS[data.head](budget.hidden_size, data.num_classes))
