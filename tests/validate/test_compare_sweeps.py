"""scripts/compare_sweeps.py: sweeps side by side, from their results.csv and runs/*.json."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_sweeps.py"


def _sweep(folder: Path, runs: list[tuple[int, int, float, list[float]]]) -> str:
    """A sweep folder of STAR runs (layers, seed, test accuracy, gradient norms at init; at the end of
    the first epoch, ten times flatter)."""
    (folder / "runs").mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "layers", "seed", "test_accuracy", "failed"])
        for layers, seed, accuracy, norms in runs:
            writer.writerow(["star", layers, seed, accuracy, accuracy < 0.2])
            after = [norm * 10 for norm in norms[:-1]] + norms[-1:]
            result = {"result": {"grad_at_init": norms, "grad_first_epoch": [norms, after]}}
            (folder / "runs" / f"star-L{layers}-s{seed}.json").write_text(json.dumps(result))
    return str(folder)


def test_means_population_stds_failures_and_gradient_ratios(tmp_path: Path) -> None:
    a = _sweep(tmp_path / "a", [(1, 0, 0.9, [1.0]), (1, 1, 0.7, [1.0]), (4, 0, 0.8, [0.01, 1.0]),
                                (4, 1, 0.1, [1e-4, 1.0])])  # fmt: skip
    b = _sweep(tmp_path / "b", [(1, 0, 0.95, [2.0]), (4, 0, 0.9, [0.5, 1.0])])
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), f"chrono={a}", f"zero={b}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = (out / "comparison.md").read_text()
    assert "| chrono | star | 0.800 ± 0.100 | 0.450 ± 0.350 ✗ 1/2 |" in table  # population std
    assert "| zero | star | 0.950 ± 0.000 | 0.900 ± 0.000 |" in table
    assert "| chrono | star | 0.001 | 0.01 |" in table  # geometric mean of 1e-2 and 1e-4; then ×10
    assert "| zero | star | 0.5 | 5 |" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["init"], r["layers"], r["count"]) for r in rows] == [
        ("chrono", "1", "2"), ("chrono", "4", "2"), ("zero", "1", "1"), ("zero", "4", "1")
    ]


def test_a_sweep_without_its_runs_gives_accuracies_only(tmp_path: Path) -> None:
    kept = _sweep(tmp_path / "kept", [(4, 0, 0.9, [0.5, 1.0])])
    older = _sweep(tmp_path / "older", [(4, 0, 0.8, [0.5, 1.0])])
    for run in Path(older, "runs").iterdir():
        run.unlink()
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), f"new={kept}", f"old={older}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = (out / "comparison.md").read_text()
    assert "| old | star | 0.800 ± 0.000 |" in table and "| old | star | – | – |" in table
    assert "| new | star | 0.5 | 5 |" in table


def test_when_the_deep_models_trained_best(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    (folder / "runs").mkdir(parents=True)
    chance = 2.302585  # ln 10
    losses = {0: [2.30, 2.29, 1.5, 1.2], 1: [2.30, 2.30, 2.29, 2.30], 2: [2.0, 1.0, 0.9, 0.95]}
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "layers", "seed", "test_accuracy", "failed", "best_epoch"])
        for seed, loss in losses.items():
            writer.writerow(["lstm", 12, seed, 0.5, False, loss.index(min(loss)) + 1])
            result = {"result": {"grad_at_init": [1.0], "grad_first_epoch": [[1.0]], "val_loss": loss}}
            (folder / "runs" / f"lstm-L12-s{seed}.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--classes", "10", f"zero={folder}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # best epochs 4, 3, 3; best at the last epoch: seed 0 only; below 0.9 ln 10 = 2.07 at 3, never, 1
    assert 0.9 * chance > 2.0 and "| zero | lstm | 12 | 3 | 1/3 | 3 |" in (out / "comparison.md").read_text()


def test_a_sweep_without_its_label_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode != 0 and "LABEL=FOLDER" in done.stderr


@pytest.fixture(autouse=True)
def _headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
