"""The tables and plots of the real-data suite: ``results.csv`` (one row per data set × method ×
fold), ``results.md`` (overall accuracy and macro F1, mean ± std over folds; per-class F1 per data
set), ``accuracy.png`` (both measures per data set and method, mean ± std) and
``confusion_<data set>.png`` (STAR's confusion matrix, its folds summed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cropstar.data.class_table import ClassTable
from cropstar.files import write_csv_atomic, write_text_atomic
from cropstar.train.metrics import accuracy_report
from cropstar.train.report import plot_confusion_matrix, save_figure
from cropstar.validate.real import RealRun


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def pooled_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The accuracy report of several folds' test samples together (their confusion matrices summed)."""
    confusion = np.sum([np.asarray(r["confusion_matrix"], dtype=np.int64) for r in reports], axis=0)
    table = ClassTable.from_records(reports[0]["per_class"])
    truth, predicted = np.nonzero(confusion)
    counts = confusion[truth, predicted]
    return accuracy_report(np.repeat(truth, counts), np.repeat(predicted, counts), table)


def _row(run: RealRun) -> dict[str, Any]:
    kappa = run.report["kappa"]
    return {
        "dataset": run.dataset,
        "method": run.method,
        "fold": run.fold + 1,
        "overall_accuracy": round(run.report["overall_accuracy"], 4),
        "macro_f1": round(run.report["macro_f1"], 4),
        "kappa": None if kappa is None else round(kappa, 4),
        "n_test": run.report["n_samples"],
        "seconds": round(run.seconds, 1),
    }


def plot_accuracy(grouped: dict[str, dict[str, list[RealRun]]], path: Path) -> Path:
    """One panel per data set: overall accuracy and macro F1 per method, bars at the mean over folds
    with the standard deviation as error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(grouped), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(grouped), sharey=True))
    for ax, (dataset, methods) in zip(axes, grouped.items(), strict=True):
        x = np.arange(len(methods))
        for offset, (key, label) in zip((-0.2, 0.2), (("overall_accuracy", "overall accuracy"), ("macro_f1", "macro F1"))):
            values = [[r.report[key] for r in found] for found in methods.values()]
            ax.bar(x + offset, [np.mean(v) for v in values], 0.4, yerr=[np.std(v) for v in values], label=label,
                   capsize=2)  # fmt: skip
        ax.set_xticks(x, list(methods), rotation=45, ha="right")
        ax.set_title(dataset)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("on the folds' test samples")
    axes[0].legend(loc="lower left")
    return save_figure(fig, path)


def write_real_report(runs: list[RealRun], out: Path) -> list[Path]:
    """Write the suite's files into ``out``; returns their paths."""
    written = [write_csv_atomic(out / "results.csv", [_row(run) for run in runs])]
    grouped: dict[str, dict[str, list[RealRun]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run.dataset][run.method].append(run)
    lines = ["# Real data: every method on the same folds", "",
             ("Overall accuracy and macro F1 on each fold's held-out samples, mean ± std over folds; "
             "seconds: training and prediction, per fold."), "",
             "| data set | method | folds | overall accuracy | macro F1 | seconds |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for dataset, methods in grouped.items():
        for method, found in methods.items():
            accuracy = _mean_std([r.report["overall_accuracy"] for r in found])
            f1 = _mean_std([r.report["macro_f1"] for r in found])
            lines.append(f"| {dataset} | {method} | {len(found)} | {accuracy} | {f1} | "
                         f"{np.mean([r.seconds for r in found]):.0f} |")  # fmt: skip
    for dataset, methods in grouped.items():
        pooled = {method: pooled_report([r.report for r in found]) for method, found in methods.items()}
        lines += ["", f"## {dataset}: F1 per class (the folds' test samples together)", "",
                  "| class | support | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]  # fmt: skip
        first = next(iter(pooled.values()))["per_class"]
        for k, entry in enumerate(first):
            scores = " | ".join(f"{pooled[m]['per_class'][k]['f1']:.2f}" for m in methods)
            lines.append(f"| {entry['name']} | {entry['support']} | {scores} |")
        shown = "star" if "star" in pooled else next(iter(pooled))
        title = f"{dataset}: {shown}, {len(methods[shown])} folds"
        written.append(plot_confusion_matrix(pooled[shown], out / f"confusion_{dataset}.png", title=title))
    written.append(plot_accuracy(grouped, out / "accuracy.png"))
    written.append(write_text_atomic(out / "results.md", "\n".join(lines) + "\n"))
    return written
