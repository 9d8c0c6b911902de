"""The measuring steps of scripts/gpu_check.sh, one sub-command each, every one writing its own JSON:

    env       torch, CUDA and the card (exit 3 where CUDA is asked for and torch sees none)
    scene     a synthetic scene of SIZE² pixels × 26 dates as cube COGs: a cropstar synth scene of
              TILE² tiled (SIZE/TILE)² times (cropstar synth at 2048² takes several minutes)
    train     steps per second of `cropstar train` (the library's train()) on the device, with AMP
              on CUDA, and a short CPU reference
    classify  `cropstar classify` (the library's classify()) of the scene on the device, timed with
              its I/O (opening the cube, reading, writing the COG), and a CPU reference on a strip
    report    everything in one JSON, with an estimate for a whole Sentinel-2 tile (10 980²)

Run by scripts/gpu_check.sh; `python scripts/gpu_check.py SUB-COMMAND --help` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

#: Side of a Sentinel-2 tile in 10 m pixels.
TILE_SIDE = 10_980


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# env
# ---------------------------------------------------------------------------------------------
def env(args: argparse.Namespace) -> int:
    """torch, CUDA and the card into ``args.out``; 3 where ``args.device`` is cuda and CUDA is absent."""
    import torch

    from cropstar import __version__

    available = torch.cuda.is_available()
    record: dict[str, Any] = {
        "device_asked": args.device,
        "cuda_available": available,
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if available else None,
        "cropstar": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "cropstar_no_cpp": os.environ.get("CROPSTAR_NO_CPP"),
        "gpus": [
            {"name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())
        ] if available else [],
    }  # fmt: skip
    record["card"] = record["gpus"][0]["name"] if record["gpus"] else None
    _write(args.out, record)
    print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}), cudnn {record['cudnn']}, "
          f"torch.cuda.is_available(): {available}; card: {record['card']}")  # fmt: skip
    if args.device.startswith("cuda") and not available:
        why = "this torch is a CPU build" if torch.version.cuda is None else "torch sees no GPU"
        print(
            f"CUDA is not available ({why}): nothing to measure on a GPU. Install a CUDA build of torch "
            "(README, 'On a GPU machine'), or run scripts/gpu_check.sh --dry-run to test the steps on the CPU.",
            file=sys.stderr,
        )
        return 3
    return 0


# ---------------------------------------------------------------------------------------------
# scene
# ---------------------------------------------------------------------------------------------
def scene(args: argparse.Namespace) -> int:
    """A SIZE² × DATES scene: cropstar synth's scene of TILE² repeated (SIZE/TILE)² times, written as
    cropstar synth writes it (cube/ COGs, metadata.json; fields.geojson of the first tile)."""
    import numpy as np

    from cropstar.data.synthetic import make_scene, write_scene

    if args.size % args.tile:
        raise SystemExit(f"--size {args.size} must be a multiple of --tile {args.tile}")
    started = time.perf_counter()
    base = make_scene(size=args.tile, dates=args.dates, seed=args.seed)
    made = time.perf_counter()
    n = args.size // args.tile
    tiled = dataclasses.replace(  # only what write_scene writes is tiled
        base,
        reflectance=np.tile(base.reflectance, (1, 1, n, n)),
        scl=np.tile(base.scl, (1, n, n)),
        labels=np.tile(base.labels, (n, n)),
        field_ids=np.tile(base.field_ids, (n, n)),
    )
    del base
    write_scene(tiled, args.out)
    done = time.perf_counter()
    bytes_on_disk = sum(f.stat().st_size for f in (args.out / "cube").iterdir())
    record = {
        "size": args.size, "tile": args.tile, "dates": len(tiled.times), "bands": len(tiled.bands) + 1,
        "how": f"cropstar synth's scene of {args.tile}² (make_scene, seed {args.seed}) tiled {n} × {n}, "
        "written by write_scene as `cropstar synth` writes it (one COG per date and band, DEFLATE)",
        "seconds_make": made - started, "seconds_write": done - made, "cube_mb": bytes_on_disk / 1e6,
    }  # fmt: skip
    _write(args.record, record)
    print(f"scene {args.size}² × {len(tiled.times)} dates in {done - started:.0f} s ({bytes_on_disk / 1e6:.0f} MB)")
    return 0


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def _train_run(data: Path, run: Path, device: str, amp: bool, steps: int, shape: dict[str, int]) -> dict[str, Any]:
    """One ``train()`` run of ``steps`` optimisation steps; steps/s from the batches' completion times
    within each epoch (the progress callback reads the running loss, which waits for the GPU)."""
    from cropstar.train.config import load_config
    from cropstar.train.trainer import train

    overrides = [
        f"model.hidden_size={shape['hidden_size']}", f"model.num_layers={shape['layers']}",
        f"batch_size={shape['batch']}", f"steps={steps}", f"device={device}", f"amp={str(amp).lower()}",
    ]  # fmt: skip
    stamps: list[tuple[int, float]] = []

    def progress(stage: str, done: int, total: int, **metrics: Any) -> None:
        if stage == "train":
            stamps.append((done, time.perf_counter()))

    started = time.perf_counter()
    result = train(load_config(None, overrides), data, run, progress=progress)
    seconds = time.perf_counter() - started
    # intervals between consecutive batches of one epoch, leaving out the first epoch's first five
    intervals = [
        b[1] - a[1] for i, (a, b) in enumerate(pairwise(stamps))
        if b[0] == a[0] + 1 and i >= 5
    ]  # fmt: skip
    median = statistics.median(intervals) if intervals else None
    best = result.best
    card = json.loads((result.model / "model.json").read_text())
    return {
        "device": card["training"].get("device_name", card["training"]["device"]),
        "amp": amp,
        "steps": len(stamps),
        "epochs": len(result.history),
        "seconds_total": seconds,
        "seconds_per_step_median": median,
        "steps_per_second": None if median is None else 1 / median,
        "samples_per_second": None if median is None else shape["batch"] / median,
        "timed_intervals": len(intervals),
        "val_accuracy": best.get("val_accuracy"),
        "train_loss": best.get("train_loss"),
        "notes": result.notes,
    }


def train_speed(args: argparse.Namespace) -> int:
    """The training runs (device, device with AMP on CUDA, CPU reference) into ``args.out``."""
    from cropstar.data.dataset import open_dataset

    reader = open_dataset(args.data)
    _, steps, channels, patch, _ = reader.shape
    shape = {"batch": args.batch, "steps": steps, "input_size": channels * patch * patch,
             "hidden_size": args.hidden_size, "layers": args.layers}  # fmt: skip
    record: dict[str, Any] = {"data": str(args.data), "train_samples": reader.splits["train"], "shape": shape,
                              "model": "STAR", "runs": {}}  # fmt: skip
    variants = [("device", args.device, False, args.steps)]
    if args.device.startswith("cuda"):
        variants.append(("device_amp", args.device, True, args.steps))
    variants.append(("cpu_reference", "cpu", False, args.cpu_steps))
    failed = 0
    for name, device, amp, steps in variants:
        try:
            record["runs"][name] = _train_run(args.data, args.work / name, device, amp, steps, shape)
        except Exception as error:  # noqa: BLE001  (the other runs still count; recorded, exit 1)
            record["runs"][name] = {"error": f"{type(error).__name__}: {error}"}
            failed = 1
        _write(args.out, record)
        print(f"train {name}: {json.dumps(record['runs'][name], default=str)}")
    runs = record["runs"]
    if runs.get("device", {}).get("steps_per_second") and runs.get("cpu_reference", {}).get("steps_per_second"):
        record["device_over_cpu"] = runs["device"]["steps_per_second"] / runs["cpu_reference"]["steps_per_second"]
    if runs.get("device_amp", {}).get("steps_per_second") and runs["device"].get("steps_per_second"):
        record["amp_over_float32"] = runs["device_amp"]["steps_per_second"] / runs["device"]["steps_per_second"]
    _write(args.out, record)
    return failed


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------
def _classify_run(cube_path: Path, out: Path, device: str, rows: int | None, batch_size: int | None) -> dict[str, Any]:
    """``classify`` with the packaged model, timed from opening the cube to the written COG."""
    import torch

    from cropstar.data.cube import open_cube
    from cropstar.data.features import bands_to_read
    from cropstar.device import resolve_device
    from cropstar.infer.predict import DEFAULT_BATCH_SIZE
    from cropstar.infer.raster import CUDA_BATCH_SIZE, classify
    from cropstar.model.artifact import read_card
    from cropstar.model.default_model import default_model_path

    artifact = default_model_path()
    card = read_card(artifact)
    torch_device = resolve_device(device)
    started = time.perf_counter()
    torch.zeros(1, device=torch_device).sum().item()  # the CUDA context: once per process, not per scene
    context = time.perf_counter() - started
    batch_size = batch_size or (CUDA_BATCH_SIZE if torch_device.type == "cuda" else DEFAULT_BATCH_SIZE)
    started = time.perf_counter()
    cube = open_cube(cube_path, bands=bands_to_read(card.bands))
    if rows is not None:
        cube = cube.isel(y=slice(0, rows))
    report = classify(artifact, cube, out, device=torch_device, batch_size=batch_size, restart=True)
    seconds = time.perf_counter() - started
    pixels = report.width * report.height
    return {
        "device": report.device, "width": report.width, "height": report.height,
        "dates": len(cube.times), "seconds_with_io": seconds, "seconds_blocks": report.seconds,
        "pixels_per_second_with_io": pixels / seconds, "pixels_per_second_blocks": report.pixels_per_second,
        "blocks": report.blocks, "batch_size": batch_size, "map_mb": out.stat().st_size / 1e6,
        "seconds_device_start": context,
        "model": f"packaged {card.name}: {card.architecture.cell} {card.architecture.num_layers} × "
        f"{card.architecture.hidden_size}",
        "note": "with I/O: from opening the cube to the written COG; the cube's files were just written, so "
        "they were read from the page cache; the device's start (CUDA context) is apart",
    }  # fmt: skip


def classify_speed(args: argparse.Namespace) -> int:
    """The scene classified on the device (whole) and on the CPU (a strip of rows) into ``args.out``."""
    import torch

    record: dict[str, Any] = {"cube": str(args.cube)}
    failed = 0
    for name, device, rows in (("device", args.device, None), ("cpu_reference", "cpu", args.cpu_rows)):
        threads = torch.get_num_threads()
        try:
            record[name] = _classify_run(args.cube, args.work / f"{name}.tif", device, rows, args.batch_size)
        except Exception as error:  # noqa: BLE001  (the other run still counts; recorded, exit 1)
            record[name] = {"error": f"{type(error).__name__}: {error}"}
            failed = 1
        finally:
            torch.set_num_threads(threads)
        _write(args.out, record)
        print(f"classify {name}: {json.dumps(record[name], default=str)}")
    device, cpu = record["device"], record["cpu_reference"]
    if "error" not in device and "error" not in cpu:
        record["device_over_cpu_blocks"] = device["pixels_per_second_blocks"] / cpu["pixels_per_second_blocks"]
    _write(args.out, record)
    return failed


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _bench_summary(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures of ``cropstar bench speed``'s JSON that matter here."""
    if bench is None:
        return None
    return {
        "file": "bench_speed.json",
        "cases": {c["name"]: {"shape": c["shape"], "median_ms": c["median_ms"], "star_speedup": c["star_speedup"],
                              "star_memory_fraction": c["star_memory_fraction"]} for c in bench["cases"]},
        "targets": [{k: t[k] for k in ("name", "description", "value", "met")} for t in bench["targets"]],
        "implementations": bench.get("implementations"),
    }  # fmt: skip


def tile_estimate(classify: dict[str, Any] | None) -> dict[str, Any] | None:
    """Seconds for one Sentinel-2 tile (10 980² pixels, same dates) from the scene's figure with I/O,
    scaled by pixel count."""
    run = (classify or {}).get("device")
    if not run or "error" in run:
        return None
    pixels = run["width"] * run["height"]
    factor = TILE_SIDE**2 / pixels
    return {
        "pixels": TILE_SIDE**2,
        "dates": run["dates"],
        "seconds": run["seconds_with_io"] * factor,
        "minutes": run["seconds_with_io"] * factor / 60,
        "from": f"{run['width']}×{run['height']} in {run['seconds_with_io']:.1f} s with I/O, × {factor:.2f}",
        "note": "an estimate, not a measurement: the scene's time scaled by pixel count; a real tile's "
        "reading (JP2 or COG, local or remote), its cloud-free share and the model change it",
    }


def report(args: argparse.Namespace) -> int:
    """Everything in ``args.folder`` into one JSON (``args.out``); 1 if a step failed."""
    folder: Path = args.folder
    steps = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines() if line.strip()]
    env_record = _read(folder / "env.json") or {}
    classify_record = _read(folder / "classify.json")
    failed = [s["name"] for s in steps if s["rc"] != 0]
    record = {
        "check": "scripts/gpu_check.sh",
        "mode": "cuda" if args.device.startswith("cuda") else "dry run on the CPU (tiny sizes; tests the script)",
        "card": env_record.get("card"),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": sum(s["seconds"] for s in steps if not s.get("background")),
        "steps": steps,
        "failed_steps": failed,
        "env": env_record,
        "tests": _read(folder / "tests.json"),
        "bench_speed": _bench_summary(_read(folder / "bench_speed.json")),
        "train": _read(folder / "train.json"),
        "scene": _read(folder / "scene.json"),
        "classify": classify_record,
        "tile_estimate": tile_estimate(classify_record),
    }
    _write(args.out, record)
    print(f"wrote {args.out}: card {record['card']}; "
          + (f"failed: {', '.join(failed)}" if failed else "every step ran"))  # fmt: skip
    estimate = record["tile_estimate"]
    if estimate:
        print(f"one Sentinel-2 tile (10 980², {estimate['dates']} dates): about {estimate['minutes']:.1f} min "
              f"(estimate: {estimate['from']})")  # fmt: skip
    return 1 if failed else 0


def tests_summary(args: argparse.Namespace) -> int:
    """pytest's closing line (passed / skipped / failed counts) from its log into ``args.out``."""
    lines = [line for line in args.log.read_text().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}
    _write(args.out, {"command": "python -m pytest -q tests/nn/test_cuda.py", "summary": last, "counts": counts})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=env)
    p = sub.add_parser("scene")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--dates", type=int, default=26)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--record", type=Path, required=True)
    p.set_defaults(run=scene)
    p = sub.add_parser("train")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--cpu-steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=train_speed)
    p = sub.add_parser("classify")
    p.add_argument("--cube", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cpu-rows", type=int, default=128)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=classify_speed)
    p = sub.add_parser("tests")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=tests_summary)
    p = sub.add_parser("report")
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=report)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
