"""Model artifacts: save/load round trip, model.json content, atomic replacement, refusing pickle and
mismatched tensors, and whether a dataset or cube fits a model."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import crop_datasets
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from crop_datasets import make_dataset
from safetensors.torch import load_file, save_file

from cropstar.data.cube import Cube
from cropstar.data.dataset import open_dataset
from cropstar.errors import BrokenModelError, InputError, ModelMismatchError
from cropstar.infer.predict import predict_patches
from cropstar.model import artifact
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import (
    ModelCard,
    TimeGrid,
    card_for_dataset,
    check_cube,
    check_dataset,
    infer_period,
    load_artifact,
    parameter_count,
    read_card,
    save_artifact,
)


def _architecture(head: str = "per_sequence", hidden: int = 8) -> Architecture:
    return Architecture("star", 54, hidden, 2, 3, head=head, options={"t_max": 8})


def _model(architecture: Architecture, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_classifier(architecture)


def _saved(crop_dataset: Path, folder: Path, seed: int = 0) -> tuple[torch.nn.Module, ModelCard]:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture(), name="crops", metrics={"loss": 0.5})
    model = _model(card.architecture, seed)
    save_artifact(folder, model, card)
    return model, card


def _without_checksum(folder: Path) -> None:
    """Drop the weights' checksum from the card, as artifacts saved before it was recorded lack it:
    the checks behind it must hold on their own."""
    card = json.loads((folder / "model.json").read_text())
    del card["weights_sha256"]
    (folder / "model.json").write_text(json.dumps(card))


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 8, 54, generator=generator)
    mask = torch.rand(5, 8, generator=generator) > 0.3
    with torch.no_grad():
        return model.eval()(x, mask)


def test_round_trip_gives_bit_identical_outputs_and_card(crop_dataset: Path, tmp_path: Path) -> None:
    model, card = _saved(crop_dataset, tmp_path / "model")
    loaded = load_artifact(tmp_path / "model")
    assert torch.equal(_outputs(loaded.model), _outputs(model))
    assert not loaded.model.training
    assert loaded.path == tmp_path / "model"
    assert loaded.card.class_table == card.class_table
    assert loaded.card.bands == card.bands and loaded.card.time_grid == card.time_grid
    assert np.array_equal(loaded.card.normalisation.mean, card.normalisation.mean)
    assert loaded.card.training["fingerprint"] == open_dataset(crop_dataset).fingerprint
    assert loaded.card.metrics == {"loss": 0.5} and loaded.card.created is not None
    for name in ("model.safetensors", "model.json"):  # shared artifacts: readable by everyone
        assert (tmp_path / "model" / name).stat().st_mode & 0o644 == 0o644


def test_model_json_records_card_and_mlm_fields(crop_dataset: Path, tmp_path: Path) -> None:
    model, card = _saved(crop_dataset, tmp_path / "model")
    document = json.loads((tmp_path / "model" / "model.json").read_text())
    assert document["format"] == "cropstar-model" and document["format_version"] == 1
    assert [c["code"] for c in document["classes"]] == ["1110", "1200", "1510"]
    assert [c["name"] for c in document["classes"]] == ["wheat", "barley", "maize"]
    assert document["bands"] == crop_datasets.BANDS and document["patch_size"] == 3
    assert document["time_grid"] == {"period": "10D", "steps": 8, "dates": crop_datasets.DATES[:8]}
    assert document["mlm:total_parameters"] == parameter_count(model)
    assert document["mlm:framework"] == "pytorch" and document["mlm:tasks"] == ["classification"]
    (mlm_input,) = document["mlm:input"]
    assert mlm_input["bands"] == crop_datasets.BANDS
    assert mlm_input["input"]["shape"] == [-1, 8, 54]
    assert [s["mean"] for s in mlm_input["value_scaling"]] == card.normalisation.to_dict()["mean"]
    (mlm_output,) = document["mlm:output"]
    assert mlm_output["result"]["shape"] == [-1, 3]
    assert [c["value"] for c in mlm_output["classification:classes"]] == [0, 1, 2]
    assert mlm_output["classification:classes"][2]["name"] == "maize"


def test_per_timestep_output_has_a_time_axis(crop_dataset_per_timestep: Path, tmp_path: Path) -> None:
    reader = open_dataset(crop_dataset_per_timestep)
    card = card_for_dataset(reader, _architecture(head="per_timestep"))
    save_artifact(tmp_path / "model", _model(card.architecture), card)
    document = json.loads((tmp_path / "model" / "model.json").read_text())
    assert document["task"] == "per_timestep"
    assert document["mlm:output"][0]["result"]["shape"] == [-1, 8, 3]


def test_failed_save_leaves_the_old_artifact_intact(
    crop_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_model, card = _saved(crop_dataset, tmp_path / "model", seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path / "model", _model(card.architecture, seed=1), card)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert torch.equal(_outputs(load_artifact(tmp_path / "model").model), _outputs(old_model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops", "model"]  # no temporary folder left


def test_save_replaces_an_artifact_whole_and_refuses_other_folders(
    crop_dataset: Path, tmp_path: Path
) -> None:
    _, card = _saved(crop_dataset, tmp_path / "model", seed=0)
    (tmp_path / "model" / "stale.txt").write_text("from the old artifact")
    new_model = _model(card.architecture, seed=1)
    save_artifact(tmp_path / "model", new_model, card)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "model.safetensors"]
    assert torch.equal(_outputs(load_artifact(tmp_path / "model").model), _outputs(new_model))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="notes.*not a cropstar model artifact"):
        save_artifact(tmp_path / "notes", new_model, card)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_save_refuses_weights_that_do_not_fit_the_card(crop_dataset: Path, tmp_path: Path) -> None:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture())
    with pytest.raises(ModelMismatchError, match="rnn.layers.0"):
        save_artifact(tmp_path / "model", _model(_architecture(hidden=16)), card)
    assert not (tmp_path / "model").exists()


class _Exploit:
    """Unpickling this creates the folder ``target``: loading weights must never unpickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.target),)


def test_a_pickle_renamed_model_safetensors_is_refused(crop_dataset: Path, tmp_path: Path) -> None:
    _saved(crop_dataset, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(pickle.dumps({"weights": _Exploit(tmp_path / "pwned")}))
    with pytest.raises(BrokenModelError, match="does not match the checksum its card records"):
        load_artifact(tmp_path / "model")
    _without_checksum(tmp_path / "model")
    with pytest.raises(InputError, match="model.safetensors is not a readable safetensors file"):
        load_artifact(tmp_path / "model")
    assert not (tmp_path / "pwned").exists()


def test_tensor_mismatches_name_the_tensor_and_both_shapes(crop_dataset: Path, tmp_path: Path) -> None:
    _saved(crop_dataset, tmp_path / "model")
    _without_checksum(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(weights)
    tensors["head.linear.weight"] = torch.zeros(5, 8)
    save_file(tensors, weights)
    with pytest.raises(ModelMismatchError, match=r"'head.linear.weight' has shape \(5, 8\).*needs \(3, 8\)"):
        load_artifact(tmp_path / "model")
    del tensors["head.linear.bias"]
    tensors["head.linear.weight"] = torch.zeros(3, 8)
    tensors["extra"] = torch.zeros(1)
    save_file(tensors, weights)
    with pytest.raises(ModelMismatchError, match="'head.linear.bias' is missing; unexpected tensor 'extra'"):
        load_artifact(tmp_path / "model")


def test_changed_or_non_finite_weights_are_refused_by_name(crop_dataset: Path, tmp_path: Path) -> None:
    model, _ = _saved(crop_dataset, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    tensors = load_file(weights)
    tensors["head.linear.bias"][1] = float("nan")
    save_file(tensors, weights)
    with pytest.raises(BrokenModelError, match="does not match the checksum its card records"):
        load_artifact(tmp_path / "model")
    _without_checksum(tmp_path / "model")
    with pytest.raises(BrokenModelError, match="non-finite weights .* in head.linear.bias"):
        load_artifact(tmp_path / "model")
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(BrokenModelError, match="non-finite weights"):
        save_artifact(tmp_path / "diverged", model, read_card(tmp_path / "model"))
    assert not (tmp_path / "diverged").exists()


def test_logits_that_overflow_are_refused_not_mapped(crop_dataset: Path, tmp_path: Path) -> None:
    model, card = _saved(crop_dataset, tmp_path / "model")
    with torch.no_grad():
        model.head.linear.weight.fill_(3e38)  # finite weights whose logits overflow to ±inf
    save_artifact(tmp_path / "overflow", model, card)
    loaded = load_artifact(tmp_path / "overflow")
    patches = np.random.default_rng(0).uniform(0, 0.5, (4, 8, 6, 3, 3)).astype(np.float32)
    with pytest.raises(BrokenModelError, match=r"model 'crops' gave non-finite class probabilities for \d of 4 inputs"):
        predict_patches(loaded, patches, np.ones((4, 8), bool))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model card not found"),
        ("{not json", "cannot read model card"),
        ('{"format": "cropstar-dataset"}', "not a cropstar model card: format is 'cropstar-dataset'"),
    ],
)
def test_unreadable_model_json_names_the_file(
    crop_dataset: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    _saved(crop_dataset, tmp_path / "model")
    card_file = tmp_path / "model" / "model.json"
    if content is None:
        card_file.unlink()
    else:
        card_file.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        load_artifact(tmp_path / "model")
    assert str(card_file) in str(error.value)


def test_missing_artifact_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model artifact not found"):
        load_artifact(tmp_path / "nothing")


def test_inconsistent_card_is_refused(crop_dataset: Path) -> None:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture())
    with pytest.raises(ModelMismatchError, match="4 classes, the class table 3"):
        ModelCard(
            Architecture("star", 54, 8, 2, 4),
            card.class_table,
            card.bands,
            3,
            card.time_grid,
            card.normalisation,
        )


# ---------------------------------------------------------------------------------------------
# does data fit a model?
# ---------------------------------------------------------------------------------------------
def _shifted(days: int) -> list[str]:
    return [str(np.datetime64(d) + np.timedelta64(days, "D")) for d in crop_datasets.DATES]


def test_check_dataset_accepts_the_same_and_a_next_season_dataset(
    crop_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture())
    check_dataset(card, open_dataset(crop_dataset))
    monkeypatch.setattr(crop_datasets, "DATES", _shifted(365))  # the same grid one year later
    check_dataset(card, open_dataset(make_dataset(tmp_path / "next-season", seed=3)))
    monkeypatch.setattr(crop_datasets, "DATES", _shifted(365 + 7))  # starts 7 days later: same period
    check_dataset(card, open_dataset(make_dataset(tmp_path / "later", seed=3)))


def test_check_dataset_refuses_a_season_shifted_by_a_period(
    crop_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture())
    monkeypatch.setattr(crop_datasets, "DATES", _shifted(365 + 20))
    with pytest.raises(ModelMismatchError, match=r"season: .*2023-03-01.*2024-03-20.*20 days apart"):
        check_dataset(card, open_dataset(make_dataset(tmp_path / "late")))


def test_check_dataset_lists_every_difference(
    crop_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture())
    monkeypatch.setattr(crop_datasets, "BANDS", ["B02", "B04", "B03", "B08", "B11", "B12"])
    other = open_dataset(make_dataset(tmp_path / "other", patch_size=1, steps=6, task="per_timestep"))
    with pytest.raises(ModelMismatchError) as error:
        check_dataset(card, other)
    message = str(error.value)
    assert (
        "bands: model expects B02,B03,B04,B08,B11,B12 but the dataset has B02,B04,B03,B08,B11,B12" in message
    )
    assert "patch size: model expects 3, the dataset has 1" in message
    assert "input size: model expects 54, the dataset has 6" in message
    assert "time steps: model expects 8, the dataset has 6" in message
    assert "task: model predicts per_sequence, the dataset is labelled per_timestep" in message


def _cube(dates: list[str], bands: list[str], period: str | None) -> Cube:
    times = pd.DatetimeIndex(dates)
    data = xr.DataArray(
        np.zeros((len(dates), len(bands), 2, 2), np.float32),
        dims=("time", "band", "y", "x"),
        coords={"time": times, "band": bands},
    )
    valid = xr.DataArray(np.ones((len(dates), 2, 2), bool), dims=("time", "y", "x"), coords={"time": times})
    return Cube(data, valid, {"regularisation": {"period": period}} if period else {})


def test_check_cube_compares_band_order_and_time_grid(crop_dataset: Path) -> None:
    card = card_for_dataset(open_dataset(crop_dataset), _architecture())
    check_cube(card, _cube(_shifted(365)[:8], crop_datasets.BANDS, "10D"))
    check_cube(card, _cube(_shifted(366)[:8], crop_datasets.BANDS, None))  # period inferred
    with pytest.raises(ModelMismatchError) as error:
        check_cube(card, _cube(["2024-03-01", "2024-04-01", "2024-05-01"], crop_datasets.BANDS[::-1], "MS"))
    message = str(error.value)
    assert "but the cube has B12,B11,B08,B04,B03,B02" in message
    assert "time steps: model expects 8, the cube has 3" in message
    assert "period: model expects 10D, the cube has MS" in message


@pytest.mark.parametrize(
    ("dates", "period"),
    [
        (["2023-01-01", "2023-01-11", "2023-01-21", "2023-01-31"], "10D"),
        (["2023-01-21", "2023-02-01", "2023-02-11", "2023-02-21", "2023-03-01"], "dekad"),
        (["2023-11-01", "2023-12-01", "2024-01-01", "2024-02-01"], "MS"),
        (["2023-01-01", "2023-01-04", "2023-01-11"], None),
        (["2023-01-01"], None),
    ],
)
def test_infer_period(dates: list[str], period: str | None) -> None:
    assert infer_period(dates) == period


def test_time_grid_canonical_period_and_round_trip() -> None:
    grid = TimeGrid("monthly", ("2023-01-01", "2023-02-01"))
    assert grid.period == "MS" and grid.steps == 2
    assert TimeGrid.from_dict(grid.to_dict()) == grid
