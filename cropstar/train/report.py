"""Accuracy reports as files and text: a terminal table, the confusion-matrix and early-season figures,
``metrics.json`` and CSV tables (DESIGN.md, "Conventions of the field": accuracy reports)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from cropstar.errors import InputError
from cropstar.files import write_csv_atomic, write_text_atomic

#: Confusion matrices up to this many classes carry counts and row percentages in their cells.
ANNOTATE_MAX_CLASSES = 20
_REPORT_KEYS = (
    "per_class", "confusion_matrix", "confusion_matrix_normalised", "overall_accuracy", "kappa", "macro_f1",
    "weighted_f1", "classes", "n_samples",
)
_STEP_KEYS = ("step", "date", "n_samples", "overall_accuracy", "macro_f1", "kappa")


def _check_report(report: dict[str, Any]) -> None:
    missing = [key for key in _REPORT_KEYS if key not in report]
    if missing:
        raise InputError(f"not an accuracy report (from accuracy_report): missing {', '.join(missing)}")


def _figure_text(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _count_text(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.1f}"


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A plain-text table of an accuracy report: per class precision (user's accuracy), recall
    (producer's accuracy), F1 and support, then overall accuracy, kappa, macro and weighted F1."""
    _check_report(report)
    table = Table(title=title or None, title_justify="left")
    table.add_column("class", no_wrap=True)
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    for row in report["per_class"]:
        table.add_row(row["name"], _figure_text(row["precision"]), _figure_text(row["recall"]),
                      _figure_text(row["f1"]), _count_text(row["support"]))
    width = max(80, max((len(name) for name in report["classes"]), default=0) + 60)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(table)
    summary = [
        ("overall accuracy", _figure_text(report["overall_accuracy"])),
        ("kappa", _figure_text(report["kappa"])),
        ("macro F1", _figure_text(report["macro_f1"])),
        ("weighted F1", _figure_text(report["weighted_f1"])),
        ("samples", str(report["n_samples"])),
    ]
    label_width = max(len(label) for label, _ in summary)
    lines = [f"{label:<{label_width}}  {value}" for label, value in summary]
    table_lines = [line.rstrip() for line in buffer.getvalue().rstrip().splitlines()]
    return "\n".join(table_lines + lines) + "\n"


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG atomically (a temporary file beside ``path``, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_confusion_matrix(
    report: dict[str, Any], path: Path, normalised: bool = True, title: str = ""
) -> Path:
    """The confusion matrix as PNG: rows = reference, columns = predicted, coloured by the row share
    (``normalised``) or the count; cells carry the count and row percentage up to
    :data:`ANNOTATE_MAX_CLASSES` classes. Sized to stay readable up to ~50 classes."""
    _check_report(report)
    counts = np.asarray(report["confusion_matrix"], dtype=np.float64)
    shares = np.asarray(report["confusion_matrix_normalised"], dtype=np.float64)
    names = [_short(name) for name in report["classes"]]
    k = len(names)
    values = shares if normalised else counts
    side = float(np.clip(2.5 + 0.35 * k, 4.5, 22.0))
    label_size = 10 if k <= 12 else 8
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalised else max(values.max(), 1.0))
    colour_label = "share of reference class" if normalised else "samples"
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=colour_label)
    ticks = np.arange(k)
    ax.set_xticks(ticks, names, rotation=90, fontsize=label_size)
    ax.set_yticks(ticks, names, fontsize=label_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("reference class")
    if k <= ANNOTATE_MAX_CLASSES:
        cell_size = float(np.clip(150 / max(k, 1), 5, 9))
        threshold = 0.5 * (1.0 if normalised else values.max())
        for i in range(k):
            for j in range(k):
                if counts[i, j] == 0:
                    continue
                text = f"{_count_text(counts[i, j])}\n{100 * shares[i, j]:.0f}%"
                colour = "white" if values[i, j] > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell_size, color=colour)
    heading = (
        f"OA {report['overall_accuracy']:.3f}, κ {_figure_text(report['kappa'], 3)}, "
        f"macro F1 {report['macro_f1']:.3f}, n = {report['n_samples']}"
    )
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_timestep(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Overall accuracy, macro F1 and kappa against date (or step) from :func:`per_timestep_report` rows."""
    if not rows or any(key not in rows[0] for key in _STEP_KEYS):
        raise InputError(
            f"per-time-step rows (from per_timestep_report) need the keys {', '.join(_STEP_KEYS)}"
        )
    x = None
    if all(row["date"] for row in rows):
        try:
            x = np.array([np.datetime64(row["date"], "D") for row in rows])
        except ValueError:
            x = None
    positions = x if x is not None else np.array([row["step"] for row in rows])
    fig = Figure(figsize=(8.0, 4.0))
    ax = fig.subplots()
    lowest = 0.0
    for key, label, style in (("overall_accuracy", "overall accuracy", "-o"), ("macro_f1", "macro F1", "-s"),
                              ("kappa", "Cohen's κ", "--^")):
        values = np.array([np.nan if row[key] is None else row[key] for row in rows], dtype=np.float64)
        if np.any(np.isfinite(values)):
            lowest = min(lowest, float(np.nanmin(values)))
        ax.plot(positions, values, style, markersize=4, label=label)
    ax.set_ylim(lowest - 0.02, 1.02)
    ax.set_xlabel("date" if x is not None else "time step")
    ax.set_ylabel("score")
    ax.set_title("Accuracy as the season progresses")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if x is not None:
        fig.autofmt_xdate()
    fig.tight_layout()
    return save_figure(fig, path)


def write_metrics(
    report: dict[str, Any], folder: Path, per_timestep: Sequence[dict[str, Any]] | None = None
) -> dict[str, Path]:
    """Write ``metrics.json`` (the report, plus ``per_timestep`` when given), ``confusion_matrix.png``,
    ``per_class.csv`` and, with ``per_timestep``, ``per_timestep.png`` / ``per_timestep.csv`` into
    ``folder``; returns {file name: path}."""
    _check_report(report)
    folder = Path(folder)
    document = dict(report)
    if per_timestep is not None:
        document["per_timestep"] = list(per_timestep)
    paths = {
        "metrics.json": write_text_atomic(folder / "metrics.json", json.dumps(document, indent=2) + "\n"),
        "per_class.csv": write_csv_atomic(folder / "per_class.csv", report["per_class"]),
        "confusion_matrix.png": plot_confusion_matrix(report, folder / "confusion_matrix.png"),
    }
    if per_timestep is not None:
        paths["per_timestep.csv"] = write_csv_atomic(folder / "per_timestep.csv", list(per_timestep))
        paths["per_timestep.png"] = plot_per_timestep(per_timestep, folder / "per_timestep.png")
    return paths
