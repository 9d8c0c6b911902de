"""Doors onto the gradient analysis: ``cropstar simulate`` and ``cropstar budget``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cropstar.cli.common import app, console, csv_list, one_line_errors, stage_progress


@app.command()
@one_line_errors
def simulate(
    cells: Annotated[
        str | None, typer.Option(help="Comma-separated dense cells: star, vrnn, lstm, lstm_wf, gru, rhn.")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="Depth L of the lattice. \\[default: 12]")] = None,
    steps: Annotated[int | None, typer.Option(help="Sequence length T. \\[default: 30]")] = None,
    runs: Annotated[
        int | None, typer.Option(help="Runs averaged per lattice cell (paper: 10000). \\[default: 200]")
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help="final (loss on h_T^L), all (on every top state), or final,all. \\[default: final]"
        ),
    ] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden units per layer. \\[default: 64]")] = None,
    input_size: Annotated[int | None, typer.Option(help="Size of the input process. \\[default: 1]")] = None,
    alpha: Annotated[float | None, typer.Option(help="Input autocorrelation α. \\[default: 0.5]")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. \\[default: 0]")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda. \\[default: cpu]")] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(help="Runs vectorised at once (results do not depend on it). \\[default: 25]"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (e.g. configs/simulate.yaml); options override it.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/simulation"),
) -> None:
    """Simulate gradient magnitudes across the depth × time lattice (paper §3.1, Fig. 2, 6, 7).

    Reads nothing but its options. Writes to OUT: heatmap_{params,hidden,params_std,hidden_std}_{loss}.png,
    arrays/{cell}_{loss}_{statistic}.csv, simulation_{loss}.json, summary.csv, jacobian.{csv,json}
    (singular values of J and H at zero state, zero bias, orthogonal weights) and config.json.
    """
    from cropstar.analysis.report import SimulationConfig, write_simulation_report

    overrides = {
        "cells": csv_list(cells),
        "layers": layers,
        "steps": steps,
        "runs": runs,
        "loss": csv_list(loss),
        "hidden_size": hidden_size,
        "input_size": input_size,
        "alpha": alpha,
        "seed": seed,
        "device": device,
        "chunk_size": chunk_size,
    }
    if config is not None:
        settings = SimulationConfig.from_yaml(config, **overrides)
    else:
        settings = SimulationConfig(**{k: v for k, v in overrides.items() if v is not None})
    simulations = [f"{cell} ({loss})" for loss in settings.loss for cell in settings.cells]
    total, finished = len(simulations) * settings.runs, dict.fromkeys(simulations, 0)
    with stage_progress("runs", inner=simulations) as report:

        def runs_done(simulation: str, done: int, runs: int) -> None:
            """One bar per simulation, and one over all of them (whose line a log shows, with an ETA)."""
            finished[simulation] = done
            report(simulation, done, runs)
            report("all simulations", sum(finished.values()), total, info=f"at {simulation}")

        report("all simulations", 0, total)
        result = write_simulation_report(settings, out, progress=runs_done)

    table = Table(title=f"Gradient flow, L={settings.layers}, T={settings.steps}, {settings.runs} runs")
    for column in ("cell", "loss", "bottom/top (depth)", "first/last (time)", "corner", "std/mean"):
        table.add_column(column, justify="right")
    for row in result["summary"]:
        table.add_row(
            row["cell"],
            row["loss"],
            f"{row['depth_ratio']:.3g}",
            f"{row['time_ratio']:.3g}",
            f"{row['corner_ratio']:.3g}",
            f"{row['mean_normalised_std']:.3f}",
        )
    console.print(table)
    jac = Table(title="Jacobian singular values at zero state, zero bias, orthogonal weights")
    for column in ("cell", "J min", "J mean", "J max", "H min", "H mean", "H max"):
        jac.add_column(column, justify="right")
    for row in result["jacobian"]:
        jac.add_row(
            row["cell"], *(f"{row[k]:.3f}" for k in ("J_min", "J_mean", "J_max", "H_min", "H_mean", "H_max"))
        )
    console.print(jac)
    console.print(f"wrote {out}/ (heat maps: {out}/heatmap_params_{settings.loss[0]}.png)")


@app.command()
@one_line_errors
def budget(
    cells: Annotated[str, typer.Option(help="Comma-separated cells (any make_rnn name).")] = "star,lstm,vrnn",
    hidden_size: Annotated[int, typer.Option(help="Hidden units (conv: filters) per layer.")] = 128,
    input_size: Annotated[int, typer.Option(help="Input features (conv: channels) per step.")] = 1,
    classes: Annotated[int, typer.Option(help="Number of classes of the linear head.")] = 10,
    depths: Annotated[str, typer.Option(help="Comma-separated depths.")] = "1,2,4,8,16",
    seq_len: Annotated[int, typer.Option(help="Steps per sequence (pixel MNIST: 784).")] = 784,
    task: Annotated[str, typer.Option(help="per_sequence or per_timestep head.")] = "per_sequence",
    out: Annotated[Path | None, typer.Option(help="Also write budget.csv and budget.json here.")] = None,
) -> None:
    """Parameters and multiply-adds per step and per sequence over depths (paper Table 2).

    Reads nothing; prints a table (counts include the classifier head and one bias per gate) and,
    with --out, writes OUT/budget.csv and OUT/budget.json.
    """
    from cropstar.analysis.budget import budget_table
    from cropstar.errors import InputError
    from cropstar.files import write_csv_atomic, write_text_atomic

    try:
        depth_list = [int(d) for d in csv_list(depths) or []]
    except ValueError:
        raise InputError(f"--depths must be comma-separated integers, got {depths!r}") from None
    rows = budget_table(
        csv_list(cells) or [], hidden_size, input_size, classes, depth_list, seq_len=seq_len, task=task
    )  # type: ignore[arg-type]
    table = Table(
        title=f"Budget: H={hidden_size}, input {input_size}, {classes} classes, T={seq_len}, {task}"
    )
    for column in ("cell", "layers", "parameters", "MACs / step", "MACs / sequence"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.cell,
            str(row.num_layers),
            f"{row.parameters:,}",
            f"{row.macs_per_step:,}",
            f"{row.macs_per_sequence:,}",
        )
    console.print(table)
    if out is not None:
        dicts = [r.to_dict() for r in rows]
        write_text_atomic(out / "budget.json", json.dumps(dicts, indent=2))
        write_csv_atomic(out / "budget.csv", dicts)
        console.print(f"wrote {out}/budget.csv and budget.json")
