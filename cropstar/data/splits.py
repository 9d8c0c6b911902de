"""Train / validation / test splits by field, stratified by class and seeded (docs/data-formats.md:
the ``split`` array, 0 train, 1 validation, 2 test).

Every sample of one field lands in the same split, so no field's pixels are seen in training and
evaluated again. Fields are grouped by their class (the most frequent label of their samples) and
each group is shuffled with the seed and cut by the fractions with largest-remainder rounding; a
class with very few fields keeps at least one of them in training (a class with one field has it in
training only; with two, they go to training unless the fractions round one elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cropstar.errors import InputError

#: Split names in code order: ``split == 0`` is train, 1 validation, 2 test.
SPLITS: tuple[str, str, str] = ("train", "val", "test")
SPLIT_CODES: dict[str, int] = {name: code for code, name in enumerate(SPLITS)}
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions (train, val, test) summing to 1, train > 0; InputError otherwise."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise InputError(f"split fractions need three values (train, val, test), got {len(values)}: {values}")
    if any(not np.isfinite(f) or f < 0 for f in values):
        raise InputError(f"split fractions must be non-negative numbers, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise InputError(f"split fractions must sum to 1, got {values} (sum {sum(values):g})")
    if values[0] <= 0:
        raise InputError(f"the training fraction must be positive, got {values}")
    return values  # type: ignore[return-value]


def split_code(name: str) -> int:
    """``"train"`` → 0, ``"val"`` (or ``"validation"``) → 1, ``"test"`` → 2."""
    key = "val" if name == "validation" else name
    if key not in SPLIT_CODES:
        raise InputError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return SPLIT_CODES[key]


def field_strata(field_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct fields (sorted), the index of each sample's field, and each field's class: the most
    frequent non-negative label over its samples (and time steps), −1 where it has none; ties go to
    the smaller id."""
    fields, inverse = np.unique(np.asarray(field_ids).astype(str), return_inverse=True)
    labels = np.asarray(labels, dtype=np.int64)
    flat_labels = labels.reshape(len(labels), -1)
    rows = np.repeat(inverse, flat_labels.shape[1])
    values = flat_labels.ravel()
    keep = values >= 0
    strata = np.full(len(fields), -1, dtype=np.int64)
    if keep.any():
        num_classes = int(values[keep].max()) + 1
        counts = np.zeros((len(fields), num_classes), dtype=np.int64)
        np.add.at(counts, (rows[keep], values[keep]), 1)
        has = counts.sum(axis=1) > 0
        strata[has] = counts[has].argmax(axis=1)
    return fields, inverse, strata


def _allocate(n: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> list[int]:
    """Split ``n`` items by ``fractions`` with largest-remainder rounding (ties broken at random),
    at least one in train."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r + 1e-9)) for r in raw]
    tie = rng.permutation(3)
    remainders = sorted(range(3), key=lambda i: (-round(raw[i] - counts[i], 9), tie[i]))
    for i in remainders[: max(0, n - sum(counts))]:
        counts[i] += 1
    if n > 0 and counts[0] == 0:
        donor = max((1, 2), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[0] += 1
    return counts


def split_by_field(
    field_ids: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """Assign every sample to train (0), validation (1) or test (2): ``(N,)`` uint8.

    ``field_ids``: (N,) the field each sample belongs to; ``labels``: (N,) or (N, T) class ids,
    −1 = ignore. Fields are stratified by class (:func:`field_strata`); the same inputs and seed
    always give the same split, and no field appears in two splits.
    """
    fractions = check_fractions(fractions)
    field_ids = np.asarray(field_ids)
    labels = np.asarray(labels)
    if len(field_ids) != len(labels):
        raise InputError(f"{len(field_ids)} field ids but {len(labels)} labels")
    fields, inverse, strata = field_strata(field_ids, labels)
    rng = np.random.default_rng(seed)
    field_split = np.zeros(len(fields), dtype=np.uint8)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(len(members))]
        counts = _allocate(len(members), fractions, rng)
        bounds = np.cumsum([0, *counts])
        for code in range(3):
            field_split[members[bounds[code] : bounds[code + 1]]] = code
    return field_split[inverse]


def folds_by_field(
    field_ids: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray, folds: int, seed: int = 0
) -> np.ndarray:
    """The fold (0 … ``folds`` − 1) of every sample: ``(N,)`` int64. Fields are stratified by class
    (:func:`field_strata`), each class's fields shuffled with ``seed`` and dealt to the folds in turn
    (continuing where the previous class stopped, so the folds' sizes differ by at most one field);
    every sample of a field lands in the same fold."""
    if folds < 2:
        raise InputError(f"folds must be at least 2, got {folds}")
    field_ids, labels = np.asarray(field_ids), np.asarray(labels)
    if len(field_ids) != len(labels):
        raise InputError(f"{len(field_ids)} field ids but {len(labels)} labels")
    fields, inverse, strata = field_strata(field_ids, labels)
    if len(fields) < folds:
        raise InputError(f"{folds} folds need at least {folds} fields, got {len(fields)}")
    rng = np.random.default_rng(seed)
    field_fold = np.zeros(len(fields), dtype=np.int64)
    dealt = 0
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        field_fold[members[rng.permutation(len(members))]] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return field_fold[inverse]


def split_counts(split: np.ndarray) -> dict[str, int]:
    """``{"train": n, "val": n, "test": n}`` samples per split."""
    counts = np.bincount(np.asarray(split, dtype=np.int64), minlength=3)
    return {name: int(counts[code]) for code, name in enumerate(SPLITS)}


def split_class_counts(split: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(3, K) samples per split and class (per-timestep labels: each sample counted once per class
    it holds)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(len(labels), -1)
    counts = np.zeros((3, num_classes), dtype=np.int64)
    for code in range(3):
        rows = labels[np.asarray(split) == code]
        for k in range(num_classes):
            counts[code, k] = int((rows == k).any(axis=1).sum())
    return counts
