"""Doors onto the validation suites: ``cropstar validate``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from cropstar.cli.common import app, console, csv_list, err_console, one_line_errors, stage_progress
from cropstar.errors import InputError


@app.command("validate")
@one_line_errors
def validate(
    suite: Annotated[str, typer.Argument(help="mnist, pmnist, crops, gestures, or real (real crop data).")],
    cells: Annotated[
        str | None, typer.Option(help="Comma-separated dense cells, e.g. star,lstm,lstm_wf,vrnn,rhn,gru.")
    ] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated depths, e.g. 1,2,4,8,12.")] = None,
    budget: Annotated[str, typer.Option(help="smoke (about a minute), cpu (about an hour) or full.")] = "smoke",
    seeds: Annotated[int, typer.Option(help="Seeds per cell and depth.")] = 1,
    epochs: Annotated[int | None, typer.Option(help="Override the budget's epochs.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="mnist, pmnist, gestures: the folder of the four MNIST IDX files (gestures: or a "
                          "20BN-Jester v1 root); crops: a WorldCereal parquet (default: a synthetic scene)."),
    ] = None,
    task: Annotated[str, typer.Option(help="crops: per_sequence (task B) or per_timestep (task A).")] = "per_sequence",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/validate"),
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
    bias_init: Annotated[
        str | None,
        typer.Option(help="Memory-gate bias initialisation: chrono, zero or constant. \\[default: the budget's]"),
    ] = None,
    gate_bias: Annotated[
        float | None,
        typer.Option(help="The bias of the gate weighing the new input (STAR's b_k; gates weighing the old "
                          "state get its negative), e.g. -1; implies --bias-init constant."),
    ] = None,
    t_max: Annotated[
        int | None,
        typer.Option(help="chrono's T_max; implies --bias-init chrono. \\[default: the suite's sequence length]"),
    ] = None,
    datasets: Annotated[
        str | None,
        typer.Option(help="real: comma-separated data sets (france-2023, corsica-2022, east-africa-2017, "
                          "ucr-crop; france-2023-s1-indices and corsica-2022-s1-indices add Sentinel-1 "
                          "VV / VH and NDVI, NDRE, NDMI to the bands). \\[default: all]"),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(help="real: comma-separated methods (star, star_refit: STAR trained again on the "
                          "training and validation samples, star_ensemble: seeds, star_bagged: seeds and "
                          "field folds, lstm, gru, random_forest, nearest_neighbour). \\[default: all]"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="real: the training config of the neural methods. \\[default: the budget's]")
    ] = None,
    report_only: Annotated[
        bool, typer.Option(help="real: write the report of the runs already in OUT/runs, training none.")
    ] = False,
) -> None:
    """Depth sweep of the paper's experiments: every cell × depth × seed trained with the suite's
    protocol, the epoch of the lowest validation loss scored on the test split.

    Reads the suite's data from --data (crops: builds its dataset once into OUT/data). Writes OUT/results.csv and results.md (test accuracy per cell ×
    depth, failures marked), accuracy_vs_depth.png, gradient_norms.png (per-layer gradient norms at
    initialisation and over the first epoch of the deepest models) and training_loss.png; each run
    is kept in OUT/runs/, so a rerun resumes.
    """
    from cropstar.train.distributed import World
    from cropstar.train.trainer import resolve_device
    from cropstar.validate import budget_for, load_suite, sweep, write_report
    from cropstar.validate.budgets import check_init

    if suite == "real":
        _validate_real(budget, data, out, datasets, methods, config, report_only)
        return

    if gate_bias is not None and bias_init is None:
        bias_init = "constant"
    if t_max is not None and bias_init is None:
        bias_init = "chrono"
    chosen = budget_for(suite, budget, epochs=epochs, bias_init=bias_init, t_max=t_max)
    if gate_bias is not None or bias_init is not None:  # the budget's gate_bias goes with its own bias_init
        chosen = replace(chosen, gate_bias=gate_bias)
    check_init(chosen)
    if device.partition(":")[0] not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    torch_device = resolve_device(device, World())
    cell_list = csv_list(cells) or list(chosen.cells)
    try:
        depths = [int(d) for d in csv_list(layers)] if layers else list(chosen.layers)
    except ValueError:
        raise typer.BadParameter(f"--layers must be comma-separated integers, got {layers!r}") from None
    suite_data = load_suite(suite, chosen, data, cache=out / "data", task=task)
    err_console.print(
        f"{suite_data.name} ({chosen.name} budget): {len(suite_data.train)} training sequences of {suite_data.steps} steps, "
        f"{len(cell_list)} cells × {len(depths)} depths × {seeds} seed(s) on {torch_device}", highlight=False,
    )  # fmt: skip
    with stage_progress(inner={"epochs"}) as show:

        def report(done: int, total: int, epoch: int, epochs_total: int, label: str) -> None:
            show("runs", done, total, info=label)
            show("epochs", epoch, epochs_total, info=label)

        results = sweep(suite_data, chosen, cell_list, depths, seeds, out, progress=report, device=torch_device)
    init = chosen.init_label(suite_data.steps)
    written = write_report(results, out, f"{suite_data.name}: depth sweep ({chosen.name} budget, {init})")
    console.print((out / "results.md").read_text(), highlight=False)
    console.print(f"wrote {', '.join(p.name for p in written)} to {out}", highlight=False)


def _validate_real(
    budget: str,
    data: Path | None,
    out: Path,
    datasets: str | None,
    methods: str | None,
    config: Path | None,
    report_only: bool,
) -> None:
    """``cropstar validate real``: :mod:`cropstar.validate.real` and its report."""
    from cropstar.validate.real import BUDGETS, DATASETS, METHODS, run_suite
    from cropstar.validate.real_report import write_real_report

    if budget not in BUDGETS:
        raise typer.BadParameter(f"--budget must be one of {', '.join(BUDGETS)} for the real suite, got {budget!r}")
    chosen = BUDGETS[budget] if config is None else replace(BUDGETS[budget], config=str(config))
    shared = data or Path("..") / "shared" / "data"
    with stage_progress() as show:
        runs = run_suite(
            shared, out, chosen, csv_list(datasets) or list(DATASETS), csv_list(methods) or list(METHODS),
            progress=lambda done, total, label: show("runs", done, total, info=label), train_missing=not report_only,
        )  # fmt: skip
    if not runs:
        raise InputError(f"no finished runs of these data sets and methods in {out / 'runs'}")
    written = write_real_report(runs, out)
    console.print((out / "results.md").read_text(), highlight=False)
    console.print(f"wrote {', '.join(p.name for p in written)} to {out}", highlight=False)
