"""Seasonal retraining end to end through the CLI, as the README tells it: a model from season 1;
a new season with other acquisition dates and another number of grid steps; `train --init-from`
refuses the plain ingestion with the exact `ingest --like` command, which is then run as printed;
the retrained model is registered and evaluated on the new season."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.dataset import open_dataset

runner = CliRunner()
TINY = ["--set", "epochs=1", "--set", "model.hidden_size=8", "--set", "batch_size=64"]
INGEST = ["--label-column", "crop_code", "--name-column", "crop"]


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def season_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic seasons, 26 acquisitions each on other days, ingested as the README does."""
    folder = tmp_path_factory.mktemp("seasons")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        _make_seasons()
    return folder


def _make_seasons() -> None:
    _run("synth", "--out", "season1", "--size", "64", "--dates", "26")
    _run("synth", "--out", "season2", "--size", "64", "--seed", "2")
    for season in ("season1", "season2"):
        _run("ingest", "--cube", f"{season}/cube", "--fields", f"{season}/fields.geojson", *INGEST,
             "--out", f"{season}/dataset")


@pytest.fixture
def seasons(season_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder of a test: the seasons' folder."""
    monkeypatch.chdir(season_folder)
    return season_folder


def test_a_new_season_is_cut_onto_the_models_grid_and_retrained(seasons: Path) -> None:
    _run("train", "--data", "season1/dataset", "--out", "runs/1", *TINY, "--register", "crops")
    first, second = open_dataset("season1/dataset"), open_dataset("season2/dataset")
    assert len(first.dates) != len(second.dates) and first.dates[0] != second.dates[0]

    refused = runner.invoke(
        app, ["train", "--data", "season2/dataset", "--init-from", "crops", "--out", "runs/2", *TINY]
    )
    assert refused.exit_code != 0
    message = " ".join(refused.output.split())  # rich wraps long errors
    assert f"time steps: model expects {len(first.dates)}, the dataset has {len(second.dates)}" in message
    command = re.search(r"To fix, [^:]+: (cropstar ingest .*?--out \S+)", message)
    assert command is not None, message
    assert "--like models/crops/v1" in command.group(1) and not Path("runs/2/model").exists()

    _run(*shlex.split(command.group(1))[1:])  # the fix, run exactly as printed
    regridded = open_dataset("season2/dataset-regridded")
    assert len(regridded.dates) == len(first.dates)  # the model's steps, in season 2's year
    assert regridded.class_table.codes == second.class_table.codes

    output = _run("train", "--data", "season2/dataset-regridded", "--init-from", "crops", "--out", "runs/2",
                  *TINY, "--register", "crops")
    assert "registered as crops:v2" in output
    card = json.loads(Path("runs/2/model/model.json").read_text())
    assert card["training"]["init_from"]["path"] == "models/crops/v1"
    report = json.loads(_run("evaluate", "--model", "crops:v2", "--data", "season2/dataset-regridded",
                             "--json"))
    assert report["model"].endswith("crops/v2") and report["n_samples"] == regridded.splits["test"] > 0


def test_evaluating_an_old_model_on_a_new_grid_names_the_fix(seasons: Path) -> None:
    _run("train", "--data", "season1/dataset", "--out", "runs/old", *TINY)
    refused = runner.invoke(app, ["evaluate", "--model", "runs/old/model", "--data", "season2/dataset"])
    message = " ".join(refused.output.split())
    assert refused.exit_code != 0
    assert (
        "cropstar ingest --cube season2/cube --fields season2/fields.geojson --label-column crop_code "
        "--name-column crop --like runs/old/model --out season2/dataset-regridded" in message
    )
