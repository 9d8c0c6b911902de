"""The gradient-analysis report behind ``cropstar simulate``: lattice simulations for several cells,
the Jacobian probe, and their files (heat-map PNGs, CSV and JSON arrays, a summary table)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cropstar.analysis.jacobian import jacobian_singular_values
from cropstar.analysis.lattice import GradientSimulation, simulate_gradients
from cropstar.analysis.plots import STATISTICS, plot_lattice_heatmaps
from cropstar.files import read_yaml_mapping, write_csv_atomic, write_text_atomic
from cropstar.nn.cells import DENSE_CELLS


class SimulationConfig(BaseModel):
    """Settings of ``cropstar simulate`` (also read from YAML, e.g. configs/simulate.yaml)."""

    model_config = ConfigDict(extra="forbid")

    cells: list[str] = Field(default_factory=lambda: ["star", "vrnn", "lstm", "lstm_wf", "gru"], min_length=1)
    layers: int = Field(12, ge=1)
    steps: int = Field(30, ge=1)
    hidden_size: int = Field(64, ge=1)
    input_size: int = Field(1, ge=1)
    runs: int = Field(200, ge=1)
    loss: list[Literal["final", "all"]] = Field(default_factory=lambda: ["final"], min_length=1)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 0
    device: str = "cpu"
    chunk_size: int | None = Field(None, ge=1)

    @field_validator("cells")
    @classmethod
    def _known_cells(cls, cells: list[str]) -> list[str]:
        unknown = [c for c in cells if c not in DENSE_CELLS]
        if unknown:
            raise ValueError(f"unknown cell(s) {', '.join(unknown)}; choose from {', '.join(DENSE_CELLS)}")
        return cells

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @classmethod
    def from_yaml(cls, path: Path, **overrides: object) -> SimulationConfig:
        """Values from a YAML file, then the non-None ``overrides``."""
        data = read_yaml_mapping(path, "simulation config")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def summarise(sim: GradientSimulation) -> dict[str, float | str]:
    """Ratios that read a heat map of the parameter-gradient magnitude:

    ``depth_ratio`` bottom layer / top layer (each averaged over steps): > 1 amplifies towards
    shallow layers, < 1 attenuates; ``time_ratio`` first step / last step (each averaged over
    layers); ``corner_ratio`` bottom-first / top-last cell; ``max_over_min`` the spread; and the
    mean normalised std over runs (run-to-run variability, paper Fig. 7).
    """
    p = sim.params
    return {
        "cell": sim.cell,
        "loss": sim.loss,
        "depth_ratio": float(p[0].mean() / p[-1].mean()),
        "time_ratio": float(p[:, 0].mean() / p[:, -1].mean()),
        "corner_ratio": float(p[0, 0] / p[-1, -1]),
        "max_over_min": float(p.max() / p.min()),
        "mean_normalised_std": float(sim.params_std.mean()),
    }


def write_simulation_report(
    config: SimulationConfig, out: Path, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, list[dict]]:
    """Run every (loss, cell) simulation and the Jacobian probe; write the report into ``out``.

    Files: ``heatmap_{statistic}_{loss}.png``; ``arrays/{cell}_{loss}_{statistic}.csv`` (rows = layers
    bottom first, columns = steps); ``simulation_{loss}.json``; ``summary.csv``; ``jacobian.json`` and
    ``jacobian.csv``. ``progress(task, done, total)`` reports runs per simulation.
    Returns the summary and Jacobian rows.
    """
    arrays = out / "arrays"
    arrays.mkdir(parents=True, exist_ok=True)
    summary: list[dict] = []
    for loss in config.loss:
        sims = []
        for cell in config.cells:
            task = f"{cell} ({loss})"
            sim = simulate_gradients(
                cell, config.layers, config.steps, config.hidden_size, config.runs, loss, config.alpha,
                config.seed, input_size=config.input_size, chunk_size=config.chunk_size, device=config.device,
                progress=(lambda done, total, task=task: progress(task, done, total)) if progress else None,
            )
            sims.append(sim)
            summary.append(summarise(sim))
            for statistic in STATISTICS:
                np.savetxt(arrays / f"{cell}_{loss}_{statistic}.csv", getattr(sim, statistic), delimiter=",", fmt="%.6e")
        for statistic in STATISTICS:
            plot_lattice_heatmaps(sims, out / f"heatmap_{statistic}_{loss}.png", statistic)
        write_text_atomic(out / f"simulation_{loss}.json", json.dumps([s.to_dict() for s in sims]))
    jacobians = []
    for cell in config.cells:
        spectrum = jacobian_singular_values(cell, config.hidden_size, seed=config.seed)
        jacobians.append(spectrum.summary())
    write_text_atomic(out / "jacobian.json", json.dumps(jacobians, indent=2))
    write_csv_atomic(out / "jacobian.csv", jacobians)
    write_csv_atomic(out / "summary.csv", summary)
    write_text_atomic(out / "config.json", config.model_dump_json(indent=2))
    return {"summary": summary, "jacobian": jacobians}
