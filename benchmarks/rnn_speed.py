"""Speed and peak training-step memory of cropstar's deep STAR stack against torch.nn.LSTM and nn.GRU,
all in one process at equal depth and width; the same code as ``cropstar bench speed``
(:mod:`cropstar.analysis.speed`, whose docstring says what is timed and how memory is measured).

Cases: a training step and inference at (B=256, T=26, I=54, H=128, L=4), inference at B=4096, and
pixel MNIST (B=100, T=784, I=1, H=128, L=4), training step and inference. Prints the median ms per
model, STAR's speed-ups (model ms / STAR ms), the peak memory of a training step (each model in a
fresh process) and the issue's targets; writes JSON to --out and a bar chart beside it (.png).

    python benchmarks/rnn_speed.py [--quick] [--threads N] [--device cpu|cuda] [--cells star,torch_lstm,...]
                                   [--cases train,infer,...] [--no-memory] [--out results/rnn_speed.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from cropstar.analysis.speed import (
    DEFAULT_CASES,
    DEFAULT_MODELS,
    SpeedSettings,
    run_speed_benchmark,
    select_cases,
    speed_tables,
    write_speed_report,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke runs, CI)")
    parser.add_argument("--out", type=Path, default=Path("results/rnn_speed.json"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    models = "star (required), torch_lstm, torch_gru, lstm, lstm_wf, vrnn, gru, rhn"
    parser.add_argument("--cells", default=",".join(DEFAULT_MODELS), help=f"models: {models}")
    parser.add_argument("--cases", default=None, help=f"of {', '.join(c.name for c in DEFAULT_CASES)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = SpeedSettings(
        models=[m.strip() for m in args.cells.split(",") if m.strip()],
        cases=select_cases(args.cases.split(",") if args.cases else None,
                           hidden_size=args.hidden_size, layers=args.layers),
        device=args.device, threads=args.threads, quick=args.quick, memory=not args.no_memory, seed=args.seed,
    )  # fmt: skip

    def progress(stage: str, done: int, total: int) -> None:
        print(f"\r{stage}: {done}/{total}   ", end="" if done < total else "\n", file=sys.stderr, flush=True)

    result = run_speed_benchmark(settings, progress=progress)
    json_path, png_path = write_speed_report(result, args.out)
    console = Console(width=140)
    for table in speed_tables(result):
        console.print(table)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print("STAR runs with a (B, T) mask of ~80% valid steps; torch's LSTM / GRU take no mask.")
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
