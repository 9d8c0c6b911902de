"""Whether ``torch.compile`` (``train.compile: true``) pays for the STAR stack's training step: the
speed benchmark's crop case (B 256, T 26, I 54, H 128, L 4, ~80% valid steps) as the fused layer runs it
eagerly, against the same model compiled — the first compiled step (compilation included) and the
median of the compiled steps after it, in one process.

    python benchmarks/compile_speed.py [--device cpu|cuda] [--repeats 5] [--out results/compile_speed.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from cropstar.analysis.speed import (
    Case,
    build_model,
    machine_info,
    make_inputs,
    medians,
    time_case,
    training_step,
)
from cropstar.files import write_text_atomic

CASE = Case(name="speed benchmark's crop case", mode="train", batch=256, steps=26, input_size=54, hidden_size=128,
            layers=4)  # fmt: skip


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each model after the first")
    parser.add_argument("--out", type=Path, default=Path("results/compile_speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    eager = build_model("star", CASE, args.device)
    compiled = torch.compile(copy.deepcopy(eager))
    x, mask = make_inputs(CASE, args.device)

    _synchronise(args.device)
    started = time.perf_counter()
    training_step(compiled, x, mask)  # compiles
    _synchronise(args.device)
    first_s = time.perf_counter() - started
    times = medians(time_case(CASE, {"eager": eager, "compiled": compiled}, x, mask, warmup=1,
                              repeats=args.repeats, device=args.device))  # fmt: skip
    record = {
        "machine": machine_info(args.device), "threads": torch.get_num_threads(), "case": CASE.shape,
        "repeats": args.repeats, "first_compiled_step_s": first_s, "eager_step_ms": times["eager"],
        "compiled_step_ms": times["compiled"], "compiled_over_eager": times["compiled"] / times["eager"],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    print(f"first compiled step (compilation included): {first_s:.1f} s")
    print(f"training step: eager (fused layer) {times['eager']:.1f} ms, compiled {times['compiled']:.1f} ms "
          f"({record['compiled_over_eager']:.2f}× the eager time)")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
