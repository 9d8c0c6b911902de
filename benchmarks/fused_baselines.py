"""Training-step speed of every dense cell's fused layer against the same stack running the cells' own
per-step loop (``rnn.fused = False``, the reference), in one process, timed interleaved with
:func:`cropstar.analysis.speed.time_case` (median of the rounds after a warm-up; the mask has ~80%
valid steps). Two shapes: the speed benchmark's crop case (B 256, T 26, I 54, H 128, L 4) and the
crops validation sweep's deep models (B 250, T 26, I 54, H 32, L 8).

    python benchmarks/fused_baselines.py [--threads N] [--repeats N] [--out docs/results/fused_baselines.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cropstar.analysis.speed import Case, build_model, machine_info, make_inputs, medians, time_case
from cropstar.files import write_text_atomic
from cropstar.nn.cells import DENSE_CELLS

CASES = (
    Case(name="speed benchmark's crop case", mode="train", batch=256, steps=26, input_size=54, hidden_size=128,
         layers=4),
    Case(name="crops sweep, 8 layers", mode="train", batch=250, steps=26, input_size=54, hidden_size=32, layers=8),
)  # fmt: skip


def measure(case: Case, cell: str, repeats: int) -> dict[str, float]:
    """Median ms of a training step, fused and looped, and the loop's time over the fused layer's."""
    fused = build_model(cell, case)
    looped = copy.deepcopy(fused)
    looped.fused = False
    x, mask = make_inputs(case)
    times = medians(time_case(case, {"fused": fused, "loop": looped}, x, mask, warmup=3, repeats=repeats))
    return {"fused_ms": times["fused"], "loop_ms": times["loop"], "speedup": times["loop"] / times["fused"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("results/fused_baselines.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for case in CASES:
        for cell in DENSE_CELLS:
            print(f"{case.name}: {cell}", file=sys.stderr)
            results.append(
                {"case": case.name, **case.shape, "cell": cell, **measure(case, cell, args.repeats)}
            )
    record = {"machine": machine_info(), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    table = Table(title=f"training step, fused layer against the cells' loop ({record['threads']} threads)")
    for column in ("case", "cell", "fused ms", "loop ms", "loop / fused"):
        table.add_column(column, justify="left" if column in ("case", "cell") else "right")
    for row in results:
        table.add_row(
            row["case"],
            row["cell"],
            f"{row['fused_ms']:.1f}",
            f"{row['loop_ms']:.1f}",
            f"{row['speedup']:.2f}×",
        )
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
