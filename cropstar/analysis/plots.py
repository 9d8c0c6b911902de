"""Figures of the gradient analysis: lattice heat maps (paper Fig. 2, 6, 7) and per-layer gradient
norms during training (Fig. 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from cropstar.analysis.lattice import GradientSimulation
from cropstar.analysis.training_gradients import LayerGradientTrace
from cropstar.errors import InputError

STATISTICS = {
    "params": "mean ‖∂L/∂w‖ per lattice cell",
    "hidden": "mean ‖∂L/∂h‖ per lattice cell",
    "params_std": "std/mean of ‖∂L/∂w‖ over runs",
    "hidden_std": "std/mean of ‖∂L/∂h‖ over runs",
}


def plot_lattice_heatmaps(
    simulations: Sequence[GradientSimulation], path: Path, statistic: str = "params"
) -> Path:
    """One heat map per cell of ``statistic`` over the lattice (time →, layer ↑), saved as PNG.

    Means share one logarithmic colour scale across cells so amplification and attenuation
    compare at a glance; normalised standard deviations use a shared linear scale.
    """
    if statistic not in STATISTICS:
        raise InputError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    arrays = [getattr(sim, statistic) for sim in simulations]
    is_std = statistic.endswith("_std")
    if is_std:
        norm = plt.Normalize(vmin=0.0, vmax=max(float(a.max()) for a in arrays))
    else:
        positive = np.concatenate([a[a > 0] for a in arrays])
        norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    fig, axes = plt.subplots(
        1, len(arrays), figsize=(3.0 * len(arrays) + 1.2, 3.6), squeeze=False, sharey=True,
        layout="constrained",
    )
    image = None
    for ax, sim, values in zip(axes[0], simulations, arrays):
        shown = np.where(values > 0, values, np.nan) if not is_std else values
        image = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis", norm=norm,
                          extent=(0.5, sim.num_steps + 0.5, 0.5, sim.num_layers + 0.5))
        ax.set_title(sim.cell)
        ax.set_xlabel("time step t")
    axes[0][0].set_ylabel("layer l")
    first = simulations[0]
    fig.suptitle(
        f"{STATISTICS[statistic]} — loss on {'final top state' if first.loss == 'final' else 'all top states'}, "
        f"{first.runs} runs, H={first.hidden_size}"
    )
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_gradients(traces: Mapping[str, LayerGradientTrace], path: Path) -> Path:
    """Fig. 3: (a) per-layer norms at initialisation, (b) mean norm over the first steps, (c) loss."""
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, trace in traces.items():
        layers = np.arange(1, trace.norms.shape[1] + 1)
        ax_a.semilogy(layers, np.maximum(trace.at_init, 1e-30), marker="o", label=name)
        ax_b.semilogy(np.maximum(trace.norms.mean(axis=1), 1e-30), label=name)
        ax_c.plot(trace.loss, label=name)
    ax_a.set(xlabel="layer", ylabel="‖∂L/∂θ_l‖", title="(a) gradient norm per layer at init")
    ax_b.set(xlabel="training step", ylabel="mean per-layer ‖∂L/∂θ_l‖", title="(b) gradient norm, first steps")
    ax_c.set(xlabel="training step", ylabel="loss", title="(c) training loss")
    ax_a.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
