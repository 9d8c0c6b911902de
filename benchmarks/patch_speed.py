"""Patch-extraction throughput against a plain numpy copy of the same output.

Extracts every pixel's P × P patch sequence from a synthetic (T, C, Y, X) float32 cube, in memory
and dask-backed, and times a plain ``np.copy`` of an array the size of the output in the same
process: the ratio says how close extraction gets to moving the bytes once.

    python benchmarks/patch_speed.py [--size 512] [--dates 26] [--bands 6] [--out results/patch_speed.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from cropstar.data.patches import extract_patches


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dates", type=int, default=26)
    parser.add_argument("--bands", type=int, default=6)
    parser.add_argument("--patch-size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/patch_speed.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cube = rng.random((args.dates, args.bands, args.size, args.size), dtype=np.float32)
    rows, cols = (g.ravel() for g in np.meshgrid(np.arange(args.size), np.arange(args.size), indexing="ij"))
    p = args.patch_size
    output_bytes = len(rows) * args.dates * args.bands * p * p * 4
    reference = np.empty((len(rows), args.dates, args.bands, p, p), dtype=np.float32)

    copy_s = best_of(args.repeats, lambda: np.copyto(reference, reference[::-1]))
    memory_s = best_of(args.repeats, lambda: extract_patches(cube, rows, cols, p))
    lazy = xr.DataArray(da.from_array(cube, chunks=(-1, -1, 256, 256)), dims=("time", "band", "y", "x"))
    lazy_s = best_of(args.repeats, lambda: extract_patches(lazy, rows, cols, p))

    result = {
        "pixels": len(rows),
        "output_mb": output_bytes / 1e6,
        "numpy_copy_s": copy_s,
        "extract_in_memory_s": memory_s,
        "extract_dask_s": lazy_s,
        "patches_per_s_in_memory": len(rows) / memory_s,
        "patches_per_s_dask": len(rows) / lazy_s,
        "copy_over_extract_in_memory": copy_s / memory_s,
        "copy_over_extract_dask": copy_s / lazy_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{len(rows):,} patches of {args.dates}×{args.bands}×{p}×{p} ({output_bytes / 1e6:.0f} MB)")
    print(f"numpy copy of the output     {copy_s * 1e3:8.1f} ms")
    print(f"extract (in memory)          {memory_s * 1e3:8.1f} ms   {result['patches_per_s_in_memory']:,.0f} patches/s"
          f"   copy/extract = {result['copy_over_extract_in_memory']:.2f}")
    print(f"extract (dask-backed)        {lazy_s * 1e3:8.1f} ms   {result['patches_per_s_dask']:,.0f} patches/s"
          f"   copy/extract = {result['copy_over_extract_dask']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
