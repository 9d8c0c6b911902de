"""The gradient-analysis report behind ``cropstar simulate``: settings and every promised file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cropstar.analysis import simulate_gradients
from cropstar.analysis.plots import STATISTICS
from cropstar.analysis.report import SimulationConfig, summarise, write_simulation_report
from cropstar.errors import InputError

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {"cells": ["star", "lstm"], "layers": 2, "steps": 3, "hidden_size": 4, "runs": 2, "loss": ["final", "all"], "seed": 4}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("report") / "nested" / "out"
    calls: list[tuple[str, int, int]] = []
    result = write_simulation_report(SimulationConfig(**TINY), out, progress=lambda *a: calls.append(a))
    return out, result, calls


def test_every_promised_file_written(report) -> None:
    out, _, _ = report
    expected = {
        "simulation_final.json", "simulation_all.json", "summary.csv", "jacobian.csv", "jacobian.json",
        "config.json",
    }
    expected |= {f"heatmap_{s}_{loss}.png" for s in STATISTICS for loss in ("final", "all")}
    assert len(STATISTICS) == 4
    assert expected <= {p.name for p in out.iterdir()}
    arrays = {p.name for p in (out / "arrays").iterdir()}
    assert arrays == {
        f"{c}_{loss}_{s}.csv" for c in ("star", "lstm") for loss in ("final", "all") for s in STATISTICS
    }
    for name in expected:
        assert (out / name).stat().st_size > 0, name
    for statistic in STATISTICS:
        assert (out / f"heatmap_{statistic}_final.png").read_bytes()[:8] == PNG_MAGIC
    # atomic writes leave no temporary files behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_array_csvs_are_layers_by_steps_and_hold_the_simulation(report) -> None:
    out, _, _ = report
    for cell in ("star", "lstm"):
        for loss in ("final", "all"):
            sim = simulate_gradients(cell, 2, 3, 4, 2, loss, 0.5, 4)  # same settings → same numbers
            for statistic in STATISTICS:
                values = np.loadtxt(out / "arrays" / f"{cell}_{loss}_{statistic}.csv", delimiter=",", ndmin=2)
                assert values.shape == (2, 3)  # L rows, T columns
                np.testing.assert_allclose(values, getattr(sim, statistic), rtol=1e-5, atol=1e-12)


def test_simulation_json(report) -> None:
    out, _, _ = report
    for loss in ("final", "all"):
        data = json.loads((out / f"simulation_{loss}.json").read_text())
        assert [d["cell"] for d in data] == ["star", "lstm"]
        for entry in data:
            assert entry["loss"] == loss and entry["num_layers"] == 2 and entry["num_steps"] == 3
            assert np.asarray(entry["hidden"]).shape == (2, 3)
            assert entry["hidden"][-1][-1] == pytest.approx(2.0, abs=1e-6)  # ‖ones(4)‖


def test_summary_and_return_value(report) -> None:
    out, result, _ = report
    with (out / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["cell"], r["loss"]) for r in rows] == [
        ("star", "final"), ("lstm", "final"), ("star", "all"), ("lstm", "all")
    ]
    assert [(r["cell"], r["loss"]) for r in result["summary"]] == [(r["cell"], r["loss"]) for r in rows]
    for row, returned in zip(rows, result["summary"]):
        for key in ("depth_ratio", "time_ratio", "corner_ratio", "max_over_min", "mean_normalised_std"):
            assert float(row[key]) == pytest.approx(returned[key])
    star_final = result["summary"][0]
    sim = simulate_gradients("star", 2, 3, 4, 2, "final", 0.5, 4)
    assert star_final["depth_ratio"] == pytest.approx(sim.params[0].mean() / sim.params[-1].mean())
    assert star_final["time_ratio"] == pytest.approx(sim.params[:, 0].mean() / sim.params[:, -1].mean())
    assert star_final["corner_ratio"] == pytest.approx(sim.params[0, 0] / sim.params[-1, -1])
    assert star_final["max_over_min"] >= 1.0


def test_jacobian_files(report) -> None:
    out, result, _ = report
    data = json.loads((out / "jacobian.json").read_text())
    assert data == result["jacobian"]
    assert [d["cell"] for d in data] == ["star", "lstm"]
    expected = {"star": 0.5, "lstm": 0.25}
    with (out / "jacobian.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for entry, row in zip(data, rows):
        assert row["cell"] == entry["cell"]
        for key in ("J_min", "J_mean", "J_max", "H_min", "H_mean", "H_max"):
            assert entry[key] == pytest.approx(expected[entry["cell"]], abs=1e-9)
            assert float(row[key]) == pytest.approx(entry[key])


def test_config_json_round_trips(report) -> None:
    out, _, _ = report
    config = SimulationConfig.model_validate_json((out / "config.json").read_text())
    assert config == SimulationConfig(**TINY)


def test_progress_names_each_simulation(report) -> None:
    _, _, calls = report
    tasks = [c[0] for c in calls]
    assert sorted(set(tasks)) == sorted({"star (final)", "lstm (final)", "star (all)", "lstm (all)"})
    assert all(total == 2 for _, _, total in calls)
    assert {(task, done) for task, done, _ in calls if done == 2} == {(t, 2) for t in set(tasks)}


# ---- settings ----------------------------------------------------------------------------------
def test_defaults_and_loss_string() -> None:
    config = SimulationConfig()
    assert config.cells == ["star", "vrnn", "lstm", "lstm_wf", "gru"]
    sizes = (config.layers, config.steps, config.hidden_size, config.runs, config.alpha)
    assert sizes == (12, 30, 64, 200, 0.5)
    assert config.loss == ["final"]
    assert SimulationConfig(loss="all").loss == ["all"]


@pytest.mark.parametrize(
    "settings",
    [{"cells": ["star", "bogus"]}, {"cells": ["conv_star"]}, {"extra": 1}, {"loss": "mean"}, {"layers": 0},
     {"alpha": 1.5}, {"runs": 0}],
)
def test_invalid_settings_rejected(settings: dict) -> None:
    with pytest.raises(ValidationError) as info:
        SimulationConfig(**settings)
    assert next(iter(settings)) in str(info.value)


def test_unknown_cell_named_in_message() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        SimulationConfig(cells=["star", "bogus"])


@pytest.mark.parametrize("settings", [{"cells": []}, {"loss": []}])
def test_empty_lists_rejected(settings: dict) -> None:
    with pytest.raises(ValidationError):
        SimulationConfig(**settings)


def test_from_yaml_merges_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("cells: [vrnn]\nlayers: 3\nsteps: 5\nloss: all\n")
    config = SimulationConfig.from_yaml(path, steps=7, runs=None, seed=9)
    assert config.cells == ["vrnn"] and config.layers == 3 and config.loss == ["all"]
    assert config.steps == 7  # override wins
    assert config.runs == 200  # None override ignored → default
    assert config.seed == 9


def test_from_yaml_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert SimulationConfig.from_yaml(path) == SimulationConfig()


def test_repository_config_loads() -> None:
    config = SimulationConfig.from_yaml(REPO / "configs" / "simulate.yaml")
    assert config == SimulationConfig()


def test_from_yaml_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.yaml"):
        SimulationConfig.from_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("cells: [star\nlayers: : 3\n")
    with pytest.raises(InputError, match="broken.yaml"):
        SimulationConfig.from_yaml(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- star\n- lstm\n")
    with pytest.raises(InputError, match="mapping"):
        SimulationConfig.from_yaml(listing)
    with pytest.raises(InputError):
        SimulationConfig.from_yaml(tmp_path)  # a directory


def test_from_yaml_invalid_values_still_validated(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("cells: [bogus]\n")
    with pytest.raises(ValidationError, match="bogus"):
        SimulationConfig.from_yaml(path)
    path.write_text("cells: [star]\nlayerz: 3\n")
    with pytest.raises(ValidationError, match="layerz"):
        SimulationConfig.from_yaml(path)


def test_summarise_reads_the_heat_map() -> None:
    sim = simulate_gradients("vrnn", 3, 4, 4, runs=2)
    sim.params = np.array([[8.0, 4.0, 2.0, 1.0], [4.0, 2.0, 1.0, 0.5], [2.0, 1.0, 0.5, 0.25]])
    sim.params_std = np.full((3, 4), 0.3)
    row = summarise(sim)
    assert row["depth_ratio"] == pytest.approx(4.0)
    assert row["time_ratio"] == pytest.approx(8.0)
    assert row["corner_ratio"] == pytest.approx(32.0)
    assert row["max_over_min"] == pytest.approx(32.0)
    assert row["mean_normalised_std"] == pytest.approx(0.3)


def test_heatmap_rejects_unknown_statistic(tmp_path: Path) -> None:
    from cropstar.analysis.plots import plot_lattice_heatmaps

    sim = simulate_gradients("star", 2, 2, 3, runs=1)
    with pytest.raises(InputError, match="statistic"):
        plot_lattice_heatmaps([sim], tmp_path / "x.png", "gradient")
    assert not (tmp_path / "x.png").exists()


def test_shipped_config_is_valid_and_matches_the_defaults() -> None:
    shipped = Path(__file__).resolve().parents[2] / "configs" / "simulate.yaml"
    assert SimulationConfig.from_yaml(shipped) == SimulationConfig()
