"""Peak memory of `ingest` on a synthetic cube several times larger than a memory budget.

Builds a large scene on disk by tiling a synthetic scene k × k times (every COG and the field
polygons, translated tile by tile), then ingests a share of its fields — spread over the whole
scene, so every block is read — in a fresh process, and reports:

* the cube's size as float32 in memory (T × C × H × W × 4 bytes) against the budget;
* the peak of traced allocations during `ingest` (tracemalloc: numpy, dask, zarr buffers);
* the process's peak resident memory above its resident memory after the imports.

    python benchmarks/ingest_memory.py [--tile 256] [--tiles 8] [--dates 12] [--budget-mb 384] \
        [--malloc-arenas 2] [--out results/ingest_memory.json]

GDAL's block cache is capped (``GDAL_CACHEMAX``, 64 MB by default here; GDAL's own default is 5% of
RAM) and glibc's malloc arenas limited to two (``MALLOC_ARENA_MAX=2``: with one arena per thread,
freed chunk buffers fragment and resident memory grows with the scene; ``--malloc-arenas 0`` leaves
glibc's default, to measure what the limit saves).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from shapely import affinity


def build_mosaic(out: Path, tile: int, tiles: int, dates: int, seed: int) -> tuple[Path, Path, int]:
    """A (tile·tiles)² scene: each band file of a synthetic scene repeated tiles × tiles times."""
    from cropstar.data.synthetic import make_scene, write_scene

    small = out / "small"
    write_scene(make_scene(size=tile, dates=dates, seed=seed), small)
    cube = out / "cube"
    cube.mkdir(parents=True)
    for path in sorted((small / "cube").glob("*.tif")):
        with rasterio.open(path) as src:
            block, profile, tags = src.read(1), src.profile, src.tags()
        profile.update(width=block.shape[1] * tiles, height=block.shape[0] * tiles, driver="GTiff")
        with rasterio.open(cube / path.name, "w", **profile) as dst:
            dst.write(np.tile(block, (tiles, tiles)), 1)
            dst.update_tags(**tags)
    shutil.copy(small / "cube" / "metadata.json", cube / "metadata.json")
    fields = gpd.read_file(small / "fields.geojson").to_crs("EPSG:32632")
    pieces = []
    for i in range(tiles):
        for j in range(tiles):
            moved = fields.copy()
            moved["geometry"] = moved.geometry.apply(affinity.translate, xoff=j * tile * 10.0, yoff=-i * tile * 10.0)
            moved["field_id"] = [f"{i}-{j}-{f}" for f in fields["field_id"]]
            pieces.append(moved)
    mosaic = gpd.GeoDataFrame(pd.concat(pieces, ignore_index=True), crs=fields.crs)
    path = out / "fields.gpkg"
    mosaic.to_file(path)
    return cube, path, len(mosaic)


def measure(cube: Path, fields: Path, out: Path, share: float, seed: int) -> dict:
    """Run in a fresh process: ingest a random share of the fields, tracing memory."""
    import tracemalloc

    from cropstar.data.cube import open_cube
    from cropstar.data.fields import read_fields
    from cropstar.data.ingest import ingest

    polygons = read_fields(fields, label_column="crop_code")
    rng = np.random.default_rng(seed)
    polygons.frame = polygons.frame[rng.random(len(polygons.frame)) < share].reset_index(drop=True)
    opened = open_cube(cube, chunks=256)
    size = opened.data.shape
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start = time.perf_counter()
    report = ingest(opened, polygons, "crop_code", out, name_column="crop", shard_size=2048)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "cube_shape": list(size),
        "cube_float32_mb": float(np.prod(size)) * 4 / 1e6,
        "samples": report.samples,
        "seconds": seconds,
        "traced_peak_mb": traced_peak / 1e6,
        "rss_after_imports_mb": baseline / 1e6,
        "rss_peak_mb": peak / 1e6,
        "rss_increase_mb": (peak - baseline) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--share", type=float, default=0.1, help="share of the fields ingested")
    parser.add_argument("--budget-mb", type=float, default=384.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gdal-cache-mb", type=int, default=64, help="GDAL_CACHEMAX for the ingest process")
    parser.add_argument("--malloc-arenas", type=int, default=2,
                        help="MALLOC_ARENA_MAX for the ingest process (0: glibc's default, one arena per thread)")
    parser.add_argument("--out", type=Path, default=Path("results/ingest_memory.json"))
    parser.add_argument("--measure", nargs=3, metavar=("CUBE", "FIELDS", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]), Path(args.measure[2]),
                                 args.share, args.seed)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cube, fields, n_fields = build_mosaic(work, args.tile, args.tiles, args.dates, args.seed)
        # GDAL's block cache (MB) and glibc's per-thread malloc arenas, which otherwise fragment
        env = {**os.environ, "GDAL_CACHEMAX": str(args.gdal_cache_mb)}
        env.pop("MALLOC_ARENA_MAX", None)
        if args.malloc_arenas > 0:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arenas)
        run = subprocess.run(
            [sys.executable, __file__, "--share", str(args.share), "--seed", str(args.seed),
             "--measure", str(cube), str(fields), str(work / "dataset")],
            check=True, capture_output=True, text=True, env=env,
        )
        result = json.loads(run.stdout.strip().splitlines()[-1])
    result.update(fields_in_scene=n_fields, budget_mb=args.budget_mb, malloc_arena_max=args.malloc_arenas or None,
                  gdal_cache_mb=args.gdal_cache_mb,
                  cube_over_budget=result["cube_float32_mb"] / args.budget_mb,
                  under_budget=result["rss_increase_mb"] <= args.budget_mb)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    t, c, h, w = result["cube_shape"]
    print(f"cube {t} dates × {c} bands × {h} × {w} px = {result['cube_float32_mb']:.0f} MB as float32 "
          f"({result['cube_over_budget']:.1f}× the {args.budget_mb:.0f} MB budget)")
    print(f"ingested {result['samples']:,} samples in {result['seconds']:.0f} s")
    print(f"peak traced allocations {result['traced_peak_mb']:.0f} MB; peak RSS {result['rss_peak_mb']:.0f} MB, "
          f"{result['rss_increase_mb']:.0f} MB above the {result['rss_after_imports_mb']:.0f} MB after imports "
          f"→ {'under' if result['under_budget'] else 'OVER'} budget")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
