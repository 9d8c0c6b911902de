"""Classifying a whole scene block by block into a Cloud-Optimized GeoTIFF (DESIGN.md "classify" and
"Scale-out"), resumably, on this machine or on a dask.distributed cluster.

Each block (:func:`~cropstar.infer.blocks.classify_block`) reads its window of the cube with a halo,
prepares it the way the model reads it and runs the model; memory follows the block size, not the
scene. A finished block is saved at once in a work folder beside the output::

    MAP.tif.parts/manifest.json        what the blocks are made of: model and cube fingerprints,
                                       output bands, grid, block size (a rerun with others refuses)
    MAP.tif.parts/blocks/000012.npy    the bands (count, h, w) of block 12, written atomically

so an interrupted run resumes with the missing blocks only. At the end the blocks are assembled into
the COG (:func:`~cropstar.infer.cog.write_cog`), renamed into place, and the work folder is removed.

Here (no scheduler) the blocks run as a pipeline: one thread reads and prepares the next block's
window while the current block's batches run through the model on every core, one torch thread per
batch — independent single-threaded forward passes keep a small CPU busier than torch's threads
inside each small operation of the recurrence, and reading costs no extra time while the model runs.

Scale-out: with a scheduler the same block function runs as dask tasks. The model travels to each
worker once, in a worker plugin that rebuilds it there (:class:`ModelOnWorkers`); each block task pins
torch to one thread, so a worker with N threads classifies N blocks at a time on N cores. The cube
goes to each worker once: a lazy cube as its task graph, the workers then reading its files from the
same paths or URLs as this process (a shared file system or object store); an in-memory cube whole.
Workers send their blocks back; only this process writes files.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.base
import numpy as np
import torch
from distributed.diagnostics.plugin import WorkerPlugin

from cropstar import __version__
from cropstar.data.cube import Cube
from cropstar.data.harmonise import Grid
from cropstar.device import describe_device, resolve_device
from cropstar.errors import InputError
from cropstar.files import write_text_atomic
from cropstar.infer.blocks import (
    Block,
    MapLayout,
    Window,
    classify_block,
    classify_window,
    load_window,
    tile_blocks,
)
from cropstar.infer.cog import write_cog
from cropstar.infer.predict import DEFAULT_BATCH_SIZE, model_device, prepare_cube
from cropstar.infer.stac_items import write_map_items
from cropstar.model.architecture import build_classifier
from cropstar.model.artifact import LoadedModel, load_artifact

if TYPE_CHECKING:
    from distributed import Client

#: ``progress(stage, done, total, **info)``: stage "blocks" (info: computed, resumed, pixels_per_second)
#: after each block, then "writing" while the COG is assembled.
Progress = Callable[..., None]
#: Model threads per thread reading the next window in a local run: reading and preparing a window
#: takes a fifth to a quarter of the CPU time of its pixels' forward passes (4-layer, 64-unit STAR
#: on 26 steps; benchmarks/raster_speed.py), so one reading thread keeps four model threads fed.
MODEL_THREADS_PER_READER = 4
#: Model threads of a local run on a GPU: one gathers and launches a batch while the GPU runs the
#: other's; the next window is then read on every core.
CUDA_MODEL_THREADS = 2
#: Patch sequences per forward pass on a GPU: the recurrence launches a few kernels per layer and step
#: whatever the batch, so a GPU wants large batches (32768 sequences of 26 × 54 float32: 184 MB).
CUDA_BATCH_SIZE = 32768
PARTS_FORMAT = "cropstar-classify-parts"
PARTS_FORMAT_VERSION = 1
#: What the manifest's identity fields mean, for the message when a rerun does not match.
_IDENTITY = {
    "model": "another model",
    "cube": "another cube",
    "bands": "other output bands (probabilities / per-time-step maps)",
    "dtype": "another data type",
    "grid": "another grid",
    "block_size": "another block size",
}


@dataclass
class ClassifyReport:
    """What :func:`classify` wrote and how the work went."""

    path: Path
    width: int
    height: int
    bands: list[str]
    blocks: int
    blocks_computed: int
    blocks_resumed: int
    seconds: float
    pixels_per_second: float
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------
# fingerprints and the work folder
# ---------------------------------------------------------------------------------------------
def model_fingerprint(loaded: LoadedModel) -> str:
    """SHA-256 of what a model's predictions depend on: its weights and the card fields shaping its input."""
    card = loaded.card
    digest = hashlib.sha256()
    reads = {
        "architecture": card.architecture.to_dict(),
        "classes": card.class_table.to_records(),
        "bands": list(card.bands),
        "patch_size": card.patch_size,
        "time_grid": card.time_grid.to_dict(),
        "normalisation": card.normalisation.to_dict(),
    }
    digest.update(json.dumps(reads, sort_keys=True, default=str).encode())
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cube_fingerprint(cube: Cube) -> str:
    """dask's token of the cube's arrays: their graph (source files and their modification times, the
    selections) for a lazy cube, their content for an in-memory one."""
    return dask.base.tokenize(cube.data, cube.valid)


def _grid_record(grid: Grid) -> dict[str, Any]:
    return {"crs": grid.crs.to_wkt(), "transform": list(grid.transform)[:6], "width": grid.width,
            "height": grid.height}  # fmt: skip


class PartsFolder:
    """The work folder of a map in progress (layout in the module docstring).

    Opening it with another ``identity`` than its manifest records raises InputError naming what
    differs, unless ``restart`` (then, and always with ``restart``, its blocks are discarded).
    """

    def __init__(self, folder: Path, identity: dict[str, Any], about: dict[str, Any], restart: bool) -> None:
        self.folder = folder
        self.blocks = folder / "blocks"
        manifest = folder / "manifest.json"
        if folder.exists():
            recorded = self._recorded(manifest)
            differs = [key for key in _IDENTITY if recorded.get(key) != identity.get(key)]
            if restart:
                shutil.rmtree(folder)
            elif differs:
                why = "; ".join(_IDENTITY[key] for key in differs)
                raise InputError(
                    f"work folder {folder} holds blocks of another run ({why}):"
                    " rerun with restart (cropstar classify --restart) to discard them, or remove the folder"
                )
        if not manifest.exists():
            self.blocks.mkdir(parents=True, exist_ok=True)
            record = {
                "format": PARTS_FORMAT,
                "format_version": PARTS_FORMAT_VERSION,
                **identity,
                "about": about,
            }
            write_text_atomic(manifest, json.dumps(record, indent=2) + "\n")

    @staticmethod
    def _recorded(manifest: Path) -> dict[str, Any]:
        """The manifest of an existing folder; InputError for a folder that is not a work folder."""
        folder = manifest.parent
        if not manifest.exists():
            if folder.is_dir() and not any(folder.iterdir()):
                return {}
            raise InputError(f"{folder} exists and is not a cropstar classify work folder (no manifest.json)")
        try:
            record = json.loads(manifest.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the work folder's manifest {manifest}: {error}") from None
        if not isinstance(record, dict) or record.get("format") != PARTS_FORMAT:
            raise InputError(f"{manifest} is not a cropstar classify manifest")
        return record

    def _path(self, block: Block) -> Path:
        return self.blocks / f"{block.index:06d}.npy"

    def done(self, blocks: list[Block]) -> set[int]:
        """Indices of the finished blocks among ``blocks``."""
        return {block.index for block in blocks if self._path(block).exists()}

    def write(self, block: Block, bands: np.ndarray) -> None:
        """Save a finished block atomically (a temporary file renamed into place)."""
        fd, tmp = tempfile.mkstemp(dir=self.blocks, prefix=".part-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, bands)
            os.replace(tmp, self._path(block))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, block: Block) -> np.ndarray:
        return np.load(self._path(block))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# where the blocks run
# ---------------------------------------------------------------------------------------------
def _run_here(
    loaded: LoadedModel,
    cube: Cube,
    blocks: list[Block],
    layout: MapLayout,
    batch_size: int,
    threads: int | None,
) -> Iterator[tuple[Block, np.ndarray]]:
    """The local default, a pipeline in this process: the next block's window is read and prepared
    (:func:`load_window`; on one thread per :data:`MODEL_THREADS_PER_READER` model threads, the first
    window on every core) while ``threads`` threads (None: torch's setting, by default every core)
    run the current block's batches through the model, each on one torch thread (the cluster's
    setting too: one torch thread per task, so both give the same bits). With the model on a GPU,
    ``threads`` (None: :data:`CUDA_MODEL_THREADS`) feed it and every core reads the next window.
    Blocks come out in order; at most two windows are held. torch's thread setting is restored
    afterwards."""
    on_gpu = model_device(loaded).type != "cpu"
    workers = threads if threads is not None else CUDA_MODEL_THREADS if on_gpu else torch.get_num_threads()
    readers = -(-workers // MODEL_THREADS_PER_READER)
    before = torch.get_num_threads()
    reader = ThreadPoolExecutor(1, thread_name_prefix="cropstar-read")
    pooled = readers > 1 and not on_gpu
    reading = ThreadPoolExecutor(readers, thread_name_prefix="cropstar-read") if pooled else None
    model = ThreadPoolExecutor(workers, thread_name_prefix="cropstar-model")
    following = iter(blocks)

    def read_next(scheduler: str | Executor) -> Future[Window] | None:
        block = next(following, None)
        return None if block is None else reader.submit(load_window, loaded.card, cube, block, scheduler)

    try:
        torch.set_num_threads(1)  # for every pool thread: independent single-threaded forward passes
        ahead = read_next("threads")  # nothing else runs yet: every core reads the first window
        for block in blocks:
            assert ahead is not None
            window = ahead.result()
            ahead = read_next("threads" if on_gpu else reading or "synchronous")
            yield block, classify_window(loaded, window, layout, batch_size=batch_size, map_batches=model.map)
            del window  # before waiting for the next one: at most two windows at a time
    finally:
        for pool in (reader, reading, model):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)


class ModelOnWorkers(WorkerPlugin):
    """A dask.distributed worker plugin that rebuilds the model once on each worker: the weights travel
    with the plugin (tensors, no artifact files needed there); :meth:`setup` builds the classifier."""

    def __init__(self, loaded: LoadedModel, name: str) -> None:
        self.name = name
        self.card, self.path = loaded.card, loaded.path
        self.weights = {key: t.detach().cpu() for key, t in loaded.model.state_dict().items()}
        self.loaded: LoadedModel | None = None

    def setup(self, worker: Any) -> None:
        model = build_classifier(self.card.architecture)
        model.load_state_dict(self.weights)
        self.loaded = LoadedModel(model.eval(), self.card, self.path)

    def teardown(self, worker: Any) -> None:
        self.loaded = None


def _classify_on_worker(
    plugin: str, cube: Cube, block: Block, layout: MapLayout, batch_size: int
) -> np.ndarray:
    """A block task: the worker's model, torch pinned to one thread (one block per worker thread)."""
    from distributed import get_worker

    torch.set_num_threads(1)
    loaded = get_worker().plugins[plugin].loaded
    return classify_block(loaded, cube, block, layout, batch_size=batch_size, dask_scheduler="synchronous")


@contextlib.contextmanager
def _client(scheduler: str | Client) -> Iterator[Client]:
    """A client of the cluster at the address ``scheduler`` (closed afterwards), or the client given."""
    from distributed import Client

    if not isinstance(scheduler, str):
        yield scheduler
        return
    try:
        client = Client(scheduler, set_as_default=False, timeout=30)
    except (OSError, TimeoutError, ValueError) as error:
        raise InputError(f"cannot reach the dask scheduler at {scheduler}: {error}") from None
    try:
        yield client
    finally:
        client.close()


def _run_on_cluster(
    client: Client, loaded: LoadedModel, cube: Cube, blocks: list[Block], layout: MapLayout, batch_size: int,
    plugin_name: str,
) -> Iterator[tuple[Block, np.ndarray]]:  # fmt: skip
    """Every block as a task on the cluster, yielded as they finish; the cube is sent to each worker once."""
    from distributed import as_completed

    client.register_plugin(ModelOnWorkers(loaded, plugin_name))
    futures: list[Any] = []
    try:
        [shared] = client.scatter([cube], broadcast=True, hash=False)
        futures = [
            client.submit(_classify_on_worker, plugin_name, shared, block, layout, batch_size, pure=False)
            for block in blocks
        ]
        block_of = {future.key: block for future, block in zip(futures, blocks, strict=True)}
        for future in as_completed(futures, loop=client.loop):
            yield block_of[future.key], future.result()
            future.release()
    finally:
        client.cancel(futures)
        client.unregister_worker_plugin(plugin_name)


@dataclass
class _Runner:
    """Where the blocks run: here (``scheduler`` None) or on a dask.distributed cluster."""

    loaded: LoadedModel
    fingerprint: str
    cube: Cube
    layout: MapLayout
    batch_size: int
    threads: int | None
    scheduler: str | Client | None

    @contextlib.contextmanager
    def run(self, blocks: list[Block]) -> Iterator[Iterator[tuple[Block, np.ndarray]]]:
        """The finished blocks as they come; leaving stops the work (cancels the cluster's tasks)."""
        args = (self.loaded, self.cube, blocks, self.layout, self.batch_size)
        if self.scheduler is None:
            with contextlib.closing(_run_here(*args, self.threads)) as results:
                yield results
            return
        plugin = f"cropstar-model-{self.fingerprint[:12]}-{uuid.uuid4().hex[:8]}"  # one per run
        with (
            _client(self.scheduler) as client,
            contextlib.closing(_run_on_cluster(client, *args, plugin)) as results,
        ):
            yield results


def _map_tags(loaded: LoadedModel, fingerprint: str, layout: MapLayout, cube: Cube) -> dict[str, str]:
    """The map's metadata: the model (name, version, fingerprint), its classes (JSON records id, code,
    name), the dates, the cube (the last part of its source's name, its fingerprint). No folder of the
    machine that made it: a map is handed to others (the service's job maps are downloaded)."""
    card = loaded.card
    source = str(cube.attrs.get("source", "")).replace("\\", "/").rstrip("/")
    return {
        "model": card.name, "model_version": str(card.version or ""), "model_fingerprint": fingerprint,
        "task": card.task, "classes": json.dumps(card.class_table.to_records()),
        "dates": json.dumps(list(layout.dates)), "cube": source.rsplit("/", 1)[-1],
        "cube_fingerprint": cube_fingerprint(cube), "probability_scale": str(layout.scale),
        "software": f"cropstar {__version__}", "device": describe_device(model_device(loaded)),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------
def classify(
    model: LoadedModel | Path | str,
    cube: Cube,
    out: Path | str,
    *,
    probabilities: bool = False,
    per_timestep: bool = False,
    block_size: int = 512,
    batch_size: int | None = None,
    scheduler: str | Client | None = None,
    threads: int | None = None,
    work_dir: Path | str | None = None,
    restart: bool = False,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> ClassifyReport:
    """Classify every pixel of ``cube`` with ``model`` (a loaded model or an artifact folder) and write
    the map ``out`` as a Cloud-Optimized GeoTIFF on the cube's grid (bands: :class:`MapLayout`).

    ``probabilities``: add one band per class; ``per_timestep``: add the class after each date
    (early-season maps). ``block_size``: side of the blocks in pixels (memory follows it: two blocks'
    windows at a time here); ``batch_size``: patch sequences per forward pass (None:
    :data:`~cropstar.infer.predict.DEFAULT_BATCH_SIZE`, on a GPU :data:`CUDA_BATCH_SIZE`). ``scheduler``: a
    dask.distributed address ("tcp://host:8786") or Client to run the blocks on; None runs them here,
    the next block read while ``threads`` threads (None: torch's setting, by default every core) run
    the current block's batches, one torch thread each. The map is the same either way.
    ``work_dir``: the work folder (default ``OUT.parts`` beside the output); finished blocks there are
    reused, unless ``restart``. Pixels without any valid observation are no-data. ``device``: where the
    model runs here (auto, cpu, cuda, cuda:N or a torch device; None: where a loaded model is, an
    artifact on the CPU), recorded in the map's ``device`` tag; a cluster's workers run on their CPUs.
    """
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be a positive number of patch sequences, got {batch_size}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be a positive number, got {threads}")
    loaded = _model_on(model, device)
    if scheduler is not None and model_device(loaded).type != "cpu":
        raise InputError(
            f"device {model_device(loaded)}: with a dask scheduler the blocks run on the workers, on their "
            "CPUs; classify on the GPU here without a scheduler, or on the cluster with device cpu"
        )
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if model_device(loaded).type == "cpu" else CUDA_BATCH_SIZE
    card = loaded.card
    out = Path(out)
    prepared = prepare_cube(card, cube)  # checks the fit first; its grid and dates are the map's
    grid = prepared.grid
    layout = MapLayout(
        card.class_table, tuple(str(t.date()) for t in prepared.times), probabilities, per_timestep
    )
    blocks = tile_blocks(grid.height, grid.width, block_size)
    fingerprint = model_fingerprint(loaded)
    identity = {
        "model": fingerprint, "cube": cube_fingerprint(cube), "bands": layout.descriptions,
        "dtype": layout.dtype.name, "grid": _grid_record(grid), "block_size": block_size,
    }  # fmt: skip
    about = {
        "model": card.name, "model_path": str(loaded.path), "cube": cube.attrs.get("source"),
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "device": describe_device(model_device(loaded)),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = PartsFolder(
        Path(work_dir) if work_dir else out.with_name(out.name + ".parts"), identity, about, restart
    )
    resumed = parts.done(blocks)
    todo = [block for block in blocks if block.index not in resumed]
    report = progress or (lambda *args, **info: None)
    report("blocks", len(resumed), len(blocks), computed=0, resumed=len(resumed), pixels_per_second=0.0)
    source = Cube(cube.data, cube.valid, cube.attrs)  # the observation conditions are not needed
    runner = _Runner(loaded, fingerprint, source, layout, batch_size, threads, scheduler)
    started, pixels = time.perf_counter(), 0
    with runner.run(todo) as results:
        for computed, (block, bands) in enumerate(results, start=1):
            parts.write(block, bands)
            pixels += block.size
            rate = pixels / max(time.perf_counter() - started, 1e-9)
            report("blocks", len(resumed) + computed, len(blocks), computed=computed, resumed=len(resumed),
                   pixels_per_second=rate)  # fmt: skip
    seconds = time.perf_counter() - started

    finished = ((block, parts.read(block)) for block in blocks)
    tags = _map_tags(loaded, fingerprint, layout, cube)
    write_cog(
        out, finished, grid, layout, tags, parts.folder, lambda done: report("writing", done, len(blocks))
    )
    write_map_items(out, loaded, layout, grid, fingerprint)
    parts.remove()
    return ClassifyReport(
        path=out, width=grid.width, height=grid.height, bands=layout.descriptions, blocks=len(blocks),
        blocks_computed=len(todo), blocks_resumed=len(resumed), seconds=seconds,
        pixels_per_second=sum(b.size for b in todo) / max(seconds, 1e-9), device=tags["device"],
    )  # fmt: skip


def _model_on(model: LoadedModel | Path | str, device: str | torch.device | None) -> LoadedModel:
    """The model to classify with on ``device`` (None: where a loaded model is, an artifact on the CPU):
    an artifact loaded there; a loaded model elsewhere copied there (the caller's stays where it is)."""
    target = device if device is None or isinstance(device, torch.device) else resolve_device(device)
    if not isinstance(model, LoadedModel):
        return load_artifact(model, target or "cpu")
    if target is None or model_device(model) == target:
        return model
    return LoadedModel(copy.deepcopy(model.model).to(target), model.card, model.path)
