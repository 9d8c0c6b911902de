"""The training loop: learning, the run folder, exact resumption, early stopping, retraining."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from crop_datasets import make_dataset
from safetensors.torch import load_file

from cropstar.data.dataset import open_dataset, write_dataset
from cropstar.errors import InputError
from cropstar.model.artifact import load_artifact
from cropstar.train.config import AugmentConfig, ScheduleConfig, TrainConfig, load_config
from cropstar.train.distributed import World
from cropstar.train.trainer import (
    augment,
    balanced_class_weights,
    epoch_order,
    load_checkpoint,
    lr_at,
    resolve_device,
    shift_in_time,
    stale_epochs,
    train,
)


def tiny(*overrides: str) -> TrainConfig:
    """STAR 2×16, a large learning rate: the test datasets separate in a few epochs."""
    base = ["model.hidden_size=16", "model.num_layers=2", "batch_size=32", "epochs=4", "device=cpu"]
    return load_config(None, [*base, "optimiser.lr=3e-2", *overrides])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model" / "model.safetensors")


def without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ---- learning and the run folder ------------------------------------------------------------
def test_learns_per_sequence_and_writes_the_run(crop_dataset: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    result = train(
        tiny(), crop_dataset, tmp_path / "run", progress=lambda s, d, t, **m: calls.append((s, d, t))
    )

    val_losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == int(np.argmin(val_losses)) + 1 and result.best_loss == min(val_losses)
    assert result.best["val_accuracy"] > 0.8  # chance: 1/3
    assert [c for c in calls if c[0] == "epoch"] == [("epoch", e, 4) for e in range(1, 5)]
    assert sum(c[0] == "train" for c in calls) == 4 * -(-open_dataset(crop_dataset).splits["train"] // 32)

    with open(tmp_path / "run" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    ]
    assert [float(r["val_loss"]) for r in rows] == val_losses
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    resolved = load_config(tmp_path / "run" / "config.yaml")
    assert (resolved.task, resolved.model.head, resolved.model.t_max) == (
        "per_sequence",
        "per_sequence",
        None,
    )

    loaded = load_artifact(result.model)
    assert loaded.card.training["best_epoch"] == result.best_epoch
    assert loaded.card.training["fingerprint"] == open_dataset(crop_dataset).fingerprint
    assert loaded.card.metrics["val_loss"] == pytest.approx(result.best_loss)
    assert loaded.card.architecture.options == {
        "weight_init": "orthogonal",
        "bias_init": "zero",
    }  # the default
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["best_epoch"] == result.best_epoch
    for name, tensor in weights(tmp_path / "run").items():
        assert torch.equal(tensor, checkpoint["best_model"][name])


def test_learns_per_timestep_with_balanced_weights(crop_dataset_per_timestep: Path, tmp_path: Path) -> None:
    result = train(
        tiny("class_weights=balanced", "num_workers=1"), crop_dataset_per_timestep, tmp_path / "run"
    )
    assert result.best["val_accuracy"] > 0.7  # chance: 1/3
    assert load_artifact(result.model).card.task == "per_timestep"


def test_without_a_validation_split_selects_by_training_loss(crop_dataset: Path, tmp_path: Path) -> None:
    reader = open_dataset(crop_dataset)
    arrays = {name: reader.read(name) for name in ("patches", "mask", "labels", "field_ids")}
    data = write_dataset(
        tmp_path / "train-only",
        **arrays,
        split=np.zeros(len(reader), dtype=np.uint8),
        class_table=reader.class_table,
        dates=reader.dates,
        bands=reader.bands,
    )
    result = train(tiny("epochs=2"), data, tmp_path / "run")
    assert result.history[0]["val_loss"] is None
    assert result.best_loss == min(row["train_loss"] for row in result.history)
    assert any("no validation split" in note for note in result.notes)
    assert load_artifact(result.model).card.training["selected_by"] == "train_loss"


# ---- resumption -------------------------------------------------------------------------------
@pytest.mark.parametrize("augmented", [False, True])
def test_resume_gives_exactly_the_uninterrupted_run(
    crop_dataset: Path, tmp_path: Path, augmented: bool
) -> None:
    extra = ("augment.noise_std=0.1", "augment.drop_steps=0.2") if augmented else ()
    config = tiny("optimiser.lr=1e-2", "lr_schedule.name=polynomial", "clip_grad_norm=1.0", *extra)
    whole = train(config, crop_dataset, tmp_path / "whole")

    def stop_after_two(stage: str, done: int, total: int, **metrics: Any) -> None:
        if stage == "epoch" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, crop_dataset, tmp_path / "parts", progress=stop_after_two)
    assert len(load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["rows"]) == 2
    resumed = train(config, crop_dataset, tmp_path / "parts", resume=True)

    assert without_times(resumed.history) == without_times(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    last = [load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("whole", "parts")]
    best = [weights(tmp_path / run) for run in ("whole", "parts")]
    for a, b in (last, best):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_or_resume_a_different_run(crop_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny("epochs=1"), crop_dataset, run)
    with pytest.raises(InputError, match="--resume"):
        train(tiny("epochs=1"), crop_dataset, run)
    with pytest.raises(InputError, match=r"settings differ.*optimiser\.lr: 0\.03 → 0\.01"):
        train(tiny("epochs=1", "optimiser.lr=1e-2"), crop_dataset, run, resume=True)
    other = make_dataset(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="fingerprint"):
        train(tiny("epochs=1"), other, run, resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        train(tiny("epochs=1"), crop_dataset, tmp_path / "empty", resume=True)


def test_a_checkpoint_from_before_a_new_setting_resumes_while_it_keeps_its_default(
    crop_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny("epochs=1"), crop_dataset, run)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    del checkpoint["config"]["augment"]["shift_steps"]  # as saved by a cropstar without the setting
    torch.save(checkpoint, run / "checkpoint.pt")
    assert len(train(tiny("epochs=1"), crop_dataset, run, resume=True).history) == 1
    with pytest.raises(InputError, match=r"settings differ.*augment\.shift_steps: None → 2"):
        train(tiny("epochs=1", "augment.shift_steps=2"), crop_dataset, run, resume=True)


def test_early_stopping_stops_and_stays_stopped(crop_dataset: Path, tmp_path: Path) -> None:
    config = tiny("epochs=6", "early_stopping.patience=1", "early_stopping.min_delta=100")
    result = train(config, crop_dataset, tmp_path / "run")
    assert result.stopped_early and len(result.history) == 2
    again = train(config, crop_dataset, tmp_path / "run", resume=True)
    assert len(again.history) == 2


def test_patience_running_out_in_the_last_epoch_is_not_stopping_early(
    crop_dataset: Path, tmp_path: Path
) -> None:
    """Every configured epoch ran: the run did not stop early, whatever the patience says."""
    config = tiny("epochs=2", "early_stopping.patience=1", "early_stopping.min_delta=100")
    result = train(config, crop_dataset, tmp_path / "run")
    assert len(result.history) == 2 and not result.stopped_early
    assert load_artifact(result.model).card.training["stopped_early"] is False
    assert not load_checkpoint(tmp_path / "run" / "checkpoint.pt")["stopped_early"]


# ---- retraining -------------------------------------------------------------------------------
def test_retraining_keeps_shared_classes(crop_dataset: Path, tmp_path: Path) -> None:
    old = train(tiny("epochs=2"), crop_dataset, tmp_path / "old")
    # barley (1200) dropped, rapeseed (3000) added; other dates' statistics: new normalisation
    new_data = make_dataset(
        tmp_path / "new", codes=("1110", "1510", "3000"), names=("wheat", "maize", "rapeseed"), seed=3
    )
    result = train(
        tiny("epochs=1", "optimiser.lr=1e-12"), new_data, tmp_path / "new-run", init_from=old.model
    )

    before, after = load_artifact(old.model), load_artifact(result.model)
    plan = after.card.training["init_from"]["plan"]
    assert (plan["kept"], plan["added"], plan["dropped"]) == (["1110", "1510"], ["3000"], ["1200"])
    assert [e.code for e in after.card.class_table] == ["1110", "1510", "3000"]
    np.testing.assert_array_equal(after.card.normalisation.mean, before.card.normalisation.mean)
    old_state, new_state = before.model.state_dict(), after.model.state_dict()
    for name in (n for n in new_state if n.startswith("rnn.")):
        torch.testing.assert_close(new_state[name], old_state[name], rtol=0, atol=1e-8)
    for code in ("1110", "1510"):  # same code, same row (a tiny learning rate barely moves it)
        new_row = after.card.class_table.id_of(code)
        old_row = before.card.class_table.id_of(code)
        for part in ("weight", "bias"):
            torch.testing.assert_close(
                new_state[f"head.linear.{part}"][new_row],
                old_state[f"head.linear.{part}"][old_row],
                rtol=0,
                atol=1e-8,
            )


def test_retraining_learns_the_new_class(crop_dataset: Path, tmp_path: Path) -> None:
    old = train(tiny("epochs=2"), crop_dataset, tmp_path / "old")
    new_data = make_dataset(tmp_path / "new", codes=("1110", "1510", "3000"), seed=3)
    result = train(tiny("epochs=3"), new_data, tmp_path / "new-run", init_from=old.model)
    assert result.best["val_accuracy"] > 0.8
    assert any("retraining from" in note for note in result.notes)


# ---- settings and small parts -----------------------------------------------------------------
def test_task_and_head_must_fit_the_labels(crop_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="task per_timestep asked for, but .* is labelled per_sequence"):
        train(tiny("task=per_timestep"), crop_dataset, tmp_path / "run")
    with pytest.raises(InputError, match="head per_timestep predicts per_timestep"):
        train(tiny("model.head=per_timestep"), crop_dataset, tmp_path / "run")


def test_global_batch_must_split_over_the_processes(crop_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch_size 32 .* divisible by the 3 processes"):
        train(tiny(), crop_dataset, tmp_path / "run", world=World(rank=0, world_size=3))


def test_cuda_device_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda", World())
    assert resolve_device("auto", World()).type == "cpu"


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    torch.manual_seed(123)
    first = epoch_order(50, seed=0, epoch=3)
    torch.rand(10)  # consuming the global generator changes nothing
    assert torch.equal(first, epoch_order(50, seed=0, epoch=3))
    assert sorted(first.tolist()) == list(range(50))
    assert not torch.equal(first, epoch_order(50, seed=0, epoch=4))
    assert not torch.equal(first, epoch_order(50, seed=1, epoch=3))


def test_learning_rate_schedules() -> None:
    poly = ScheduleConfig(name="polynomial", final_lr=1e-6, power=1.0)
    assert lr_at(poly, 1e-3, 0, 30) == pytest.approx(1e-3)
    assert lr_at(poly, 1e-3, 15, 30) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_at(ScheduleConfig(name="cosine", final_lr=0.0), 1.0, 5, 10) == pytest.approx(0.5)
    assert lr_at(ScheduleConfig(), 1e-3, 29, 30) == 1e-3


def test_warm_up_and_one_cycle() -> None:
    warm = ScheduleConfig(name="cosine", final_lr=0.0, warmup=0.1)  # 10 of 100 steps
    assert lr_at(warm, 1.0, 0, 100) == pytest.approx(1 / 25)  # from lr / 25
    assert lr_at(warm, 1.0, 5, 100) == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)  # a straight line
    assert lr_at(warm, 1.0, 10, 100) == pytest.approx(1.0)  # the peak, then the cosine over 90 steps
    assert lr_at(warm, 1.0, 55, 100) == pytest.approx(0.5)
    one = ScheduleConfig(name="one_cycle", final_lr=0.0, warmup=0.3)
    ramp = [lr_at(one, 1.0, s, 100) for s in range(31)]
    assert ramp[15] == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)  # half way up a half cosine
    assert ramp[3] - ramp[0] < ramp[16] - ramp[13]  # slow start, steepest in the middle
    assert ramp[30] == pytest.approx(1.0) and lr_at(one, 1.0, 99, 100) < 1e-3


def test_a_budget_in_steps_sets_the_epochs(crop_dataset: Path, tmp_path: Path) -> None:
    train_samples = open_dataset(crop_dataset).splits["train"]
    per_epoch = -(-train_samples // 32)
    result = train(tiny("steps=" + str(2 * per_epoch + 1), "lr_schedule.name=cosine", "lr_schedule.warmup=0.2"),
                   crop_dataset, tmp_path / "run")  # fmt: skip
    assert len(result.history) == 3  # two epochs and one more step need a third epoch
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] == pytest.approx(3e-2 / 25) and lrs[1] > lrs[2]  # warming up, then cosine down


def test_stale_epochs_and_class_weights() -> None:
    assert stale_epochs([1.0, 0.9, 0.95, 0.91], min_delta=0.0) == 2
    assert stale_epochs([1.0, 0.9, 0.89], min_delta=0.05) == 1
    weights = balanced_class_weights(torch.tensor([[0, 0, 0, -1], [1, -1, -1, -1]]), num_classes=3)
    torch.testing.assert_close(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))


def test_augmentation_draws_per_batch_and_splits_like_the_global_batch() -> None:
    x, mask = torch.zeros(6, 4, 3), torch.ones(6, 4, dtype=torch.bool)
    settings = AugmentConfig(noise_std=0.5, drop_steps=0.3)
    one = World(0, 1, 0)
    noisy, kept = augment(x, mask, settings, 0, 1, 1, 6, one)
    assert 0.2 < noisy.std() < 0.8 and 0 < (~kept).sum() < 24
    again, _ = augment(x, mask, settings, 0, 1, 1, 6, one)
    other, _ = augment(x, mask, settings, 0, 1, 2, 6, one)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)  # seeded by (seed, epoch, batch)
    halves = [augment(x[:3], mask[:3], settings, 0, 1, 1, 6, World(r, 2, r)) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), noisy)  # two ranks draw the one-process batch
    assert torch.equal(torch.cat([h[1] for h in halves]), kept)
    assert augment(x, mask, AugmentConfig(), 0, 1, 1, 6, one)[0] is x


def test_a_shift_in_time_moves_each_series_and_masks_what_came_from_outside() -> None:
    x = torch.arange(10.0).reshape(2, 5, 1).repeat(1, 1, 2)  # series 0: 0 … 4, series 1: 5 … 9
    mask = torch.tensor([[True, True, False, True, True]] * 2)
    moved, kept = shift_in_time(x, mask, torch.tensor([2, -1]))
    assert moved[0, :, 0].tolist() == [0, 0, 0, 1, 2] and moved[1, :, 1].tolist() == [6, 7, 8, 9, 9]
    assert kept.tolist() == [[False, False, True, True, False], [True, False, True, True, False]]
    settings = AugmentConfig(shift_steps=2)
    one = World(0, 1, 0)
    series = torch.arange(8.0).repeat(6, 1).unsqueeze(-1)
    shifted, _ = augment(series, torch.ones(6, 8, dtype=torch.bool), settings, 0, 1, 1, 6, one)
    offsets = {int(row[3].item()) - 3 for row in shifted}
    assert offsets <= {-2, -1, 0, 1, 2} and len(offsets) > 1  # drawn per series, within the bound
    assert torch.equal(shifted.squeeze(-1)[:, 1:-1].diff(dim=1).abs().max(), torch.tensor(1.0))  # whole steps


def test_a_time_shift_is_refused_for_per_timestep_labels(tmp_path: Path) -> None:
    from crop_datasets import make_dataset

    data = make_dataset(tmp_path / "a", task="per_timestep")
    with pytest.raises(InputError, match="augment.shift_steps shifts the inputs but not per-time-step labels"):
        train(tiny("epochs=1", "augment.shift_steps=2"), data, tmp_path / "run")


def test_a_model_trained_without_the_mask_ignores_it(crop_dataset: Path, tmp_path: Path) -> None:
    result = train(tiny("epochs=1", "model.use_mask=false"), crop_dataset, tmp_path / "run")
    loaded = load_artifact(result.model)
    assert loaded.card.architecture.use_mask is False
    x, mask = torch.randn(2, 8, 54), torch.zeros(2, 8, dtype=torch.bool)
    assert torch.equal(loaded.model(x, mask), loaded.model(x))


@pytest.mark.slow  # torch.compile takes minutes on CPU
def test_a_compiled_model_trains_to_the_same_weights(crop_dataset: Path, tmp_path: Path) -> None:
    plain = train(tiny("epochs=1"), crop_dataset, tmp_path / "plain")
    compiled = train(tiny("epochs=1", "compile=true"), crop_dataset, tmp_path / "compiled")
    assert compiled.best_epoch == plain.best_epoch
    for name, value in weights(tmp_path / "plain").items():
        torch.testing.assert_close(weights(tmp_path / "compiled")[name], value, atol=1e-4, rtol=1e-4)


def test_chrono_takes_its_t_max_from_the_dataset(crop_dataset: Path, tmp_path: Path) -> None:
    result = train(tiny("epochs=1", "model.bias_init=chrono"), crop_dataset, tmp_path / "run")
    assert load_config(tmp_path / "run" / "config.yaml").model.t_max == 8  # the dataset's sequence length
    options = load_artifact(result.model).card.architecture.options
    assert options == {"weight_init": "orthogonal", "bias_init": "chrono", "t_max": 8}


def test_a_constant_gate_bias_is_built_and_recorded_in_the_card(crop_dataset: Path, tmp_path: Path) -> None:
    """model.bias_init=constant with model.gate_bias: the card records how the model started, and the
    architecture it names starts every STAR layer with b_k = −1."""
    from cropstar.model.architecture import build_classifier

    result = train(
        tiny("epochs=1", "model.bias_init=constant", "model.gate_bias=-1"), crop_dataset, tmp_path / "run"
    )
    architecture = load_artifact(result.model).card.architecture
    assert architecture.options["bias_init"] == "constant" and architecture.options["gate_bias"] == -1.0
    assert "t_max" not in architecture.options
    fresh = build_classifier(architecture)
    assert all(torch.equal(layer.b_k.detach(), torch.full((16,), -1.0)) for layer in fresh.rnn.layers)
    with pytest.raises(InputError, match="gate_bias goes with bias_init constant"):
        tiny("model.bias_init=constant")
    with pytest.raises(InputError, match="gate_bias goes with bias_init constant"):
        tiny("model.gate_bias=-1")


def test_refit_trains_on_train_and_validation_for_the_selected_epochs(
    crop_dataset: Path, tmp_path: Path
) -> None:
    result = train(tiny("early_stopping.patience=1"), crop_dataset, tmp_path / "run", refit=True)
    validated = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert result.run == tmp_path / "run" / "refit"
    assert len(result.history) == result.best_epoch == validated["best_epoch"]  # the last epoch kept
    assert all(row["val_loss"] is None for row in result.history)
    assert any(f"for {validated['best_epoch']} epochs" in note for note in result.notes)
    card = load_artifact(result.model).card
    assert (
        card.training["selected_by"] == "last epoch (refit)"
        and card.training["config"]["early_stopping"]["patience"] is None
    )
    reader = open_dataset(crop_dataset)
    per_epoch = -(-(reader.splits["train"] + reader.splits["val"]) // 32)  # batches of the merged samples
    calls: list[str] = []
    train(tiny(), crop_dataset, tmp_path / "again", refit=True, progress=lambda s, d, t, **m: calls.append(s))
    assert calls.count("train") == 4 * -(-reader.splits["train"] // 32) + load_checkpoint(
        tmp_path / "again" / "checkpoint.pt")["best_epoch"] * per_epoch  # fmt: skip
