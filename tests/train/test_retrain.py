"""Initialising a new season's model from an old one: RNN copied, head rows matched by class code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cropstar.data.class_table import ClassTable
from cropstar.data.normalisation import Normalisation
from cropstar.errors import InputError, ModelMismatchError
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import LoadedModel, ModelCard, TimeGrid, load_artifact, save_artifact
from cropstar.train.retrain import init_from

OLD_CODES = {"1110": "wheat", "1200": "barley", "1510": "maize"}  # ids 0, 1, 2


def _old_model(tmp_path: Path) -> LoadedModel:
    architecture = Architecture("star", 6, 8, 2, 3, options={"t_max": 8})
    card = ModelCard(
        architecture=architecture,
        class_table=ClassTable.from_codes(OLD_CODES, OLD_CODES),
        bands=["B02", "B03", "B04", "B08", "B11", "B12"],
        patch_size=1,
        time_grid=TimeGrid(
            "10D", tuple(str(d) for d in np.arange("2023-03-01", "2023-05-20", 10, "datetime64[D]"))
        ),
        normalisation=Normalisation(np.full(6, 0.1), np.full(6, 0.02)),
        name="season-2023",
    )
    torch.manual_seed(0)
    return load_artifact(save_artifact(tmp_path / "old", build_classifier(architecture), card))


def test_rnn_is_copied_and_shared_codes_keep_their_head_rows(tmp_path: Path) -> None:
    old = _old_model(tmp_path)
    new_table = ClassTable.from_codes(["1510", "1110", "9999"], {"9999": "sunflower"})  # 1110→0, 1510→1
    architecture = replace(old.card.architecture, num_classes=3, options={"t_max": 12})
    torch.manual_seed(7)
    fresh = build_classifier(architecture)
    torch.manual_seed(7)
    model, plan = init_from(old, architecture, new_table)

    old_rnn = old.model.rnn.state_dict()
    assert all(torch.equal(tensor, old_rnn[name]) for name, tensor in model.rnn.state_dict().items())
    old_w, old_b = old.model.head.linear.weight, old.model.head.linear.bias
    new_w, new_b = model.head.linear.weight, model.head.linear.bias
    assert torch.equal(new_w[0], old_w[0]) and torch.equal(new_b[0], old_b[0])  # wheat: id 0 → 0
    assert torch.equal(new_w[1], old_w[2]) and torch.equal(new_b[1], old_b[2])  # maize: id 2 → 1
    assert torch.equal(new_w[2], fresh.head.linear.weight[2])  # sunflower: the fresh initialisation
    assert torch.equal(new_b[2], fresh.head.linear.bias[2])
    assert (plan.kept, plan.added, plan.dropped) == (("1110", "1510"), ("9999",), ("1200",))
    assert plan.old_normalisation.to_dict() == old.card.normalisation.to_dict()
    assert plan.to_dict()["source"] == str(tmp_path / "old")


def test_fewer_classes_drop_head_rows(tmp_path: Path) -> None:
    old = _old_model(tmp_path)
    model, plan = init_from(
        old, replace(old.card.architecture, num_classes=1), ClassTable.from_codes(["1200"])
    )
    assert model.head.linear.weight.shape == (1, 8)
    assert torch.equal(model.head.linear.weight[0], old.model.head.linear.weight[1])
    assert plan.dropped == ("1110", "1510") and plan.added == ()


def test_refuses_a_different_hidden_size(tmp_path: Path) -> None:
    old = _old_model(tmp_path)
    with pytest.raises(ModelMismatchError, match="hidden_size: old 8, new 16"):
        init_from(old, replace(old.card.architecture, hidden_size=16), old.card.class_table)


def test_refuses_a_different_cell_and_depth_at_once(tmp_path: Path) -> None:
    old = _old_model(tmp_path)
    with pytest.raises(ModelMismatchError, match="cell: old 'star', new 'gru'; num_layers: old 2, new 3"):
        init_from(old, replace(old.card.architecture, cell="gru", num_layers=3), old.card.class_table)


def test_class_count_must_match_the_class_table(tmp_path: Path) -> None:
    old = _old_model(tmp_path)
    with pytest.raises(InputError, match="4 classes but the class table 3"):
        init_from(old, replace(old.card.architecture, num_classes=4), old.card.class_table)
