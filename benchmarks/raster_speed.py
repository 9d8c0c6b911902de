"""Raster classification speed against the compute bound, and its peak memory.

Builds a synthetic scene (``make_scene`` / ``write_scene``: a folder of per-date band GeoTIFFs, the
scene tiled k × k for larger sizes), stores its cube once as Zarr (``open_cube → to_dataset →
to_zarr``), saves an untrained 4-layer, 64-unit STAR with a per-sequence head (6 bands, 3 × 3
patches, a 10-day grid of 26 steps over the scene's season) and measures:

* the compute bound: the model's multiply-adds per pixel (:func:`cropstar.analysis.budget.parameter_budget`:
  per step W_z, W_x (64 × I) and W_h (64 × 64) of each layer, × 26 steps, plus the head) against
  this machine's float32 matrix-product rate, timed with ``torch.matmul`` at the model's shapes
  (the batch × the fused input projections of the first and the other layers, the recurrent
  product) on as many threads as ``classify`` uses, one torch thread each, as ``classify`` runs its
  batches. A large square product is timed too (the rate the machine reaches at best);
* the model alone (random inputs, the same batches and threads) and reading + preparing alone
  (every block's window, one thread, as ``classify``'s reader) of each source;
* ``classify`` end to end (COG written) on the Zarr cube (the headline), on the GeoTIFF folder and on
  the same GeoTIFFs described by STAC items (``write_stac_items``: an Earth Search v1 style
  ItemCollection JSON, read by the project's STAC reader; its reflectances are checked equal to the
  GeoTIFF folder's before timing), and the previous local scheme (one block at a time, torch's threads
  inside each operation, batches of 8192) on the Zarr cube — each in a fresh process, which also
  gives its peak resident memory above the memory after the imports; the Zarr cube at a second,
  larger size shows that the peak does not follow the scene.

    python benchmarks/raster_speed.py [--size 1024] [--memory-size 2048] [--threads N] [--no-tiff]
        [--no-stac] [--out results/raster_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
LAYERS, HIDDEN, STEPS, PATCH, CLASSES = 4, 64, 26, 3, 8
SEASON = ("2026-03-01", "2026-11-16")  # 26 ten-day steps from March 1st
#: Earth Search v1 asset key of each Sentinel-2 L2A band.
STAC_ASSETS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
    "SCL": "scl",
}  # fmt: skip
STAC_VERSION = "1.0.0"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
PREVIOUS_BATCH = 8192
#: Rows of the products the bound is also timed at (the batch size of earlier versions).
REFERENCE_ROWS = 2048


# ---------------------------------------------------------------------------------------------
# the data and the model
# ---------------------------------------------------------------------------------------------
def build_tiff_scene(work: Path, base: int, tiles: int, seed: int) -> Path:
    """A folder of band GeoTIFFs: a base × base synthetic scene, each file repeated tiles × tiles."""
    import rasterio

    from cropstar.data.synthetic import make_scene, write_scene

    small = work / f"scene{base}"
    if not (small / "cube").exists():
        write_scene(make_scene(size=base, dates=STEPS, seed=seed, season=SEASON), small)
    if tiles == 1:
        return small / "cube"
    cube = work / f"tiff{base * tiles}"
    cube.mkdir(parents=True, exist_ok=True)
    for path in sorted((small / "cube").glob("*.tif")):
        with rasterio.open(path) as src:
            block, profile, tags = src.read(1), src.profile, src.tags()
        profile.update(width=block.shape[1] * tiles, height=block.shape[0] * tiles, driver="GTiff")
        with rasterio.open(cube / path.name, "w", **profile) as dst:
            dst.write(np.tile(block, (tiles, tiles)), 1)
            dst.update_tags(**tags)
    shutil.copy(small / "cube" / "metadata.json", cube / "metadata.json")
    return cube


def write_stac_items(folder: Path, out: Path) -> Path:
    """An ItemCollection JSON at ``out`` of Sentinel-2 L2A STAC 1.0 items, one per acquisition of the
    GeoTIFF folder ``folder`` (its ``metadata.json``), Earth Search v1 style: ``blue`` … ``scl`` assets
    with hrefs relative to ``out``'s folder, ``s2:processing_baseline`` of the scene and
    ``earthsearch:boa_offset_applied: false`` (the files hold the original DNs, so the reader subtracts
    the 1000 DN the GeoTIFFs' tags give)."""
    import pystac

    meta = json.loads((folder / "metadata.json").read_text())
    items = [_stac_item(folder, out.parent, meta, acquisition) for acquisition in meta["acquisitions"]]
    collection = pystac.ItemCollection(items).to_dict(transform_hrefs=False)
    for feature in collection["features"]:
        feature["stac_version"] = STAC_VERSION  # pystac writes its own (newer) version
    out.write_text(json.dumps(collection))
    return out


def _stac_item(folder: Path, base: Path, meta: dict[str, Any], acquisition: dict[str, Any]) -> Any:
    """The ``pystac.Item`` of one acquisition (its band files in ``folder``), asset hrefs relative to
    ``base``."""
    import pystac
    from rasterio.warp import transform_bounds, transform_geom

    when = pd.Timestamp(acquisition["datetime"]).tz_localize("UTC")
    tile = meta["tile"].removeprefix("T")
    assets = {band: _stac_asset(folder / name, band, base) for band, name in acquisition["files"].items()}
    left, bottom, right, top = bounds = assets["B02"][1]
    corners = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    footprint = transform_geom(meta["crs"], "EPSG:4326", {"type": "Polygon", "coordinates": [corners]})
    properties = {
        "platform": "sentinel-2a", "constellation": "sentinel-2", "instruments": ["msi"],
        "s2:product_type": "S2MSI2A", "s2:processing_baseline": meta["processing_baseline"],
        "s2:mgrs_tile": tile, "earthsearch:boa_offset_applied": False,
        "proj:epsg": int(meta["crs"].split(":")[1]), "eo:cloud_cover": 100 * acquisition["cloud_cover"],
    }  # fmt: skip
    item = pystac.Item(
        f"S2A_{tile}_{when:%Y%m%dT%H%M%S}_0_L2A", footprint,
        list(transform_bounds(meta["crs"], "EPSG:4326", *bounds)), when.to_pydatetime(), properties,
        stac_extensions=list(STAC_EXTENSIONS),
    )  # fmt: skip
    for band, (asset, _) in assets.items():
        item.add_asset(STAC_ASSETS[band], asset)
    return item


def _stac_asset(path: Path, band: str, base: Path) -> tuple[Any, tuple[float, float, float, float]]:
    """The ``pystac.Asset`` of one band file (href relative to ``base``; grid, nodata and, for a
    reflectance band, the L2A scale and offset as Earth Search v1 declares them) and the file's bounds."""
    import pystac
    import rasterio

    with rasterio.open(path) as src:
        resolution, bounds = src.res[0], tuple(src.bounds)
        raster = {"nodata": 0, "data_type": src.dtypes[0], "spatial_resolution": resolution}
        fields: dict[str, Any] = {
            "gsd": resolution, "proj:shape": list(src.shape), "proj:transform": list(src.transform)[:6],
            "raster:bands": [raster],
        }  # fmt: skip
    roles = ["data"]
    if band != "SCL":
        raster |= {"scale": 0.0001, "offset": -0.1}
        fields["eo:bands"] = [{"name": band}]
        roles.append("reflectance")
    href = os.path.relpath(path, base)
    return pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF, roles=roles, extra_fields=fields), bounds


def check_same_cube(tiff: Path, stac: Path, window: int = 64) -> None:
    """The STAC-described cube equals the GeoTIFF folder's: the same grid and times, and identical
    reflectances and validity in the top-left ``window``² pixels; no metadata conflict warned."""
    from cropstar.data.cube import open_cube
    from cropstar.errors import MetadataConflictWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataConflictWarning)
        a, b = open_cube(tiff, bands=BANDS), open_cube(stac, bands=BANDS)
    assert a.data.shape == b.data.shape and a.grid.transform == b.grid.transform, "STAC: another grid"
    assert (a.data.time.values == b.data.time.values).all(), "STAC: other times"
    assert [p["boa_offset"] for p in a.attrs["products"]] == [p["boa_offset"] for p in b.attrs["products"]]
    part = {"y": slice(0, window), "x": slice(0, window)}
    np.testing.assert_array_equal(a.data.isel(part).values, b.data.isel(part).values)
    np.testing.assert_array_equal(a.valid.isel(part).values, b.valid.isel(part).values)


def store_zarr(source: Path, out: Path, tiles: int = 1) -> Path:
    """The cube of ``source`` (the model's bands) stored once as Zarr, optionally tiled tiles × tiles."""
    import dask.array as da
    import xarray as xr

    from cropstar.data.cube import Cube, open_cube

    cube = open_cube(source, bands=BANDS)
    if tiles > 1:
        transform = cube.grid.transform

        def tiled(array: xr.DataArray) -> xr.DataArray:
            data = da.tile(array.data, (1,) * (array.ndim - 2) + (tiles, tiles))
            height, width = data.shape[-2:]
            coords = {dim: array[dim] for dim in array.dims[:-2]}
            coords["y"] = transform.f + (np.arange(height) + 0.5) * transform.e
            coords["x"] = transform.c + (np.arange(width) + 0.5) * transform.a
            out = xr.DataArray(data, dims=array.dims, coords=coords, name=array.name, attrs=array.attrs)
            return out.rio.write_crs(cube.crs).rio.write_transform(transform).chunk({"y": 512, "x": 512})

        cube = Cube(tiled(cube.data), tiled(cube.valid), cube.attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v3: fixed-length strings and consolidated metadata
        cube.to_dataset().to_zarr(out, mode="w")
    return out


def save_model(folder: Path, seed: int) -> Path:
    """An untrained 4-layer, 64-unit STAR (per-sequence head) on a 10-day grid of 26 steps."""
    from cropstar.data.class_table import ClassTable
    from cropstar.data.normalisation import Normalisation
    from cropstar.model.architecture import Architecture, build_classifier
    from cropstar.model.artifact import ModelCard, TimeGrid, save_artifact

    torch.manual_seed(seed)
    architecture = Architecture("star", len(BANDS) * PATCH * PATCH, HIDDEN, LAYERS, CLASSES,
                                options={"t_max": STEPS})  # fmt: skip
    dates = tuple(str(d.date()) for d in pd.date_range(SEASON[0], periods=STEPS, freq="10D"))
    card = ModelCard(
        architecture, ClassTable.from_codes([str(1000 + i) for i in range(CLASSES)]), BANDS, PATCH,
        TimeGrid("10D", dates),
        Normalisation(mean=[0.05, 0.08, 0.07, 0.3, 0.2, 0.12], std=[0.03, 0.03, 0.04, 0.1, 0.07, 0.06]),
        name="raster-speed-star",
    )  # fmt: skip
    return save_artifact(folder, build_classifier(architecture), card)


# ---------------------------------------------------------------------------------------------
# the compute bound and the parts
# ---------------------------------------------------------------------------------------------
def _calls(work, stop: threading.Event, counts: list[int], i: int) -> None:
    while not stop.is_set():
        work()
        counts[i] += 1


def concurrently(threads: int, seconds: float, work) -> float:
    """Calls of ``work()`` per second on ``threads`` threads at once, one torch thread each (best of 3)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = 0.0
        for _ in range(3):
            stop, counts = threading.Event(), [0] * threads
            with ThreadPoolExecutor(threads) as pool:
                start = time.perf_counter()
                running = [pool.submit(_calls, work, stop, counts, i) for i in range(threads)]
                time.sleep(seconds)
                stop.set()
                for future in running:
                    future.result()
                best = max(best, sum(counts) / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(before)


def matmul_rates(threads: int, batch: int, input_size: int) -> dict[str, Any]:
    """float32 multiply-adds per second of ``torch.matmul`` at the model's shapes (``threads`` threads
    with one torch thread each) and of a 2048² square product (torch's threads inside it). Each shape
    is timed with ``batch`` rows and with :data:`REFERENCE_ROWS`, and the faster counts: a batch size
    that runs the products slowly must not lower the bound."""
    shapes = {  # (rows, inner, columns) of x @ W.T as the STAR layers compute them
        "input_first": (batch, input_size, 2 * HIDDEN),
        "input_other": (batch, HIDDEN, 2 * HIDDEN),
        "recurrent": (batch, HIDDEN, HIDDEN),
        "head": (batch, HIDDEN, CLASSES),
    }
    rates = {}
    for name, (_, k, n) in shapes.items():
        for m in sorted({batch, REFERENCE_ROWS}):
            a, w = torch.randn(m, k), torch.randn(n, k)
            rate = concurrently(threads, 0.3, lambda a=a, w=w: torch.matmul(a, w.t())) * m * k * n
            rates[name] = max(rates.get(name, 0.0), rate)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    torch.matmul(a, a)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        torch.matmul(a, a)
        calls += 1
    rates["square_2048"] = calls * 2048**3 / (time.perf_counter() - start)
    torch.set_num_threads(before)
    return {"shapes": {k: list(v) for k, v in shapes.items()}, "macs_per_s": rates}


def compute_bound(rates: dict[str, float], input_size: int) -> dict[str, Any]:
    """Pixels per second if the model did nothing but its matrix products at the measured rates."""
    from cropstar.analysis.budget import parameter_budget

    budget = parameter_budget("star", LAYERS, HIDDEN, input_size, CLASSES, seq_len=STEPS, task="per_sequence")
    per_step = {  # multiply-adds per pixel and step of each product (W_z and W_x fused, as the cell does)
        "input_first": input_size * 2 * HIDDEN,
        "input_other": (LAYERS - 1) * HIDDEN * 2 * HIDDEN,
        "recurrent": LAYERS * HIDDEN * HIDDEN,
    }
    head = HIDDEN * CLASSES
    assert sum(per_step.values()) * STEPS + head == budget.macs_per_sequence  # the budget's count
    seconds = sum(STEPS * macs / rates[name] for name, macs in per_step.items()) + head / rates["head"]
    return {
        "macs_per_pixel": budget.macs_per_sequence,
        "macs_per_step": budget.macs_per_step,
        "parameters": budget.parameters,
        "bound_pixels_per_s": 1.0 / seconds,
        "bound_macs_per_s": budget.macs_per_sequence / seconds,
        "square_bound_pixels_per_s": rates["square_2048"] / budget.macs_per_sequence,
    }


def model_alone(
    artifact: Path, threads: int, batch: int, batches_per_thread: int = 12, repeats: int = 3
) -> float:
    """Pixels per second of the model's forward passes (random inputs, 80% valid steps) as classify
    runs them: ``batch`` sequences per pass, ``threads`` threads of one torch thread each, each thread
    warmed by one pass first (its buffers); the median of ``repeats`` timings."""
    from cropstar.infer.predict import predict_inputs
    from cropstar.model.artifact import load_artifact

    loaded = load_artifact(artifact)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, STEPS, loaded.card.architecture.input_size), dtype=np.float32)
    mask = rng.random((batch, STEPS)) < 0.8
    predict_inputs(loaded, x, mask)  # warm-up
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = []
    try:
        with ThreadPoolExecutor(threads) as pool:
            barrier = threading.Barrier(threads)
            list(pool.map(lambda _: (predict_inputs(loaded, x, mask), barrier.wait()), range(threads)))
            for _ in range(repeats):
                start = time.perf_counter()
                list(pool.map(lambda _: predict_inputs(loaded, x, mask), range(threads * batches_per_thread)))
                rates.append(threads * batches_per_thread * batch / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(before)
    return float(np.median(rates))


def reading_alone(artifact: Path, source: Path, block_size: int, max_blocks: int = 4) -> float:
    """Pixels per second of reading and preparing blocks' windows (load_window), one after another."""
    from cropstar.data.cube import Cube, open_cube
    from cropstar.infer.blocks import load_window, tile_blocks
    from cropstar.model.artifact import read_card

    card = read_card(artifact)
    cube = open_cube(source, bands=card.bands)
    cube = Cube(cube.data, cube.valid, cube.attrs)
    blocks = tile_blocks(cube.grid.height, cube.grid.width, block_size)[:max_blocks]
    start = time.perf_counter()
    for block in blocks:
        load_window(card, cube, block)
    return sum(b.size for b in blocks) / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# classify in a fresh process
# ---------------------------------------------------------------------------------------------
def _previous_scheme(loaded, cube, blocks, layout, batch_size, threads):
    """The local default before the block pipeline: one block after another, read with dask's threads,
    torch's threads inside each operation."""
    from cropstar.infer.blocks import classify_block

    for block in blocks:
        yield block, classify_block(loaded, cube, block, layout, batch_size=batch_size)


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(artifact: Path, source: Path, out: Path, threads: int, batch: int, block_size: int,
            previous: bool) -> dict[str, Any]:  # fmt: skip
    """Run in a fresh process: classify ``source`` with ``artifact``; time and peak resident memory."""
    from cropstar.data.cube import open_cube
    from cropstar.infer import raster
    from cropstar.model.artifact import load_artifact

    loaded = load_artifact(artifact)
    cube = open_cube(source, bands=loaded.card.bands)
    torch.set_num_threads(threads)
    input_size = loaded.card.architecture.input_size
    shapes_batch = batch  # the bound at classify's shapes, also for the previous scheme
    bound_before = compute_bound(matmul_rates(threads, shapes_batch, input_size)["macs_per_s"], input_size)
    load_before = os.getloadavg()[0]
    if previous:
        raster._run_here = _previous_scheme  # the runner classify uses locally
        batch = PREVIOUS_BATCH
    baseline = resident_bytes()
    cpu, start = time.process_time(), time.perf_counter()
    report = raster.classify(loaded, cube, out, block_size=block_size, batch_size=batch, threads=threads)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_after = os.getloadavg()[0]
    bound_after = compute_bound(matmul_rates(threads, shapes_batch, input_size)["macs_per_s"], input_size)
    bound = (bound_before["bound_pixels_per_s"] + bound_after["bound_pixels_per_s"]) / 2
    return {
        "pixels": report.width * report.height,
        "blocks": report.blocks,
        "batch_size": batch,
        "seconds": seconds,
        "pixels_per_s": report.width * report.height / seconds,
        "blocks_pixels_per_s": report.pixels_per_second,
        "cpu_seconds": cpu,
        "cores_busy": cpu / seconds,
        "rss_before_mb": baseline / 1e6,
        "rss_peak_mb": peak / 1e6,
        "rss_increase_mb": (peak - baseline) / 1e6,
        "bound_pixels_per_s": [bound_before["bound_pixels_per_s"], bound_after["bound_pixels_per_s"]],
        "fraction_of_bound": report.width * report.height / seconds / bound,
        "load_average_1min": [load_before, load_after],
    }


def run_measure(args: argparse.Namespace, artifact: Path, source: Path, out: Path, previous: bool = False) -> dict:
    out.unlink(missing_ok=True)  # a map or finished blocks left by an earlier run would be resumed
    shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
    command = [sys.executable, __file__, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--block-size", str(args.block_size), "--measure", str(artifact), str(source), str(out)]  # fmt: skip
    if previous:
        command.append("--previous")
    run = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    from cropstar.infer.predict import DEFAULT_BATCH_SIZE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="scene side of the speed runs (pixels)")
    parser.add_argument("--base", type=int, default=512, help="side of the simulated scene that is tiled")
    parser.add_argument("--memory-size", type=int, default=2048, help="a second, larger Zarr scene (0: none)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--no-tiff", action="store_true", help="skip classify on the GeoTIFF folder")
    parser.add_argument("--no-stac", action="store_true", help="skip classify on the STAC items")
    parser.add_argument("--previous", action="store_true", help="also run the previous local scheme (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the scenes and the model here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path("results/raster_speed.json"))
    parser.add_argument("--measure", nargs=3, metavar=("MODEL", "CUBE", "MAP"), help=argparse.SUPPRESS)
    parser.add_argument("--plot", type=Path, metavar="RESULT", help="only draw the chart of a result JSON (beside it)")
    args = parser.parse_args()
    if args.plot:
        print(f"wrote {plot(json.loads(args.plot.read_text()), args.plot.with_suffix('.png'))}")
        return
    if args.measure:
        model, cube, out = (Path(p) for p in args.measure)
        result = measure(model, cube, out, args.threads, args.batch_size, args.block_size, args.previous)
        print(json.dumps(result))
        return
    if args.size % args.base or args.memory_size % args.size:
        parser.error("--size must be a multiple of --base, --memory-size one of --size")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        artifact = save_model(work / "model", args.seed)
        tiff = build_tiff_scene(work, args.base, args.size // args.base, args.seed)
        zarr = work / f"cube{args.size}.zarr"
        if not zarr.exists():
            store_zarr(tiff, zarr)
        stac = None if args.no_stac else write_stac_items(tiff, work / f"stac{args.size}.json")
        if stac is not None:
            check_same_cube(tiff, stac)
        large = work / f"cube{args.memory_size}.zarr" if args.memory_size else None
        if large is not None and not large.exists():
            store_zarr(tiff, large, args.memory_size // args.size)
        print(f"built the scenes and the model in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        input_size = len(BANDS) * PATCH * PATCH
        rates = matmul_rates(args.threads, args.batch_size, input_size)
        bound = compute_bound(rates["macs_per_s"], input_size)
        model_px = model_alone(artifact, args.threads, args.batch_size)
        rates_after = matmul_rates(args.threads, args.batch_size, input_size)  # the machine may be shared
        bound_after = compute_bound(rates_after["macs_per_s"], input_size)
        read_px = {"zarr": reading_alone(artifact, zarr, args.block_size)}
        if not args.no_tiff:
            read_px["tiff"] = reading_alone(artifact, tiff, args.block_size)
        if stac is not None:
            read_px["stac"] = reading_alone(artifact, stac, args.block_size)
        runs = {"zarr": run_measure(args, artifact, zarr, work / "zarr.tif")}
        if not args.no_tiff:
            runs["tiff"] = run_measure(args, artifact, tiff, work / "tiff.tif")
        if stac is not None:
            runs["stac"] = run_measure(args, artifact, stac, work / "stac.tif")
        if large is not None:
            runs["zarr_large"] = run_measure(args, artifact, large, work / "large.tif")
        if args.previous:
            runs["zarr_previous_scheme"] = run_measure(args, artifact, zarr, work / "previous.tif", previous=True)

    model_bound = (bound["bound_pixels_per_s"] + bound_after["bound_pixels_per_s"]) / 2
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "settings": {"size": args.size, "memory_size": args.memory_size, "dates": STEPS, "bands": BANDS,
                     "patch_size": PATCH, "model": f"{LAYERS}-layer {HIDDEN}-unit STAR, per-sequence head",
                     "threads": args.threads, "batch_size": args.batch_size, "block_size": args.block_size},
        "matmul": rates,
        "matmul_after": rates_after,
        "bound": bound,
        "bound_after": bound_after,
        "model_alone_pixels_per_s": model_px,
        "model_alone_fraction_of_bound": model_px / model_bound,
        "reading_alone_pixels_per_s": read_px,
        "classify": runs,
        "fraction_of_bound": runs["zarr"]["fraction_of_bound"],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"wrote {args.out} and {plot(result, args.out.with_suffix('.png'))}")


#: Chart labels of the classify runs.
RUN_LABELS = {"zarr": "Zarr cube", "tiff": "GeoTIFF folder", "stac": "STAC items", "zarr_large": "Zarr, larger",
              "zarr_previous_scheme": "previous scheme"}  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> Path:
    """A bar chart of pixels per second: each classify run, the model alone and reading alone, against
    the compute bound (a line at 100% and the 50% target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bound = (result["bound"]["bound_pixels_per_s"] + result["bound_after"]["bound_pixels_per_s"]) / 2
    bars = [(f"classify, {RUN_LABELS.get(name, name)}", run["pixels_per_s"], run["fraction_of_bound"], "tab:blue")
            for name, run in result["classify"].items()]  # fmt: skip
    bars.append(("model alone", result["model_alone_pixels_per_s"], result["model_alone_fraction_of_bound"],
                 "tab:green"))  # fmt: skip
    bars += [(f"reading alone, {name} (1 core)", rate, None, "tab:gray")
             for name, rate in result["reading_alone_pixels_per_s"].items()]  # fmt: skip
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.5))
    labels, rates, fractions, colours = zip(*bars, strict=True)
    axes.barh(labels, [rate / 1000 for rate in rates], color=colours)
    axes.axvline(bound / 1000, color="black", linestyle="-", label=f"compute bound {bound / 1000:,.1f}k px/s")
    axes.axvline(bound / 2000, color="tab:red", linestyle="--", label="target: 50% of the bound")
    for y, (rate, fraction) in enumerate(zip(rates, fractions, strict=True)):
        if fraction is not None:  # of the bound measured around that run
            axes.text(rate / 1000, y, f" {fraction:.1%}", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("thousand pixels per second")
    settings = result["settings"]
    axes.set_title(f"Raster classification, {settings['size']}² × {settings['dates']} dates, "
                   f"{settings['threads']} threads", fontsize=10)  # fmt: skip
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s, bound, runs = result["settings"], result["bound"], result["classify"]
    m = result["matmul"]["macs_per_s"]
    console = Console(width=132)
    console.print(
        f"{s['model']} on {s['dates']} dates, {len(s['bands'])} bands, {s['patch_size']}×{s['patch_size']} "
        f"patches: {bound['macs_per_pixel']:,} multiply-adds per pixel; {s['threads']} threads, "
        f"batches of {s['batch_size']}, blocks of {s['block_size']}"
    )
    console.print(
        "float32 matmul, G multiply-adds/s: "
        + ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in m.items())
        + f" → bound {bound['bound_pixels_per_s']:,.0f} px/s at the model's shapes, "
        f"{bound['square_bound_pixels_per_s']:,.0f} px/s at the square product's rate"
    )
    table = Table()
    for column in ("run", "pixels", "s", "px/s", "bound px/s", "× bound", "cores busy", "peak RSS +"):
        table.add_column(column, justify="left" if column == "run" else "right")
    names = {"zarr": f"classify, Zarr {s['size']}²", "tiff": f"classify, GeoTIFFs {s['size']}²",
             "stac": f"classify, STAC items {s['size']}²",
             "zarr_large": f"classify, Zarr {s['memory_size']}²",
             "zarr_previous_scheme": f"previous scheme, Zarr {s['size']}²"}  # fmt: skip
    for key, run in runs.items():
        table.add_row(
            names[key], f"{run['pixels']:,}", f"{run['seconds']:.0f}", f"{run['pixels_per_s']:,.0f}",
            " – ".join(f"{b:,.0f}" for b in run["bound_pixels_per_s"]), f"{run['fraction_of_bound']:.1%}",
            f"{run['cores_busy']:.2f}", f"{run['rss_increase_mb']:,.0f} MB",
        )  # fmt: skip
    table.add_row(
        "model alone", "", "", f"{result['model_alone_pixels_per_s']:,.0f}",
        f"{bound['bound_pixels_per_s']:,.0f} – {result['bound_after']['bound_pixels_per_s']:,.0f}",
        f"{result['model_alone_fraction_of_bound']:.1%}", "", "",
    )  # fmt: skip
    for key, rate in result["reading_alone_pixels_per_s"].items():
        table.add_row(f"reading + preparing alone, {key}", "", "", f"{rate:,.0f}", "", "", "1", "")
    console.print(table)


if __name__ == "__main__":
    main()
