"""Training settings: YAML + overrides, and error messages that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cropstar.errors import InputError
from cropstar.train.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_paper_config_follows_the_crop_protocol() -> None:
    config = load_config(CONFIGS / "crop_paper.yaml")
    assert (config.model.cell, config.model.hidden_size, config.model.bias_init) == ("star", 128, "zero")
    assert config.model.t_max is None and config.model.gate_bias is None
    assert (config.optimiser.name, config.optimiser.lr, config.optimiser.betas) == (
        "adam",
        1e-3,
        (0.9, 0.999),
    )
    assert (config.batch_size, config.epochs, config.early_stopping.patience) == (500, 30, None)


def test_quick_config_is_small() -> None:
    config = load_config(CONFIGS / "crop_quick.yaml")
    assert config.model.hidden_size * config.model.num_layers <= 3 * 64
    assert config.epochs <= 15


def test_defaults_without_a_file() -> None:
    assert load_config(None) == TrainConfig()


def test_overrides_are_parsed_as_yaml_scalars(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {num_layers: 2}\nepochs: 3\n")
    config = load_config(
        path,
        ["model.hidden_size=16", "optimiser.lr=3e-2", "optimiser.betas=[0.8, 0.9]", "clip_grad_norm=1",
         "amp=true", "early_stopping.patience=2", "model.head=null", "task=per_timestep"],
    )  # fmt: skip
    assert (config.model.num_layers, config.model.hidden_size, config.epochs) == (2, 16, 3)
    assert config.optimiser.lr == pytest.approx(0.03) and config.optimiser.betas == (0.8, 0.9)
    assert (config.clip_grad_norm, config.amp, config.early_stopping.patience) == (1.0, True, 2)
    assert config.model.head is None and config.task == "per_timestep"


def test_override_of_a_whole_section() -> None:
    config = load_config(None, ["early_stopping={patience: 4, min_delta: 0.01}"])
    assert (config.early_stopping.patience, config.early_stopping.min_delta) == (4, 0.01)


def test_unknown_override_key_names_it_and_the_valid_keys() -> None:
    with pytest.raises(InputError, match=r"unknown setting 'model\.hiden_size'.*valid keys of model: cell, "):
        load_config(None, ["model.hiden_size=8"])
    with pytest.raises(InputError, match=r"unknown setting 'optimizer'.*top level: model, task, optimiser"):
        load_config(None, ["optimizer.lr=1"])


def test_unknown_key_in_the_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optimiser:\n  learning_rate: 0.1\n")
    with pytest.raises(
        InputError, match=r"c\.yaml.*'optimiser\.learning_rate'.*valid keys of optimiser: name, lr"
    ):
        load_config(path)


def test_invalid_value_is_one_line_naming_the_field() -> None:
    with pytest.raises(InputError) as error:
        load_config(None, ["batch_size=0", "model.cell=lstmm"])
    message = str(error.value)
    assert "\n" not in message
    assert "batch_size: Input should be greater than or equal to 1 (got 0)" in message
    assert "model.cell: unknown cell 'lstmm'; choose one of star" in message


def test_bad_override_value_names_the_override_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nmodel: {num_layers: 2}\n")
    with pytest.raises(InputError) as error:
        load_config(path, ["model.hidden_size=16", "batch_size=0"], overrides_from="--set")
    assert str(error.value) == (
        "invalid value given with --set batch_size=0: "
        "batch_size: Input should be greater than or equal to 1 (got 0)"
    )
    with pytest.raises(InputError) as error:  # a whole section: the override that set it
        load_config(path, ["early_stopping={patience: 0}"])
    assert str(error.value).startswith("invalid value given with override early_stopping={patience: 0}: ")
    assert "c.yaml" not in str(error.value)


def test_bad_value_in_the_file_still_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 0\n")
    with pytest.raises(InputError) as error:
        load_config(path, ["batch_size=16"], overrides_from="--set")
    assert str(error.value) == (
        f"invalid training settings in {path}: epochs: Input should be greater than or equal to 1 (got 0)"
    )
    with pytest.raises(InputError) as error:  # both at fault: each named with its own problem
        load_config(path, ["model.cell=lstmm"], overrides_from="--set")
    assert str(error.value).startswith(
        "invalid value given with --set model.cell=lstmm: model.cell: unknown cell 'lstmm'"
    )
    assert str(error.value).endswith(f"; invalid training settings in {path}: epochs: Input should be "
                                     "greater than or equal to 1 (got 0)")  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs", "must read key=value"),
        ("epochs.max=3", "'epochs' has no sub-keys"),
        ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
        ("optimiser.name=rmsprop", "optimiser.name: Input should be 'adam', 'adamw' or 'sgd'"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_config(None, [override])


def test_file_must_be_a_readable_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="must be a mapping"):
        load_config(path)
    with pytest.raises(InputError, match="cannot read training config"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = load_config(None, ["model.num_layers=3", "lr_schedule.name=cosine"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
