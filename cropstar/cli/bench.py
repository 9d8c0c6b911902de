"""Doors onto the benchmarks: ``cropstar bench speed`` (cropstar.analysis.speed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropstar.cli.common import app, console, csv_list, one_line_errors, stage_progress

bench_app = typer.Typer(
    name="bench",
    no_args_is_help=True,
    help="Speed and memory benchmarks against torch's own layers; each reads nothing but its options and "
    "writes JSON and a chart.",
)
app.add_typer(bench_app, name="bench")


@bench_app.command("speed")
@one_line_errors
def speed(
    quick: Annotated[
        bool, typer.Option("--quick", help="Few repetitions (smoke runs, CI); memory only for the targets.")
    ] = False,
    out: Annotated[Path, typer.Option(help="JSON result; the bar chart goes beside it (.png).")] = Path(
        "results/rnn_speed.json"
    ),
    threads: Annotated[int | None, typer.Option(help="torch threads. \\[default: every core]")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (synchronised around every timing).")] = "cpu",
    cells: Annotated[
        str,
        typer.Option(
            help="Comma-separated models: star (required), torch_lstm, torch_gru, and cropstar's "
            "lstm, lstm_wf, vrnn, gru, rhn (make_rnn)."
        ),
    ] = "star,torch_lstm,torch_gru",
    cases: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated cases: train, infer, infer_b4096, pmnist_train, pmnist_infer. "
            "\\[default: all]"
        ),
    ] = None,
    memory: Annotated[bool, typer.Option(help="Measure the peak memory of training steps.")] = True,
    hidden_size: Annotated[int | None, typer.Option(help="H of every case. \\[default: 128]")] = None,
    layers: Annotated[int | None, typer.Option(help="L of every case. \\[default: 4]")] = None,
    batch: Annotated[int | None, typer.Option(hidden=True, help="B of every case (tests).")] = None,
    steps: Annotated[int | None, typer.Option(hidden=True, help="T of every case (tests).")] = None,
    input_size: Annotated[int | None, typer.Option(hidden=True, help="I of every case (tests).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights and inputs.")] = 0,
) -> None:
    """Time cropstar's deep STAR stack against torch.nn.LSTM and nn.GRU at equal depth and width
   : a training step and inference at (B=256, T=26, I=54, H=128, L=4), inference at B=4096,
    pixel MNIST (B=100, T=784, I=1); each model's peak training-step memory in a fresh process; the
    issue's targets, met or not.

    Reads nothing but its options.
    Writes the result as JSON to OUT (machine, settings, every timing, medians, ratios, memory, targets)
    and a bar chart of ms per model and case beside it (OUT with .png).
    """
    from cropstar.analysis.speed import (
        SpeedSettings,
        run_speed_benchmark,
        select_cases,
        speed_tables,
        write_speed_report,
    )

    settings = SpeedSettings(
        models=csv_list(cells) or [],
        cases=select_cases(
            csv_list(cases),
            batch=batch,
            steps=steps,
            input_size=input_size,
            hidden_size=hidden_size,
            layers=layers,
        ),
        device=device,
        threads=threads,
        quick=quick,
        memory=memory,
        seed=seed,
    )
    with stage_progress("runs", transient=True) as report:
        result = run_speed_benchmark(settings, progress=report)
    json_path, png_path = write_speed_report(result, out)
    for table in speed_tables(result):
        console.print(table)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(
        "STAR runs with a (B, T) mask of ~80% valid steps; torch's LSTM / GRU take no mask. "
        f"wrote {json_path} and {png_path}"
    )
