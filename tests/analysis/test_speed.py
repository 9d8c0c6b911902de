"""The RNN speed benchmark: cases, ratios, targets, memory accounting and the CLI door.

Tiny shapes only; nothing here asserts a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from cropstar.analysis.speed import (
    DEFAULT_CASES,
    TARGETS,
    Case,
    SpeedSettings,
    allocation_peak,
    build_model,
    check_targets,
    make_inputs,
    measure_training_memory,
    medians,
    memory_fractions,
    peak_training_memory,
    run_speed_benchmark,
    select_cases,
    speed_tables,
    speedups,
    time_case,
    training_step,
    write_speed_report,
)
from cropstar.cli import app
from cropstar.errors import InputError
from cropstar.nn.stack import DeepRNN
from cropstar.nn.star_steps import step_implementation

TINY = {"batch": 3, "steps": 4, "input_size": 2, "hidden_size": 5, "layers": 2}


def tiny(name: str = "train", mode: str = "train", **kw) -> Case:
    return Case(name=name, mode=mode, **{**TINY, **kw})  # type: ignore[arg-type]


# ---- the issue's defaults ---------------------------------------------------------------------
def test_default_cases_are_the_issues_shapes() -> None:
    by_name = {c.name: c for c in DEFAULT_CASES}
    crop = {"steps": 26, "input_size": 54, "hidden_size": 128, "layers": 4}
    assert by_name["train"].mode == "train" and by_name["train"].shape == {"batch": 256, **crop}
    assert by_name["infer"].mode == "infer" and by_name["infer"].shape == {"batch": 256, **crop}
    assert by_name["infer_b4096"].shape == {"batch": 4096, **crop}
    pmnist = {"batch": 100, "steps": 784, "input_size": 1, "hidden_size": 128, "layers": 4}
    assert by_name["pmnist_train"].shape == pmnist and by_name["pmnist_train"].mode == "train"
    assert by_name["pmnist_infer"].shape == pmnist and by_name["pmnist_infer"].mode == "infer"
    assert SpeedSettings().models == ["star", "torch_lstm", "torch_gru"]


def test_targets_are_the_issues() -> None:
    got = {t.name: (t.case, t.model, t.measure, t.threshold) for t in TARGETS}
    assert got == {
        "train_vs_lstm": ("train", "torch_lstm", "speedup", 2.5),
        "train_vs_gru": ("train", "torch_gru", "speedup", 1.8),
        "infer_b4096_vs_lstm": ("infer_b4096", "torch_lstm", "speedup", 2.2),
        "train_memory_vs_lstm": ("train", "torch_lstm", "memory", 0.45),
        "train_resident_vs_lstm": ("train", "torch_lstm", "resident", 0.45),
    }


def test_quick_shrinks_repetitions_and_keeps_memory_for_the_targets_only() -> None:
    full = SpeedSettings().planned()
    quick = SpeedSettings(quick=True).planned()
    assert [c.name for c, *_ in quick] == [c.name for c, *_ in full]
    for (case, warmup, repeats, memory), (_, q_warmup, q_repeats, q_memory) in zip(full, quick):
        assert q_repeats < repeats and q_warmup <= min(warmup, 1)
        assert memory == (case.mode == "train")
        assert q_memory == (case.name == "train")
    assert not any(m for *_, m in SpeedSettings(memory=False).planned())


def test_select_cases_overrides_shapes_and_names_unknown_cases() -> None:
    cases = select_cases(["train", "pmnist_infer"], hidden_size=7, layers=None)
    assert [c.name for c in cases] == ["train", "pmnist_infer"]
    assert [c.hidden_size for c in cases] == [7, 7] and cases[1].steps == 784 and cases[0].layers == 4
    with pytest.raises(InputError, match="nope"):
        select_cases(["nope"])
    with pytest.raises(InputError, match="batch"):
        select_cases(None, batch=0)


@pytest.mark.parametrize(
    ("models", "message"),
    [(["torch_lstm"], "must include 'star'"), (["star", "lstmx"], "lstmx"), (["star", "star"], "repeated")],
)
def test_settings_reject_bad_models(models: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SpeedSettings(models=models)


# ---- ratios and targets -----------------------------------------------------------------------
def test_speedups_and_memory_fractions_are_relative_to_star() -> None:
    assert speedups({"star": 10.0, "torch_lstm": 30.0, "torch_gru": 15.0}) == {
        "torch_lstm": 3.0,
        "torch_gru": 1.5,
    }
    assert memory_fractions({"star": 40.0, "torch_lstm": 100.0, "torch_gru": 50.0}) == {
        "torch_lstm": 0.4,
        "torch_gru": 0.8,
    }
    assert medians({"star": [3.0, 1.0, 2.0, 100.0, 2.5]}) == {"star": 2.5}


def test_check_targets_met_missed_and_unmeasured() -> None:
    rows = check_targets(
        {"train": {"torch_lstm": 2.5, "torch_gru": 1.79}},  # exactly at the LSTM goal; just under GRU's
        {"train": {"torch_lstm": 0.46}},
    )
    met = {r["name"]: (r["value"], r["met"]) for r in rows}
    assert met == {
        "train_vs_lstm": (2.5, True),
        "train_vs_gru": (1.79, False),
        "infer_b4096_vs_lstm": (None, None),  # the case was not run
        "train_memory_vs_lstm": (0.46, False),
        "train_resident_vs_lstm": (None, None),  # not measured
    }
    rows = check_targets({"infer_b4096": {"torch_lstm": 2.3}}, {"train": {"torch_lstm": 0.45}})
    met = {r["name"]: r["met"] for r in rows}
    assert met["infer_b4096_vs_lstm"] is True and met["train_memory_vs_lstm"] is True
    assert met["train_vs_lstm"] is None
    rows = check_targets({}, {"train": {"torch_lstm": 0.3}}, case_resident_fractions={"train": {"torch_lstm": 0.5}})
    met = {r["name"]: r["met"] for r in rows}
    assert met["train_memory_vs_lstm"] is True and met["train_resident_vs_lstm"] is False  # both must hold


def test_targets_are_judged_at_the_issues_shapes_only() -> None:
    issue = {c.name: c.shape for c in DEFAULT_CASES}
    other = {"train": {**issue["train"], "batch": 3}}
    rows = {r["name"]: r for r in check_targets({"train": {"torch_lstm": 3.0}}, {}, other)}
    assert rows["train_vs_lstm"]["value"] == 3.0 and rows["train_vs_lstm"]["met"] is None
    assert "another shape" in rows["train_vs_lstm"]["note"]
    rows = {r["name"]: r for r in check_targets({"train": {"torch_lstm": 3.0}}, {}, issue)}
    assert rows["train_vs_lstm"]["met"] is True and "note" not in rows["train_vs_lstm"]


def test_allocation_peak_follows_the_events_in_time_order() -> None:
    # (time, bytes): +100 at 1, +50 at 2, −100 at 3, +70 at 4 → running 100, 150, 50, 120
    assert allocation_peak([(3, -100), (1, 100), (4, 70), (2, 50)]) == 150
    assert allocation_peak([(1, -10), (2, 5)]) == 0  # frees of memory from before the step
    assert allocation_peak([]) == 0


# ---- models, steps, memory --------------------------------------------------------------------
def test_models_share_depth_and_width() -> None:
    case = tiny()
    star = build_model("star", case)
    lstm = build_model("torch_lstm", case)
    assert isinstance(star, DeepRNN) and star.cell == "star" and star.num_layers == 2
    assert isinstance(lstm, torch.nn.LSTM) and lstm.num_layers == 2 and lstm.hidden_size == 5
    assert lstm.batch_first
    assert isinstance(build_model("lstm_wf", case), DeepRNN)
    x, mask = make_inputs(case, seed=1)
    assert x.shape == (3, 4, 2) and mask.shape == (3, 4) and mask.dtype == torch.bool
    assert torch.equal(x, make_inputs(case, seed=1)[0])


@pytest.mark.parametrize("model", ["star", "torch_lstm", "torch_gru"])
def test_training_step_fills_every_gradient(model: str) -> None:
    case = tiny()
    module = build_model(model, case)
    x, mask = make_inputs(case)
    training_step(module, x, mask)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_time_case_interleaves_and_counts_runs() -> None:
    case = tiny()
    calls: list[str] = []

    class Recorder(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            self.weight = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, mask=None):
            calls.append(self.name)
            return x * self.weight, None

    models = {name: Recorder(name) for name in ("star", "a", "b")}
    x, mask = make_inputs(case)
    reports: list[tuple[str, int, int]] = []
    times = time_case(case, models, x, mask, warmup=1, repeats=3, progress=lambda *r: reports.append(r))
    assert {k: len(v) for k, v in times.items()} == {"star": 3, "a": 3, "b": 3}
    assert calls == ["star", "a", "b", "a", "b", "star", "b", "star", "a", "star", "a", "b"]  # rotated
    assert reports[-1] == ("train: timing", 4, 4)


def test_training_memory_counts_activations() -> None:
    """More steps keep more activations for backward: the tensor peak grows with T."""
    short = measure_training_memory("star", tiny(steps=4, batch=16, hidden_size=32))
    long = measure_training_memory("star", tiny(steps=40, batch=16, hidden_size=32))
    assert 0 < short["tensor_peak_mb"] < long["tensor_peak_mb"]
    lstm = measure_training_memory("torch_lstm", tiny(steps=40, batch=16, hidden_size=32))
    assert lstm["tensor_peak_mb"] > 0
    # activations of T=40 × B=16 × H=32 float32, at least one tensor per layer kept for backward
    assert long["tensor_peak_mb"] * 1e6 >= 2 * 40 * 16 * 32 * 4


def test_peak_memory_in_a_fresh_process() -> None:
    result = peak_training_memory("star", tiny(), threads=1)
    assert result["fresh_process"] is True and result["tensor_peak_mb"] > 0
    assert result["rss_peak_mb"] is None or result["rss_peak_mb"] >= 0


# ---- the whole run, the report and the door ---------------------------------------------------
def test_run_result_structure_and_report(tmp_path: Path) -> None:
    settings = SpeedSettings(
        cases=[tiny(), tiny("infer_b4096", "infer")], quick=True, threads=1, fresh_process=False
    )
    result = run_speed_benchmark(settings)
    assert result["settings"]["threads"] == 1 and result["settings"]["models"] == settings.models
    assert result["machine"]["torch"] == torch.__version__
    assert set(result["implementations"]) == {"star", "torch_lstm", "torch_gru"}
    assert result["star_step_impl"] == step_implementation("cpu") in ("cpp", "python")
    train, infer = result["cases"]
    assert train["name"] == "train" and train["shape"] == TINY and train["repeats"] == 3
    for case in (train, infer):
        assert {k: len(v) for k, v in case["times_ms"].items()} == {m: 3 for m in settings.models}
        assert case["star_speedup"] == pytest.approx(speedups(case["median_ms"]))
    assert set(train["memory"]) == set(settings.models) and infer["memory"] is None
    fractions = memory_fractions({m: v["tensor_peak_mb"] for m, v in train["memory"].items()})
    assert train["star_memory_fraction"] == pytest.approx(fractions)
    targets = {t["name"]: t for t in result["targets"]}
    assert targets["train_vs_lstm"]["value"] == pytest.approx(train["star_speedup"]["torch_lstm"])
    assert targets["infer_b4096_vs_lstm"]["value"] == pytest.approx(infer["star_speedup"]["torch_lstm"])
    assert targets["train_memory_vs_lstm"]["value"] == pytest.approx(fractions["torch_lstm"])
    assert all(t["met"] is None for t in targets.values())  # tiny shapes: values, no verdicts

    json_path, png_path = write_speed_report(result, tmp_path / "speed.json")
    assert json.loads(json_path.read_text())["cases"][0]["median_ms"] == train["median_ms"]
    assert png_path == tmp_path / "speed.png" and png_path.read_bytes()[:4] == b"\x89PNG"
    assert len(speed_tables(result)) == 3  # speed, memory, targets


def test_cuda_without_a_gpu_is_one_input_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="cuda"):
        run_speed_benchmark(SpeedSettings(device="cuda", cases=[tiny()], memory=False))


def test_cli_bench_speed_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "rnn_speed.json"
    shape = ["--batch", "3", "--steps", "4", "--input-size", "2", "--hidden-size", "5", "--layers", "2"]
    result = CliRunner().invoke(
        app,
        ["bench", "speed", "--quick", "--threads", "1", "--cases", "train,infer", "--cells",
         "star,torch_lstm,lstm", "--no-memory", "--out", str(out), *shape],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["cases"]] == ["train", "infer"]
    assert data["cases"][0]["shape"] == TINY and data["settings"]["quick"] is True
    assert set(data["cases"][0]["median_ms"]) == {"star", "torch_lstm", "lstm"}
    assert data["cases"][0]["memory"] is None  # --no-memory (memory: tests above)
    assert out.with_suffix(".png").exists()
    assert "Speed targets" in result.output and "wrote" in result.output


def test_cli_bench_speed_one_line_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "speed", "--cells", "torch_lstm", "--out", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2 and "star" in result.output
    result = CliRunner().invoke(app, ["bench", "speed", "--cases", "nope", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output
