"""Sweeps of one suite side by side (e.g. one per gate-bias initialisation): test accuracy mean ± std
over seeds per cell × depth, a table (comparison.md, comparison.csv) and accuracy against depth with
error bars, one panel per cell (comparison.png), read from each sweep's results.csv (written by
`cropstar validate`); and the ratio of the bottom layer's to the top layer's gradient norm at
initialisation and at the end of the first epoch (the flatness of the paper's Figure 3a / 3b),
geometric mean over seeds, from each run's runs/*.json; and when the deepest models trained best:
the median best epoch, how many runs were best at their last epoch (still improving when the budget
ended) and, with ``--classes K``, the median epoch at which the validation loss first fell below
90% of chance (ln K): when the stack left its plateau.

    python scripts/compare_sweeps.py --out docs/results/validate/crops-b-init \\
        "gate bias -1=results/validate/init/crops-b-star-minus1" \\
        "zero=results/validate/init/crops-b-star-zero" "chrono (T_max 26)=results/validate/init/crops-b-star-chrono"
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def load(sweeps: list[str], classes: int | None = None) -> pd.DataFrame:
    """Every run of the sweeps ``LABEL=FOLDER``, with a column ``init`` holding LABEL."""
    frames = []
    for item in sweeps:
        label, _, folder = item.partition("=")
        if not folder:
            raise SystemExit(f"give each sweep as LABEL=FOLDER, got {item!r}")
        runs = pd.read_csv(Path(folder) / "results.csv")
        ratios = [_bottom_over_top(Path(folder), row) for row in runs.itertuples()]
        runs["bottom_over_top"] = [at_init for at_init, _ in ratios]
        runs["bottom_over_top_epoch1"] = [after_epoch for _, after_epoch in ratios]
        epochs = [_epochs(Path(folder), row, classes) for row in runs.itertuples()]
        runs["at_last_epoch"] = [at_last for at_last, _ in epochs]
        runs["left_plateau"] = [left for _, left in epochs]
        frames.append(runs.assign(init=label))
    return pd.concat(frames, ignore_index=True)


def _ratio(norms: list[float]) -> float:
    return norms[0] / norms[-1] if norms and norms[-1] > 0 else math.nan


def _bottom_over_top(folder: Path, row: object) -> tuple[float, float]:
    """‖∂L/∂θ‖ of the bottom layer over the top layer's, for one run: at initialisation and at the last
    step recorded in the first epoch."""
    path = folder / "runs" / f"{row.cell}-L{row.layers}-s{row.seed}.json"  # type: ignore[attr-defined]
    if not path.exists():  # a sweep whose runs were not kept: its accuracies only
        return math.nan, math.nan
    result = json.loads(path.read_text())["result"]
    first_epoch = result.get("grad_first_epoch") or [[]]
    return _ratio(result["grad_at_init"]), _ratio(first_epoch[-1])


def _epochs(folder: Path, row: object, classes: int | None) -> tuple[float, float]:
    """Whether a run was best at its last epoch (1.0 / 0.0), and the first epoch (1-based) whose
    validation loss fell below 0.9 ln ``classes`` (inf: never; NaN: unknown)."""
    path = folder / "runs" / f"{row.cell}-L{row.layers}-s{row.seed}.json"  # type: ignore[attr-defined]
    if not path.exists():
        return math.nan, math.nan
    losses = json.loads(path.read_text())["result"].get("val_loss") or []
    if not losses:
        return math.nan, math.nan
    at_last = float(row.best_epoch == len(losses)) if hasattr(row, "best_epoch") else math.nan  # type: ignore[attr-defined]
    if classes is None:
        return at_last, math.nan
    below = [epoch for epoch, loss in enumerate(losses, start=1) if loss < 0.9 * math.log(classes)]
    return at_last, float(below[0]) if below else math.inf


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (population) and count of the test accuracy per init × cell × depth, failed runs and
    the bottom / top gradient ratio at initialisation."""
    grouped = runs.groupby(["init", "cell", "layers"], sort=False)
    table = grouped["test_accuracy"].agg(["mean", "count"])
    table["std"] = grouped["test_accuracy"].std(ddof=0)  # population std, as results.md gives it
    table["failed"] = grouped["failed"].sum()
    for column in ("bottom_over_top", "bottom_over_top_epoch1"):
        table[column] = grouped[column].apply(_geometric_mean)
    if "best_epoch" in runs:
        table["best_epoch_median"] = grouped["best_epoch"].median()
    table["at_last_epoch"] = grouped["at_last_epoch"].sum(min_count=1)
    table["left_plateau_median"] = grouped["left_plateau"].median()
    return table.reset_index()


def _geometric_mean(values: pd.Series) -> float:
    return math.exp(values.map(math.log).mean())


def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2g}"


def markdown(table: pd.DataFrame) -> str:
    depths = sorted(table["layers"].unique())
    lines = ["| init | cell | " + " | ".join(f"L = {d}" for d in depths) + " |",
             "|---|---|" + "---:|" * len(depths)]  # fmt: skip
    for (init, cell), rows in table.groupby(["init", "cell"], sort=False):
        by_depth = rows.set_index("layers")
        cells = []
        for d in depths:
            if d not in by_depth.index:
                cells.append("–")
                continue
            row = by_depth.loc[d]
            text = f"{row['mean']:.3f} ± {0.0 if pd.isna(row['std']) else row['std']:.3f}"
            cells.append(text + (f" ✗ {int(row['failed'])}/{int(row['count'])}" if row["failed"] else ""))
        lines.append(f"| {init} | {cell} | " + " | ".join(cells) + " |")
    seeds = int(table["count"].max())
    deepest = max(depths)
    gradients = ["", f"Bottom / top layer gradient norm, L = {deepest} (geometric mean over seeds):", "",
                 "| init | cell | at initialisation | after the first epoch |", "|---|---|---:|---:|"]  # fmt: skip
    for row in table[table["layers"] == deepest].itertuples():
        gradients.append(f"| {row.init} | {row.cell} | {_number(row.bottom_over_top)} | "
                         f"{_number(row.bottom_over_top_epoch1)} |")  # fmt: skip
    deep = [d for d in depths if d >= 8] or [deepest]
    epochs = ["", (f"When the models of {' and '.join(map(str, deep))} layers trained best: the median best "
                   "epoch, the runs best at their last epoch (still improving), the median epoch their "
                   "validation loss first fell below 90% of chance (∞: never; –: not measured):"), "",
              "| init | cell | layers | best epoch | best at the last epoch | left the plateau |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in table[table["layers"].isin(deep)].itertuples():
        best = getattr(row, "best_epoch_median", math.nan)
        last = "–" if pd.isna(row.at_last_epoch) else f"{int(row.at_last_epoch)}/{int(row.count)}"
        plateau = row.left_plateau_median
        left = "–" if pd.isna(plateau) else "∞" if math.isinf(plateau) else f"{plateau:g}"
        epochs.append(f"| {row.init} | {row.cell} | {row.layers} | {'–' if pd.isna(best) else f'{best:g}'} | "
                      f"{last} | {left} |")  # fmt: skip
    return (
        f"Test accuracy, mean ± std over {seeds} seed(s) (✗: runs that failed to train).\n\n"
        + "\n".join(lines + gradients + epochs)
        + "\n"
    )


def plot(table: pd.DataFrame, path: Path) -> None:
    cells = list(dict.fromkeys(table["cell"]))
    columns = min(3, len(cells))
    rows_of_panels = -(-len(cells) // columns)
    figure, panels = plt.subplots(rows_of_panels, columns, figsize=(4 * columns, 3.2 * rows_of_panels),
                                  sharey=True, squeeze=False)  # fmt: skip
    for axes, cell in zip(panels.flat, cells):
        for init, rows in table[table["cell"] == cell].groupby("init", sort=False):
            axes.errorbar(rows["layers"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3,
                          label=str(init))  # fmt: skip
        axes.set(xlabel="layers", title=cell, ylim=(0, 1))
        axes.set_xticks(sorted(table["layers"].unique()))
        axes.legend(fontsize=7)
    for axes in panels[:, 0]:
        axes.set_ylabel("test accuracy")
    for axes in list(panels.flat)[len(cells) :]:
        axes.set_visible(False)
    figure.suptitle("Accuracy against depth (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="LABEL=FOLDER of a `cropstar validate` output")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--classes", type=int, help="classes of the task: chance loss ln K for the plateau")
    args = parser.parse_args()
    table = summarise(load(args.sweeps, args.classes))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "comparison.csv", index=False, float_format="%.4f")
    (args.out / "comparison.md").write_text(markdown(table))
    plot(table, args.out / "comparison.png")
    print(markdown(table))


if __name__ == "__main__":
    main()
