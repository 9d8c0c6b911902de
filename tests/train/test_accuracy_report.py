"""Accuracy reports as text, figures and files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from cropstar.data.class_table import ClassTable
from cropstar.errors import InputError
from cropstar.train.metrics import accuracy_report, per_timestep_report
from cropstar.train.report import format_report, plot_confusion_matrix, plot_per_timestep, write_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report(num_classes: int, seed: int = 0, steps: int = 6) -> tuple[dict, list[dict]]:
    names = {str(100 + i): f"crop {i}" for i in range(num_classes)}
    names["100"] = "winter wheat (soft, autumn sown)"
    table = ClassTable.from_codes(names, names)
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, (150, steps))
    y_pred = np.where(rng.random(y_true.shape) < 0.7, y_true, rng.integers(0, num_classes, y_true.shape))
    y_true[rng.random(y_true.shape) < 0.1] = -1
    dates = np.datetime64("2023-03-01") + np.arange(steps) * np.timedelta64(30, "D")
    return accuracy_report(y_true, y_pred, table), per_timestep_report(y_true, y_pred, table, dates)


def png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path).shape


def test_format_report_lists_every_class_and_the_summary() -> None:
    report, _ = make_report(5)
    text = format_report(report, title="validation, 2023")
    assert "\x1b" not in text
    assert "validation, 2023" in text
    for row in report["per_class"]:
        line = next(line for line in text.splitlines() if row["name"] in line)
        assert all(f"{row[key]:.4f}" in line for key in ("precision", "recall", "f1"))
    summary = text.splitlines()[-5:]
    assert summary[0].startswith("overall accuracy")
    for line, key in zip(summary, ("overall_accuracy", "kappa", "macro_f1", "weighted_f1"), strict=False):
        assert line.endswith(f"{report[key]:.4f}")
    assert summary[4].endswith(str(report["n_samples"]))
    undefined = accuracy_report([1, 1], [1, 1], ClassTable.from_codes(["a", "b"]))
    assert "kappa" in format_report(undefined) and "n/a" in format_report(undefined)
    with pytest.raises(InputError, match="not an accuracy report"):
        format_report({"overall_accuracy": 0.5})


@pytest.mark.parametrize("num_classes", [4, 45])
def test_confusion_matrix_png(tmp_path: Path, num_classes: int) -> None:
    report, _ = make_report(num_classes)
    path = plot_confusion_matrix(report, tmp_path / "figs" / "cm.png", title="test")
    height, width = png_shape(path)[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 3000
    if num_classes == 45:  # grows with the number of classes, so 45 names stay legible
        assert height > 1200
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temporary file left behind
    counts = plot_confusion_matrix(report, tmp_path / "counts.png", normalised=False)
    assert png_shape(counts)[:2] != (0, 0)


def test_per_timestep_png(tmp_path: Path) -> None:
    _, rows = make_report(4)
    height, width = png_shape(plot_per_timestep(rows, tmp_path / "steps.png"))[:2]
    assert 200 <= height <= 1500 and 400 <= width <= 2000
    undated = [{**row, "date": None, "kappa": None} for row in rows]
    assert png_shape(plot_per_timestep(undated, tmp_path / "undated.png"))[0] > 200
    with pytest.raises(InputError, match="per-time-step rows"):
        plot_per_timestep([], tmp_path / "empty.png")


def test_write_metrics_files_round_trip(tmp_path: Path) -> None:
    report, rows = make_report(4)
    paths = write_metrics(report, tmp_path / "eval", per_timestep=rows)
    assert set(paths) == {"metrics.json", "per_class.csv", "confusion_matrix.png", "per_timestep.csv",
                          "per_timestep.png"}
    assert all(path.parent == tmp_path / "eval" and path.is_file() for path in paths.values())
    assert json.loads(paths["metrics.json"].read_text()) == {**report, "per_timestep": rows}
    with paths["per_class.csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["name"] for r in table] == report["classes"]
    assert [int(r["support"]) for r in table] == [r["support"] for r in report["per_class"]]
    assert [float(r["f1"]) for r in table] == [r["f1"] for r in report["per_class"]]
    with paths["per_timestep.csv"].open() as handle:
        assert [int(r["n_samples"]) for r in csv.DictReader(handle)] == [r["n_samples"] for r in rows]
    png_shape(paths["confusion_matrix.png"])
    png_shape(paths["per_timestep.png"])

    plain = write_metrics(report, tmp_path / "plain")
    assert set(plain) == {"metrics.json", "per_class.csv", "confusion_matrix.png"}
    assert "per_timestep" not in json.loads(plain["metrics.json"].read_text())
    assert not (tmp_path / "plain" / "per_timestep.png").exists()
