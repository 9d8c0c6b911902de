"""Evaluating a model artifact on a dataset: predictions equal a direct forward pass, reports and
files, classes the model does not know, per-step reports, mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from crop_datasets import make_dataset

from cropstar.data.dataset import open_dataset
from cropstar.errors import InputError, ModelMismatchError
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import card_for_dataset, load_artifact, save_artifact
from cropstar.train.evaluate import evaluate, predict_dataset


def _artifact(dataset: Path, folder: Path, head: str = "per_sequence") -> Path:
    reader = open_dataset(dataset)
    _, _, c, p, _ = reader.shape
    architecture = Architecture("star", c * p * p, 8, 2, len(reader.class_table), head)
    torch.manual_seed(1)
    return save_artifact(folder, build_classifier(architecture), card_for_dataset(reader, architecture))


def test_predictions_equal_a_direct_forward_pass(crop_dataset: Path, tmp_path: Path) -> None:
    loaded = load_artifact(_artifact(crop_dataset, tmp_path / "model"))
    predictions = predict_dataset(loaded, crop_dataset, "val", batch_size=7)
    reader = open_dataset(crop_dataset)
    rows = reader.split_indices("val")
    patches = loaded.card.normalisation.apply(reader.read("patches")[rows])
    x = torch.from_numpy(np.nan_to_num(patches.reshape(len(rows), patches.shape[1], -1)))
    mask = torch.from_numpy(reader.read("mask")[rows])
    expected = torch.softmax(loaded.model(x, mask), -1).detach().numpy()
    np.testing.assert_allclose(predictions.probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(predictions.labels, reader.read("labels")[rows])
    np.testing.assert_array_equal(predictions.indices, rows)


def test_evaluate_writes_the_report(crop_dataset: Path, tmp_path: Path) -> None:
    result = evaluate(_artifact(crop_dataset, tmp_path / "model"), crop_dataset, split="test", out=tmp_path / "eval")
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert stored["n_samples"] == open_dataset(crop_dataset).splits["test"] == result.report["n_samples"]
    assert sum(map(sum, stored["confusion_matrix"])) == stored["n_samples"]
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert stored["split"] == "test" and stored["unknown_classes"] == {}
    assert result.per_timestep is None
    with pytest.raises(InputError, match="split must be one of"):
        evaluate(tmp_path / "model", crop_dataset, split="holdout")


def test_classes_the_model_does_not_know_are_counted_not_scored(tmp_path: Path) -> None:
    old = make_dataset(tmp_path / "old", codes=("1110", "1510", "1200"))
    new = make_dataset(tmp_path / "new", codes=("1510", "1110", "9999"), seed=1)  # other order, one new
    report = evaluate(_artifact(old, tmp_path / "model"), new, split="all").report
    labels = open_dataset(new).read("labels")
    assert report["unknown_classes"] == {"9999": int((labels == 2).sum())}
    assert report["n_samples"] == int((labels != 2).sum())
    support = {c["code"]: c["support"] for c in report["per_class"]}
    assert support == {"1110": int((labels == 1).sum()), "1510": int((labels == 0).sum()), "1200": 0}


def test_per_timestep_models_are_also_scored_per_step(crop_dataset_per_timestep: Path, tmp_path: Path) -> None:
    model = _artifact(crop_dataset_per_timestep, tmp_path / "model", head="per_timestep")
    result = evaluate(model, crop_dataset_per_timestep, split="val", out=tmp_path / "eval")
    reader = open_dataset(crop_dataset_per_timestep)
    assert [row["date"] for row in result.per_timestep] == reader.dates
    labels = reader.read("labels")[reader.split_indices("val")]
    assert result.report["n_samples"] == int((labels >= 0).sum())
    assert sum(row["n_samples"] for row in result.per_timestep) == result.report["n_samples"]
    assert (tmp_path / "eval" / "per_timestep.png").exists()


def test_a_dataset_with_other_bands_is_refused(crop_dataset: Path, tmp_path: Path) -> None:
    model = _artifact(crop_dataset, tmp_path / "model")
    other = make_dataset(tmp_path / "p1", patch_size=1)
    with pytest.raises(ModelMismatchError, match="patch size"):
        evaluate(model, other)
