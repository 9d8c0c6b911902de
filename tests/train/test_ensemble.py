"""Ensembles: members from consecutive seeds, stored as one artifact that averages their class
probabilities through everything that reads a model (evaluation, early-season maps, ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.dataset import open_dataset
from cropstar.errors import InputError, ModelMismatchError
from cropstar.infer.blocks import probabilities_after_each_step
from cropstar.infer.export import export_onnx
from cropstar.infer.predict import predict_patches
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import load_artifact
from cropstar.nn.ensemble import EnsembleClassifier
from cropstar.train.config import load_config
from cropstar.train.ensemble import train_ensemble
from cropstar.train.retrain import init_from

runner = CliRunner()
TINY = [
    "model.hidden_size=8",
    "model.num_layers=2",
    "batch_size=32",
    "epochs=2",
    "device=cpu",
    "optimiser.lr=3e-2",
]


def test_an_ensemble_gives_its_members_mean_probability() -> None:
    architecture = Architecture("star", 6, 8, 2, 3, "per_sequence", members=3)
    model = build_classifier(architecture).eval()
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 3
    x, mask = torch.randn(5, 7, 6), torch.rand(5, 7) > 0.3
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x, mask), -1) for m in model.members]).mean(0)
        torch.testing.assert_close(torch.softmax(model(x, mask), -1), mean)
    with pytest.raises(ValueError, match="at least two members"):
        EnsembleClassifier([model.members[0]])
    with pytest.raises(InputError, match="members must be a positive integer"):
        Architecture("star", 6, 8, 2, 3, members=0)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crop_datasets import make_dataset

    folder = tmp_path_factory.mktemp("ensemble")
    data = make_dataset(folder / "crops")
    train_ensemble(load_config(None, TINY), data, folder / "run", 2)
    return folder


def test_members_are_trained_from_consecutive_seeds_and_stored_as_one_model(ensemble_run: Path) -> None:
    run = ensemble_run / "run"
    members = [load_artifact(run / "members" / str(i) / "model") for i in range(2)]
    assert [m.card.training["seed"] for m in members] == [0, 1]
    ensemble = load_artifact(run / "model")
    assert ensemble.card.architecture.members == 2 and isinstance(ensemble.model, EnsembleClassifier)
    assert [m["seed"] for m in ensemble.card.training["ensemble"]["members"]] == [0, 1]
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["mlm:architecture"].startswith("ensemble of 2")
    first, second = (dict(m.model.named_parameters()) for m in members)
    assert not torch.equal(first["head.linear.weight"], second["head.linear.weight"])

    rng = np.random.default_rng(0)
    patches = rng.normal(0.2, 0.05, (6, 8, 6, 3, 3)).astype(np.float32)
    mask = rng.random((6, 8)) > 0.2
    mean = np.mean([predict_patches(m, patches, mask) for m in members], axis=0)
    np.testing.assert_allclose(predict_patches(ensemble, patches, mask), mean, rtol=1e-5, atol=1e-6)
    early = np.mean([probabilities_after_each_step(m, patches, mask) for m in members], axis=0)
    np.testing.assert_allclose(
        probabilities_after_each_step(ensemble, patches, mask), early, rtol=1e-5, atol=1e-6
    )

    with pytest.raises(ModelMismatchError, match="is an ensemble of 2 models"):
        init_from(ensemble, ensemble.card.architecture, ensemble.card.class_table)


def test_an_ensemble_resumes_without_training_again(ensemble_run: Path) -> None:
    run = ensemble_run / "run"
    before = (run / "members" / "1" / "log.csv").read_text()
    result = train_ensemble(load_config(None, TINY), ensemble_run / "crops", run, 2, resume=True)
    assert (run / "members" / "1" / "log.csv").read_text() == before
    assert [len(m.history) for m in result.members] == [2, 2] and result.parameters > 0


def test_an_ensemble_exports_to_onnx(ensemble_run: Path, tmp_path: Path) -> None:
    loaded = load_artifact(ensemble_run / "run" / "model")
    path = export_onnx(loaded, tmp_path / "ensemble.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, loaded.card.architecture.input_size)).astype(np.float32)
    mask = rng.random((3, 8)) > 0.3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x, "mask": mask})[0]
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_bagged_members_validate_on_their_own_fold_of_the_same_samples(ensemble_run: Path, tmp_path: Path) -> None:
    source = open_dataset(ensemble_run / "crops")
    result = train_ensemble(load_config(None, TINY), ensemble_run / "crops", tmp_path / "run", 3, bagged=True)
    splits = [open_dataset(tmp_path / "run" / "bagged" / str(i)).read("split") for i in range(3)]
    original = source.read("split")
    for split in splits:
        assert np.array_equal(split == 2, original == 2)  # the test samples stay the test samples
    validation = np.sum([split == 1 for split in splits], axis=0)
    assert np.all(validation[original < 2] == 1)  # every labelled sample validates exactly one member
    for i, member in enumerate(result.members):
        assert load_artifact(member.model).card.training["dataset"] == str(tmp_path / "run" / "bagged" / str(i))
    ensemble = load_artifact(tmp_path / "run" / "model")
    assert ensemble.card.normalisation.to_dict() == source.normalisation.to_dict()  # the same inputs
    assert ensemble.card.training["fingerprint"] == source.fingerprint
    assert ensemble.card.training["ensemble"]["validation"].startswith("bagged folds")
    with pytest.raises(InputError, match="exclude each other"):
        train_ensemble(load_config(None, TINY), ensemble_run / "crops", tmp_path / "again", 2, bagged=True, refit=True)


def test_cli_trains_an_ensemble_and_reports_its_cost(ensemble_run: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(ensemble_run / "crops"), "--out", str(tmp_path / "run"), "--ensemble", "2"]
    result = runner.invoke(app, [*args, *(item for o in TINY for item in ("--set", o))])
    assert result.exit_code == 0, result.output
    assert "member 1: best epoch" in result.output and "ensemble of 2:" in result.output
    assert "test split: overall accuracy" in result.output
    refused = runner.invoke(app, [*args, "--init-from", str(ensemble_run / "run" / "model")])
    assert refused.exit_code != 0 and "does not take --init-from" in refused.output
    alone = runner.invoke(app, ["train", "--data", str(ensemble_run / "crops"), "--out", str(tmp_path / "b"), "--bagged"])
    assert alone.exit_code != 0 and "give --ensemble N" in alone.output
