"""Splits by field: no field in two splits, stratified by class, deterministic by seed."""

from __future__ import annotations

import numpy as np
import pytest

from cropstar.data.splits import (
    check_fractions,
    field_strata,
    folds_by_field,
    split_by_field,
    split_class_counts,
    split_code,
    split_counts,
)
from cropstar.errors import InputError


def _fields(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four classes of 40, 20, 10 and 2 fields; 1–4 samples per field, sharing the field's label."""
    rng = np.random.default_rng(seed)
    field_ids, labels = [], []
    for label, n_fields in enumerate((40, 20, 10, 2)):
        for f in range(n_fields):
            for _ in range(rng.integers(1, 5)):
                field_ids.append(f"c{label}-f{f}")
                labels.append(label)
    order = rng.permutation(len(labels))
    return np.array(field_ids)[order], np.array(labels)[order]


def test_no_field_in_two_splits() -> None:
    field_ids, labels = _fields()
    split = split_by_field(field_ids, labels, seed=3)
    assert split.dtype == np.uint8 and split.shape == labels.shape
    for field in np.unique(field_ids):
        assert len(np.unique(split[field_ids == field])) == 1, field


def test_stratified_by_class() -> None:
    field_ids, labels = _fields()
    split = split_by_field(field_ids, labels, (0.5, 0.25, 0.25), seed=0)
    fields, inverse, strata = field_strata(field_ids, labels)
    field_split = np.zeros(len(fields), dtype=int)
    field_split[inverse] = split
    for label, n_fields in enumerate((40, 20, 10)):
        counts = np.bincount(field_split[strata == label], minlength=3)
        expected = np.array([0.5, 0.25, 0.25]) * n_fields
        assert np.all(np.abs(counts - expected) <= 1), (label, counts)
    # the class with two fields keeps at least one in training
    assert (field_split[strata == 3] == 0).sum() >= 1


def test_deterministic_by_seed() -> None:
    field_ids, labels = _fields()
    a = split_by_field(field_ids, labels, seed=7)
    np.testing.assert_array_equal(a, split_by_field(field_ids, labels, seed=7))
    assert not np.array_equal(a, split_by_field(field_ids, labels, seed=8))


def test_few_fields_go_to_training_first() -> None:
    split = split_by_field(["a", "b", "c"], [0, 1, 1], seed=0)
    assert split[0] == 0  # a class with one field: training
    assert 0 in split[1:]  # a class with two fields keeps one in training
    single = split_by_field(["x"] * 5, [2] * 5, seed=0)
    np.testing.assert_array_equal(single, 0)


def test_per_timestep_labels_stratify_by_majority() -> None:
    labels = np.array([[0, 0, -1], [1, 1, 0], [-1, -1, -1]])
    fields, _, strata = field_strata(np.array(["a", "b", "c"]), labels)
    assert list(fields) == ["a", "b", "c"] and list(strata) == [0, 1, -1]
    split = split_by_field(["a", "b", "c"], labels)
    assert split.shape == (3,)


def test_counts_and_fraction_checks() -> None:
    split = np.array([0, 0, 1, 2, 2, 2], dtype=np.uint8)
    assert split_counts(split) == {"train": 2, "val": 1, "test": 3}
    counts = split_class_counts(split, np.array([0, 1, 1, 0, 0, -1]), 2)
    np.testing.assert_array_equal(counts, [[1, 1], [0, 1], [2, 0]])
    assert check_fractions([0.8, 0.2, 0]) == (0.8, 0.2, 0.0)
    for bad, message in (
        ([0.5, 0.5], "three values"),
        ([0.7, 0.2, 0.2], "sum to 1"),
        ([0, 0.5, 0.5], "training fraction"),
        ([1.2, -0.1, -0.1], "non-negative"),
    ):
        with pytest.raises(InputError, match=message):
            check_fractions(bad)
    assert split_code("validation") == 1
    with pytest.raises(InputError, match="unknown split 'dev'"):
        split_code("dev")
    with pytest.raises(InputError, match="field ids"):
        split_by_field(["a"], [0, 1])


def test_folds_by_field_keep_fields_whole_and_deal_each_class_across_the_folds() -> None:
    field_ids, labels = _fields()
    fold = folds_by_field(field_ids, labels, 5, seed=2)
    assert fold.shape == labels.shape and set(fold.tolist()) == set(range(5))
    for field in np.unique(field_ids):
        assert len(np.unique(fold[field_ids == field])) == 1, field
    _, first = np.unique(field_ids, return_index=True)
    per_fold = np.bincount(fold[first], minlength=5)
    assert per_fold.max() - per_fold.min() <= 1  # 72 fields: 15, 15, 14, 14, 14
    for label, n_fields in enumerate((40, 20, 10)):
        counts = np.bincount(fold[first][labels[first] == label], minlength=5)
        assert counts.min() == n_fields // 5 == counts.max()  # each class split evenly
    assert np.array_equal(folds_by_field(field_ids, labels, 5, seed=2), fold)
    assert not np.array_equal(folds_by_field(field_ids, labels, 5, seed=3), fold)
    with pytest.raises(InputError, match="at least 2"):
        folds_by_field(field_ids, labels, 1)
    with pytest.raises(InputError, match="need at least 100 fields, got 72"):
        folds_by_field(field_ids, labels, 100)
