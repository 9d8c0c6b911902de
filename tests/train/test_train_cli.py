"""The training doors of the CLI: train → evaluate → register → retrain → promote, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from crop_datasets import make_dataset
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.train import trainer
from cropstar.train.trainer import TrainResult

runner = CliRunner()
TINY = ["--set", "epochs=2", "--set", "model.hidden_size=8", "--set", "batch_size=32"]


def _run(*args: str | Path) -> str:
    """The standard output of a command that must succeed (progress goes to stderr)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_train_evaluate_register_retrain_promote(crop_dataset: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    output = _run(
        "train",
        "--data",
        crop_dataset,
        "--out",
        tmp_path / "run",
        *TINY,
        "--register",
        "crops",
        "--registry",
        registry,
    )
    assert "test split: overall accuracy" in output and "registered as crops:v1 (current)" in output
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert card["metrics"]["test"]["n_samples"] == 36  # the test split, recorded in the card
    assert (tmp_path / "run" / "evaluation" / "confusion_matrix.png").exists()

    report = json.loads(
        _run(
            "evaluate",
            "--model",
            "crops",
            "--data",
            crop_dataset,
            "--split",
            "val",
            "--registry",
            registry,
            "--json",
        )
    )
    assert report["split"] == "val" and report["n_samples"] == 36
    assert set(report) >= {
        "overall_accuracy",
        "kappa",
        "macro_f1",
        "weighted_f1",
        "per_class",
        "confusion_matrix",
    }

    season = make_dataset(
        tmp_path / "season2", codes=("1110", "1510", "3300"), seed=5
    )  # barley out, a new class in
    _run(
        "train",
        "--data",
        season,
        "--out",
        tmp_path / "run2",
        *TINY,
        "--init-from",
        "crops",
        "--register",
        "crops",
        "--registry",
        registry,
    )
    versions = json.loads(_run("models", "list", "--registry", registry, "--json"))
    assert [(v["ref"], v["current"]) for v in versions] == [("crops:v1", True), ("crops:v2", False)]
    retrained = json.loads((registry / "crops" / "v2" / "model.json").read_text())
    assert [c["code"] for c in retrained["classes"]] == ["1110", "1510", "3300"]
    assert "Promoted" not in _run("models", "promote", "crops:v2", "--registry", registry)
    shown = json.loads(_run("models", "show", "crops", "--registry", registry))
    assert shown["registration"]["ref"] == "crops:v2" and shown["card"]["training"]["init_from"]


def test_errors_are_one_line_and_name_the_problem(crop_dataset: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "--data", str(crop_dataset), "--out", str(tmp_path / "r"), "--set", "model.hiden_size=8"],
    )
    assert result.exit_code == 2 and "hiden_size" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            "nothing",
            "--data",
            str(crop_dataset),
            "--registry",
            str(tmp_path / "empty"),
        ],
    )
    assert result.exit_code == 2 and "nothing" in result.output


def test_a_bad_set_value_is_blamed_on_the_override_not_the_file(crop_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("epochs: 2\n")
    args = ["train", "--data", crop_dataset, "--out", tmp_path / "r", "--config", config]
    result = runner.invoke(app, [str(a) for a in [*args, "--set", "batch_size=0"]])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: invalid value given with --set batch_size=0: batch_size: ")
    assert "settings.yaml" not in result.stderr
    config.write_text("epochs: 0\n")
    result = runner.invoke(app, [str(a) for a in [*args, "--set", "batch_size=16"]])
    assert result.exit_code == 2 and f"invalid training settings in {config}: epochs: " in result.stderr
    assert "--set" not in result.stderr


def test_stopped_early_only_when_epochs_were_left(crop_dataset: Path, tmp_path: Path) -> None:
    patience = ["--set", "early_stopping.patience=1", "--set", "early_stopping.min_delta=100"]
    args = ["train", "--data", crop_dataset, *TINY, *patience]
    flat = " ".join(_run(*args, "--out", tmp_path / "all").split())  # 2 of 2 epochs
    assert "best epoch" in flat and "(stopped early)" not in flat
    flat = " ".join(_run(*args, "--set", "epochs=4", "--out", tmp_path / "early").split())  # 2 of 4
    assert "best epoch" in flat and "(stopped early)" in flat


def test_only_rank_0_prints_evaluates_and_registers_under_torchrun(
    crop_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every torchrun process runs the command; the others train with rank 0 and then stay silent."""
    worlds = []

    def trained(config: object, data: Path, out: Path, **options: object) -> TrainResult:
        worlds.append(options.get("world"))
        row = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9}
        return TrainResult(out, out / "model", 1, 0.4, [row], notes=["a note"])

    monkeypatch.setattr(trainer, "train", trained)
    for variable, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(variable, value)
    registry = tmp_path / "registry"
    args = ["train", "--data", crop_dataset, "--out", tmp_path / "run", *TINY, "--register", "crops"]
    result = runner.invoke(app, [str(a) for a in [*args, "--registry", registry]])
    assert result.exit_code == 0, result.output
    assert result.output == ""  # no summary, note, test split or "wrote" line
    assert not registry.exists() and not (tmp_path / "run" / "evaluation").exists()
    assert [(w.rank, w.world_size) for w in worlds] == [(1, 2)]


def test_device_and_amp_options_set_the_run_and_are_recorded(crop_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run("train", "--data", crop_dataset, "--out", out, *TINY, "--set", "epochs=1", "--device", "cpu", "--amp")
    config = (out / "config.yaml").read_text()
    assert "device: cpu" in config.splitlines() and "amp: true" in config.splitlines()
    training = json.loads((out / "model" / "model.json").read_text())["training"]
    assert training["device"] == "cpu" and training["device_name"] == "cpu"
    assert "amp applies to CUDA only and is ignored on the CPU" in training["notes"]


def test_device_auto_trains_on_the_cpu_without_cuda(crop_dataset: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: auto means cuda")
    _run("train", "--data", crop_dataset, "--out", tmp_path / "run", *TINY, "--set", "epochs=1", "--device", "auto")
    assert json.loads((tmp_path / "run" / "model" / "model.json").read_text())["training"]["device"] == "cpu"


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:x"])
def test_a_device_that_is_not_there_is_refused_naming_the_option(
    device: str, crop_dataset: Path, tmp_path: Path
) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = runner.invoke(app, ["train", "--data", str(crop_dataset), "--out", str(tmp_path / "run"), "--device", device])
    assert result.exit_code == 2 and "--device" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
