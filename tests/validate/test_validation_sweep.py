"""The validation suites' core (cropstar.validate): budgets, the MNIST suites' data, a depth sweep on a
task built here (learnable and not), resuming, the report and the ``cropstar validate`` command on
real MNIST at a tiny budget."""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.errors import InputError
from cropstar.validate import budget_for, depth_sweep, load_suite, sweep, write_report
from cropstar.validate.budgets import BUDGETS
from cropstar.validate.depth_sweep import run_path
from cropstar.validate.suites import Split, SuiteData

TINY = replace(budget_for("mnist", "smoke"), hidden_size=8, epochs=4, batch_size=32, lr=1e-2)


def _task(learnable: bool, n: int = 960, steps: int = 6) -> SuiteData:
    """Two classes: the sign of the last step's first input (learnable) or coin flips (not)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, steps, 2, generator=generator)
    y = (x[:, -1, 0] > 0).long() if learnable else torch.randint(0, 2, (n,), generator=generator)
    parts = [Split(x[i::3], y[i::3]) for i in range(3)]
    return SuiteData("toy", *parts, num_classes=2)


def test_budgets_are_named_and_overridable() -> None:
    assert budget_for("pmnist", "cpu", epochs=2).epochs == 2
    assert budget_for("mnist", "full").hidden_size == 128 and budget_for("mnist", "full").batch_size == 100
    with pytest.raises(InputError, match="unknown budget 'huge'"):
        budget_for("mnist", "huge")
    with pytest.raises(InputError, match="unknown suite 'speech'"):
        budget_for("speech", "smoke")


def test_mnist_suites_read_the_idx_files(shared_data: Path) -> None:
    budget = replace(budget_for("mnist", "smoke"), train=50, val=20, test=30, downsample=4)
    plain = load_suite("mnist", budget, shared_data / "mnist")
    permuted = load_suite("pmnist", budget, shared_data / "mnist")
    assert (len(plain.train), len(plain.val), len(plain.test)) == (50, 20, 30)
    assert plain.steps == 49 and plain.input_size == 1 and plain.num_classes == 10
    assert torch.equal(plain.train.y, permuted.train.y)  # the same images, pixels permuted
    assert torch.equal(plain.train.x.sort(dim=1).values, permuted.train.x.sort(dim=1).values)
    assert not torch.equal(plain.train.x, permuted.train.x)
    assert 0 <= float(plain.train.x.min()) and float(plain.train.x.max()) <= 1
    with pytest.raises(InputError, match="needs --data"):
        load_suite("mnist", budget, None)


def test_a_sweep_trains_scores_and_marks_failures(tmp_path: Path) -> None:
    good = sweep(_task(True), TINY, ["star", "lstm"], [1, 2], 1, tmp_path / "good")
    assert [(r.cell, r.layers) for r in good] == [("star", 1), ("star", 2), ("lstm", 1), ("lstm", 2)]
    for run in good:
        assert run.test_accuracy > 0.65 and not run.failed and run.reason == ""  # chance 0.5
        assert 1 <= run.best_epoch <= TINY.epochs and run.best_val_loss == min(run.val_loss)
        assert len(run.grad_at_init) == run.layers and all(g > 0 for g in run.grad_at_init)
        assert len(run.grad_first_epoch) == 10 and len(run.grad_first_epoch[0]) == run.layers  # 320 / 32 steps

    # learnt on train and val, scored on test labels that are the opposite: far below the floor of 2 classes
    task = _task(True)
    flipped = replace(task, test=Split(task.test.x, 1 - task.test.y))
    (bad,) = sweep(flipped, TINY, ["star"], [1], 1, tmp_path / "bad")
    assert bad.failed and bad.test_accuracy < 0.35
    assert bad.reason == f"test accuracy {bad.test_accuracy:.3f} below 0.550 (chance 0.500)"

    diverging = _task(True)
    diverging.train.x[5, 2, 0] = math.nan  # every epoch-1 order reaches it
    (nan,) = sweep(diverging, TINY, ["star"], [1], 1, tmp_path / "nan")
    assert nan.failed and nan.reason == "the training loss became nan in epoch 1"
    assert (nan.test_accuracy, nan.best_epoch, nan.val_loss) == (0.0, 0, [])


def test_an_interrupted_sweep_resumes_with_the_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = sweep(_task(True), TINY, ["star"], [1], 2, tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["star-L1-s0.json", "star-L1-s1.json"]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(depth_sweep, "train_run", no_training)
    again = sweep(_task(True), TINY, ["star"], [1], 2, tmp_path)
    assert [r.test_accuracy for r in again] == [r.test_accuracy for r in first]
    with pytest.raises(AssertionError, match="trained again"):  # another budget is another run
        sweep(_task(True), replace(TINY, epochs=2), ["star"], [1], 1, tmp_path)


def test_bad_sweeps_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown dense cell.*conv_star"):
        sweep(_task(True), TINY, ["star", "conv_star"], [1], 1, tmp_path)
    with pytest.raises(InputError, match="layers must be positive"):
        sweep(_task(True), TINY, ["star"], [0], 1, tmp_path)


def test_the_report_writes_the_table_and_plots(tmp_path: Path) -> None:
    results = sweep(_task(True), TINY, ["star", "vrnn"], [1, 2], 2, tmp_path)
    results[0].failed = True
    written = write_report(results, tmp_path, "toy")
    assert {p.name for p in written} == {"results.csv", "results.md", "accuracy_vs_depth.png",
                                         "gradient_norms.png", "training_loss.png"}  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 8 and {"cell", "layers", "seed", "test_accuracy", "failed"} <= set(rows[0])
    table = (tmp_path / "results.md").read_text()
    assert "| cell | L = 1 | L = 2 |" in table and "✗ 1/2" in table and " ± " in table


def test_the_command_runs_a_tiny_mnist_sweep(shared_data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "mnist", "--data", str(shared_data / "mnist"), "--cells", "star",
                                      "--layers", "1", "--epochs", "1", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.md").is_file() and (tmp_path / "runs" / "star-L1-s0.json").is_file()
    bad = CliRunner().invoke(app, ["validate", "mnist", "--data", str(shared_data / "mnist"), "--layers", "a"])
    assert bad.exit_code != 0 and "--layers" in bad.output
    bad = CliRunner().invoke(app, ["validate", "mnist", "--data", str(shared_data / "mnist"), "--device", "tpu"])
    assert bad.exit_code != 0 and "--device must be auto, cpu, cuda or cuda:N, got 'tpu'" in bad.output
    cpu = CliRunner().invoke(app, ["validate", "mnist", "--data", str(shared_data / "mnist"), "--cells", "star",
                                   "--layers", "1", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    assert cpu.exit_code == 0 and "on cpu" in cpu.output  # resumed: the run above is reused


@pytest.mark.parametrize("task", ["per_sequence", "per_timestep"])
def test_the_crops_suite_builds_its_dataset_once(tmp_path: Path, task: str) -> None:
    budget = replace(budget_for("crops", "smoke"), train=120, val=40, test=40, scene_size=64, epochs=1)
    data = load_suite("crops", budget, None, cache=tmp_path, task=task)
    assert (len(data.train), len(data.val), len(data.test)) == (120, 40, 40)
    assert data.steps == 26 and data.input_size == 54 and data.head == task and data.name.endswith(task)
    assert data.train.mask is not None and data.train.mask.dtype == torch.bool
    if task == "per_timestep":
        assert data.train.y.shape == (120, 26) and int(data.train.y.min()) >= -1
        assert data.num_classes > 8  # the crops and the condition classes (cloud, shadow, …)
    else:
        assert data.train.y.shape == (120,)
    built = sorted(p.name for p in tmp_path.iterdir())
    again = load_suite("crops", budget, None, cache=tmp_path, task=task)  # reused, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == built and torch.equal(again.train.x, data.train.x)
    results = sweep(data, budget, ["star"], [1], 1, tmp_path / "out")
    assert 0 <= results[0].test_accuracy <= 1


def test_the_crops_suite_reads_worldcereal(shared_data: Path, tmp_path: Path) -> None:
    parquet = shared_data / "worldcereal" / "FRA_LPIS_2023_dekad.geoparquet"
    budget = replace(budget_for("crops", "smoke"), train=None, val=None, test=None)
    data = load_suite("crops", budget, parquet, cache=tmp_path)
    assert data.steps == 51 and data.input_size == 6 and data.num_classes == 12 and data.head == "per_sequence"
    assert len(data.train) + len(data.val) + len(data.test) == 406
    with pytest.raises(InputError, match="per sequence"):
        load_suite("crops", budget, parquet, cache=tmp_path, task="per_timestep")


def test_the_gestures_suite_sweeps_conv_cells(shared_data: Path, tmp_path: Path) -> None:
    budget = replace(budget_for("gestures", "smoke"), train=48, val=16, test=16, frames=4, size=16, filters=2,
                     head_filters=(2, 2, 2, 2), epochs=1)  # fmt: skip
    data = load_suite("gestures", budget, shared_data / "mnist")
    assert data.conv and data.num_classes == 9 and data.head == "gesture"
    assert data.train.x.shape == (48, 4, 1, 16, 16) and data.test.y.shape == (16,)
    results = sweep(data, budget, ["conv_star", "conv_lstm_wf"], [1, 2], 1, tmp_path)
    assert [(r.cell, r.layers, len(r.grad_at_init)) for r in results] == [
        ("conv_star", 1, 1), ("conv_star", 2, 2), ("conv_lstm_wf", 1, 1), ("conv_lstm_wf", 2, 2)]
    with pytest.raises(InputError, match="unknown conv cell.*star.*choose from conv_star"):
        sweep(data, budget, ["star"], [1], 1, tmp_path)


def _jester_root(root: Path, train: int, validation: int) -> Path:
    """A fake 20BN-Jester v1 tree of ``train`` + ``validation`` videos of 3–6 random 20×16 JPEG frames."""
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = ["Swiping Left", "Swiping Right", "No gesture"]
    root.mkdir(parents=True)
    (root / "jester-v1-labels.csv").write_text("\n".join(labels) + "\n")
    rows: dict[str, list[str]] = {"train": [], "validation": []}
    for i in range(train + validation):
        folder = root / "20bn-jester-v1" / str(100 + i)
        folder.mkdir(parents=True)
        for frame in range(int(rng.integers(3, 7))):
            pixels = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{frame + 1:05d}.jpg")
        rows["train" if i < train else "validation"].append(f"{100 + i};{labels[i % 3]}")
    for split, lines in rows.items():
        (root / f"jester-v1-{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_the_gestures_suite_streams_jester_clips(tmp_path: Path) -> None:
    root = _jester_root(tmp_path / "jester", train=6, validation=7)
    budget = replace(budget_for("gestures", "smoke"), train=5, val=2, test=4, frames=4, size=8, filters=2,
                     head_filters=(2, 2, 2, 2), epochs=1, batch_size=3)  # fmt: skip
    data = load_suite("gestures", budget, root)
    assert data.name == "gestures jester" and data.num_classes == 3 and data.conv and data.steps == 4
    assert (len(data.train), len(data.val), len(data.test)) == (5, 2, 4)  # validation CSV: 2 + 4 of 7
    assert data.train.x.shape == (5, 4, 3, 8, 8) and data.test.x.shape == (4, 4, 3, 8, 8)
    val_ids = [data.val.x.clips.ids[p] for p in data.val.x.positions]
    test_ids = [data.test.x.clips.ids[p] for p in data.test.x.positions]
    assert val_ids == ["106", "107"] and test_ids == ["108", "109", "110", "111"]
    assert data.train.y.tolist() == [0, 1, 2, 0, 1]
    batch = data.test.x[torch.tensor([3, 0])]  # decoded on demand, in the order asked
    torch.testing.assert_close(batch, torch.stack([data.test.x.clips[5][0], data.test.x.clips[2][0]]))
    (result,) = sweep(data, budget, ["conv_star"], [2], 1, tmp_path / "out")
    assert result.best_epoch == 1 and len(result.grad_at_init) == 2 and np.isfinite(result.best_val_loss)
    everything = load_suite("gestures", replace(budget, train=None, test=None), root)  # the full budget's way
    assert (len(everything.train), len(everything.val), len(everything.test)) == (6, 2, 5)
    too_few = replace(budget, val=7)
    with pytest.raises(InputError, match="jester-v1-validation.csv: 7 clips, but the budget's 7 validation"):
        load_suite("gestures", too_few, root)


def test_the_full_gestures_budget_follows_the_protocol() -> None:
    full = budget_for("gestures", "full")
    assert (full.frames, full.size, full.filters, full.head_filters) == (32, 112, 64, (128, 128, 256, 256))
    assert (full.train, full.val, full.test) == (None, 2000, None)  # all of Jester
    assert (full.optimizer, full.batch_size, full.lr, full.final_lr, full.weight_decay, full.epochs) == (
        "sgd", 8, 1e-3, 1e-6, 5e-5, 30)


def test_sgd_with_a_decaying_learning_rate(tmp_path: Path) -> None:
    """The gestures protocol's optimiser (SGD, momentum 0.9, L2 5e-5) and its learning rate: 1e-3 at the
    first step, decaying linearly (polynomially, power 1) step by step to 1e-6 at the end of the run."""
    full = budget_for("gestures", "full")
    budget = replace(TINY, optimizer="sgd", lr=full.lr, final_lr=full.final_lr,
                     weight_decay=full.weight_decay, epochs=3)  # fmt: skip
    assert (budget.lr, budget.final_lr) == (1e-3, 1e-6)
    data = _task(True)
    optimisers: list[torch.optim.Optimizer] = []
    lrs: list[float] = []  # the learning rate each optimiser step applies

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        optimisers.append(optimizer)
        lrs.append(optimizer.param_groups[0]["lr"])

    hook = register_optimizer_step_pre_hook(record)
    try:
        (run,) = sweep(data, budget, ["star"], [1], 1, tmp_path)
    finally:
        hook.remove()
    optimizer = optimisers[0]
    assert isinstance(optimizer, torch.optim.SGD) and all(o is optimizer for o in optimisers)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 5e-5)

    per_epoch = math.ceil(len(data.train) / budget.batch_size)  # 320 / 32: 10 steps
    total = budget.epochs * per_epoch
    assert len(lrs) == total
    assert lrs == pytest.approx([1e-3 - 999e-6 * step / total for step in range(total)], rel=1e-9, abs=0)
    assert all(later < earlier for earlier, later in itertools.pairwise(lrs))  # it changes at every step
    assert lrs[::per_epoch] == pytest.approx([1e-3, 1e-3 - 333e-6, 1e-3 - 666e-6], rel=1e-9, abs=0)
    assert group["lr"] == pytest.approx(1e-6, rel=1e-9, abs=0)  # reached when the run ends
    assert len(run.val_loss) == 3 and all(np.isfinite(run.val_loss))


@pytest.mark.parametrize(("suite", "extra"), [("mnist", []), ("crops", ["--task", "per_timestep"]), ("gestures", [])])
def test_the_smoke_budget_runs(shared_data: Path, tmp_path: Path, suite: str, extra: list[str]) -> None:
    """The suites as CI runs them: each at its smoke budget, unmodified (about a minute together). Every
    run of the budget's cells × depths trains (finite losses, a validation loss that falls, a test
    accuracy above the failure floor), its epoch of lowest validation loss selected, and the report
    holds what the runs recorded."""
    data = [] if suite == "crops" else ["--data", str(shared_data / "mnist")]
    result = CliRunner().invoke(app, ["validate", suite, "--budget", "smoke", "--out", str(tmp_path), *data, *extra])
    assert result.exit_code == 0, result.output
    smoke = budget_for(suite, "smoke")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(row["cell"], int(row["layers"]), int(row["seed"])) for row in rows] == [
        (cell, depth, 0) for cell in smoke.cells for depth in smoke.layers]  # fmt: skip
    runs = {}
    for row in rows:
        run = json.loads(run_path(tmp_path, row["cell"], int(row["layers"]), 0).read_text())["result"]
        runs[row["cell"], int(row["layers"])] = run
        val_loss, label = run["val_loss"], f"{row['cell']} L{row['layers']}"
        assert len(val_loss) == smoke.epochs and np.isfinite(val_loss).all(), label
        assert run["train_loss"] and np.isfinite(run["train_loss"]).all(), label
        assert run["best_epoch"] == 1 + int(np.argmin(val_loss)), label  # the lowest validation loss
        assert run["best_val_loss"] == min(val_loss), label
        assert run["best_val_loss"] < val_loss[0], label  # it learns
        assert not run["failed"] and run["reason"] == "" and row["failed"] == "False", (label, run["reason"])
        assert len(run["grad_at_init"]) == run["layers"], label
        assert int(row["best_epoch"]) == run["best_epoch"], label
        assert float(row["test_accuracy"]) == pytest.approx(run["test_accuracy"], abs=5e-5), label
        assert float(row["best_val_loss"]) == pytest.approx(run["best_val_loss"], abs=5e-5), label
    table = (tmp_path / "results.md").read_text()
    assert "| cell | " + " | ".join(f"L = {d}" for d in smoke.layers) + " |" in table
    for cell in smoke.cells:
        accuracies = " | ".join(f"{runs[cell, depth]['test_accuracy']:.3f}" for depth in smoke.layers)
        assert f"| {cell} | {accuracies} |" in table
    plots = {"accuracy_vs_depth.png", "gradient_norms.png", "training_loss.png"}
    assert {p.name for p in tmp_path.glob("*.png")} == plots
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in plots)


def test_the_initialisation_is_a_flag_and_part_of_a_runs_identity(shared_data: Path, tmp_path: Path) -> None:
    base = ["validate", "mnist", "--data", str(shared_data / "mnist"), "--cells", "star", "--layers", "1",
            "--epochs", "1", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--gate-bias", "-1"])
    assert result.exit_code == 0, result.output
    assert "(smoke budget, gate bias -1)" in (tmp_path / "results.md").read_text()
    stored = json.loads((tmp_path / "runs" / "star-L1-s0.json").read_text())["identity"]["budget"]
    assert (stored["bias_init"], stored["gate_bias"], stored["t_max"]) == ("constant", -1.0, None)
    chrono = CliRunner().invoke(app, [*base, "--bias-init", "chrono", "--t-max", "100"])
    assert chrono.exit_code == 0 and "chrono (T_max 100)" in (tmp_path / "results.md").read_text()
    stored = json.loads((tmp_path / "runs" / "star-L1-s0.json").read_text())["identity"]["budget"]
    assert (stored["bias_init"], stored["t_max"]) == ("chrono", 100)  # trained again, not reused
    bad = CliRunner().invoke(app, [*base, "--bias-init", "zero", "--t-max", "26"])
    assert bad.exit_code != 0 and "t_max (at least 2) goes with bias_init chrono" in bad.output


def test_crops_and_gestures_default_to_a_zero_gate_bias_and_t_max_implies_chrono(tmp_path: Path) -> None:
    for name in BUDGETS:  # every crops and gestures budget: zero; pixel MNIST keeps the paper's chrono
        assert budget_for("crops", name).init_options(26) == {"bias_init": "zero"}
        assert budget_for("gestures", name).init_options(12) == {"bias_init": "zero"}
        assert budget_for("mnist", name).init_options(49) == {"bias_init": "chrono", "t_max": 49}
    chrono = CliRunner().invoke(app, ["validate", "crops", "--t-max", "30", "--cells", "star", "--layers", "1",
                                      "--epochs", "1", "--out", str(tmp_path)])  # fmt: skip
    assert chrono.exit_code == 0, chrono.output
    assert "(smoke budget, chrono (T_max 30))" in (tmp_path / "results.md").read_text()


def test_budget_init_options() -> None:
    budget = budget_for("mnist", "smoke")
    assert budget.init_options(26) == {"bias_init": "chrono", "t_max": 26}
    assert replace(budget, t_max=784).init_options(26) == {"bias_init": "chrono", "t_max": 784}
    constant = replace(budget, bias_init="constant", gate_bias=-1.0)
    assert constant.init_options(26) == {"bias_init": "constant", "gate_bias": -1.0}
    assert replace(budget, bias_init="zero").init_label(26) == "zero gate bias"
