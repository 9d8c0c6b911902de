"""Tables and plots of a depth sweep: ``results.csv``, ``results.md`` (test accuracy per
cell × depth, mean ± std over seeds, failures marked), accuracy against depth, the per-layer gradient
norms at initialisation and over the first epoch of the deepest models (the paper's Figure 3a/3b)
and their training losses (Figure 3c)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropstar.files import write_csv_atomic, write_text_atomic
from cropstar.validate.depth_sweep import RunResult, results_rows


def accuracy_table(results: list[RunResult]) -> str:
    """Markdown: a row per cell, a column per depth, test accuracy mean ± std over seeds; ✗ n/m where
    n of the m seeds failed to train."""
    cells = list(dict.fromkeys(r.cell for r in results))
    depths = sorted({r.layers for r in results})
    lines = ["| cell | " + " | ".join(f"L = {d}" for d in depths) + " |", "|---|" + "---:|" * len(depths)]
    for cell in cells:
        row = []
        for depth in depths:
            runs = [r for r in results if r.cell == cell and r.layers == depth]
            if not runs:
                row.append("")
                continue
            accuracy = np.array([r.test_accuracy for r in runs])
            text = f"{accuracy.mean():.3f}" + (f" ± {accuracy.std():.3f}" if len(runs) > 1 else "")
            failed = sum(r.failed for r in runs)
            row.append(text + (f" ✗ {failed}/{len(runs)}" if failed else ""))
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: list[RunResult], out: Path, title: str) -> list[Path]:
    """``results.csv``, ``results.md`` and the plots into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv_atomic(out / "results.csv", results_rows(results))]
    text = f"# {title}\n\nTest accuracy at the epoch of the lowest validation loss (✗: failed to train).\n\n"
    written.append(write_text_atomic(out / "results.md", text + accuracy_table(results)))
    written += [_accuracy_plot(results, out), _gradient_plots(results, out), _loss_plot(results, out)]
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path


def _deepest(results: list[RunResult]) -> list[RunResult]:
    """The first seed of the deepest model of each cell."""
    deepest = max(r.layers for r in results)
    return [r for r in results if r.layers == deepest and r.seed == min(q.seed for q in results)]


def _accuracy_plot(results: list[RunResult], out: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for cell in dict.fromkeys(r.cell for r in results):
        depths = sorted({r.layers for r in results if r.cell == cell})
        runs = [[r.test_accuracy for r in results if r.cell == cell and r.layers == d] for d in depths]
        axes.errorbar(depths, [np.mean(a) for a in runs], yerr=[np.std(a) for a in runs], marker="o",
                      capsize=3, label=cell)  # fmt: skip
    axes.set(xlabel="layers", ylabel="test accuracy", title="Accuracy against depth", ylim=(0, 1))
    axes.set_xscale("log", base=2)
    axes.legend()
    return _save(figure, out / "accuracy_vs_depth.png")


def _gradient_plots(results: list[RunResult], out: Path) -> Path:
    plt = _pyplot()
    deepest = _deepest(results)
    figure, axes = plt.subplots(1, 1 + len(deepest), figsize=(4 + 3.2 * len(deepest), 3.6), squeeze=False)
    for run in deepest:
        axes[0, 0].plot(np.arange(1, run.layers + 1), run.grad_at_init, marker="o", label=run.cell)
    axes[0, 0].set(xlabel="layer (1 = bottom)", ylabel="‖∂L/∂θ_l‖", title="At initialisation", yscale="log")
    axes[0, 0].legend()
    for ax, run in zip(axes[0, 1:], deepest, strict=True):
        norms = np.log10(np.maximum(np.asarray(run.grad_first_epoch).T, 1e-12))
        image = ax.imshow(norms, aspect="auto", origin="lower", cmap="viridis",
                          extent=(0, norms.shape[1], 0.5, run.layers + 0.5))  # fmt: skip
        ax.set(xlabel="step of epoch 1", ylabel="layer", title=f"{run.cell}: log10 ‖∂L/∂θ_l‖")
        figure.colorbar(image, ax=ax)
    return _save(figure, out / "gradient_norms.png")


def _loss_plot(results: list[RunResult], out: Path) -> Path:
    """The training loss of the deepest models (Figure 3c), then per cell the validation loss of every
    depth against the epoch (first seed): where a deep stack sits on its plateau, and when it leaves."""
    plt = _pyplot()
    cells = list(dict.fromkeys(r.cell for r in results))
    first_seed = min(r.seed for r in results)
    figure, axes = plt.subplots(1, 1 + len(cells), figsize=(6 + 3.6 * len(cells), 4), squeeze=False)
    for run in _deepest(results):
        axes[0, 0].plot(run.loss_steps, run.train_loss, label=f"{run.cell} L{run.layers}")
    axes[0, 0].set(xlabel="training step", ylabel="training loss", title="Training loss, deepest models")
    axes[0, 0].legend()
    for ax, cell in zip(axes[0, 1:], cells, strict=True):
        runs = sorted((r for r in results if r.cell == cell and r.seed == first_seed), key=lambda r: r.layers)
        for run in runs:
            ax.plot(np.arange(1, len(run.val_loss) + 1), run.val_loss, marker=".", label=f"L{run.layers}")
        ax.set(xlabel="epoch", ylabel="validation loss", title=f"{cell}: validation loss")
        ax.legend()
    return _save(figure, out / "training_loss.png")
