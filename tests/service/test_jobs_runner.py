"""The job runner: jobs run to success or failure, cancellation by dismissal, graceful stops and
restarts — with the real raster classification of a small synthetic scene and real (tiny) training
runs: a raster job's map is the one cropstar.infer makes of the scene, pixel for pixel; one interrupted
by a stop or a crash resumes with its finished blocks into the same map, byte for byte; a retraining
job continues from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from cropstar.data.class_table import ClassTable
from cropstar.data.cube import open_cube
from cropstar.data.dataset import write_dataset
from cropstar.data.patches import extract_patches, values_at
from cropstar.data.splits import split_by_field
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.errors import InputError
from cropstar.infer.predict import predict_patches, prepare_cube
from cropstar.infer.raster import classify
from cropstar.model.artifact import LoadedModel, load_artifact
from cropstar.model.default_model import default_model_path
from service.jobs import Jobs, JobsConfig, Processes
from service.jobs.runner import STOPPED, JobControl, JobRunner
from service.jobs.store import Job, JobStore

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_TRAINING = {
    "model.hidden_size": 8, "model.num_layers": 1, "batch_size": 32, "epochs": 3, "device": "cpu",
    "optimiser.lr": 0.03,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 × 32-pixel synthetic scene (26 dates) as a NetCDF cube (read much faster than the band files)."""
    root = tmp_path_factory.mktemp("scene")
    paths = write_scene(make_scene(size=32, dates=26, seed=11), root / "scene")
    out = root / "scene.nc"
    open_cube(paths["cube"]).to_dataset().to_netcdf(out)
    return out


def write_crop_dataset(path: Path, seed: int = 0) -> Path:
    """A learnable per-sequence dataset: 60 fields × 4 samples, 8 steps, 3 classes, 3×3 patches."""
    rng = np.random.default_rng(seed)
    n_fields, per_field, steps, bands = 60, 4, 8, ["B02", "B03", "B04", "B08", "B11", "B12"]
    labels = np.repeat(np.arange(n_fields) % 3, per_field)
    field_ids = np.repeat([f"field-{i}" for i in range(n_fields)], per_field)
    peaks = np.linspace(1, steps - 2, 3)[labels]
    bump = np.exp(-0.5 * ((np.arange(steps)[None, :] - peaks[:, None]) / 1.2) ** 2)
    patches = rng.normal(0.08, 0.01, (len(labels), steps, len(bands), 3, 3)).astype(np.float32)
    patches[:, :, 3] += 0.3 * bump[:, :, None, None].astype(np.float32)
    codes = ("1110", "1510", "1200")
    return write_dataset(
        path, patches=patches, mask=np.ones((len(labels), steps), bool), labels=labels, field_ids=field_ids,
        split=split_by_field(field_ids, labels, seed=seed),
        class_table=ClassTable.from_codes(codes, dict(zip(codes, ("wheat", "maize", "barley"), strict=True))),
        dates=[str(d) for d in np.arange("2023-03-01", "2023-09-01", 10, dtype="datetime64[D]")[:steps]],
        bands=bands, provenance={"source": "test_jobs_runner.py", "period": "10D"}, shard_size=64,
    )  # fmt: skip


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    """The model a job uses when it names none (the service's default: the packaged model)."""
    return load_artifact(default_model_path())


@pytest.fixture(scope="module")
def direct_map(
    tmp_path_factory: pytest.TempPathFactory, scene_source: Path, default_model: LoadedModel
) -> Callable[..., Path]:
    """``direct_map(block_size, probabilities=False)``: the map of the scene made by cropstar.infer
    directly (:func:`~cropstar.infer.raster.classify`, uninterrupted), with the default model; each
    made once."""
    folder, made = tmp_path_factory.mktemp("direct"), {}

    def make(block_size: int, probabilities: bool = False) -> Path:
        if (block_size, probabilities) not in made:
            out = folder / f"map-{block_size}-{int(probabilities)}.tif"
            cube = open_cube(scene_source, bands=default_model.card.bands)
            classify(default_model.path, cube, out, block_size=block_size, probabilities=probabilities)
            made[block_size, probabilities] = out
        return made[block_size, probabilities]

    return make


def read_map(path: Path) -> tuple[np.ndarray, Any, Any]:
    """The bands (count, h, w), the CRS and the transform of a map."""
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform


@pytest.fixture
def config(tmp_path: Path, scene_source: Path) -> JobsConfig:
    return JobsConfig(
        work_dir=tmp_path / "jobs", data_sources={"scene": str(scene_source)},
        datasets={"crops": str(write_crop_dataset(tmp_path / "crops"))}, registry=tmp_path / "registry",
    )  # fmt: skip


def wait_for(store: JobStore, job_id: str, *statuses: str, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job is not None and job.status in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {store.get(job_id).status}, not {statuses} after {timeout} s")


def hooked(execute: Callable[[Job, JobControl], dict], hook: Callable[[str | None], None]) -> Callable:
    """``execute`` whose progress reports call ``hook(message)`` after they are recorded."""

    def run(job: Job, control: JobControl) -> dict:
        report = control.report

        def report_then_hook(percent: float, message: str | None = None) -> None:
            report(percent, message)
            hook(message)

        control.report = report_then_hook  # type: ignore[method-assign]
        return execute(job, control)

    return run


# ---------------------------------------------------------------------------------------------
# the runner's contract, with plain work
# ---------------------------------------------------------------------------------------------
def test_a_job_runs_and_its_progress_is_recorded(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    seen: list[tuple[int, str]] = []

    def execute(job: Job, control: JobControl) -> dict:
        for percent in (25, 50, 75):
            control.report(percent, f"step {percent}")
            now = store.get(job.id)
            seen.append((now.progress, now.message))
        return {"answer": {"value": job.inputs["x"] * 2, "mediaType": "application/json"}}

    runner = JobRunner(store, execute, poll=0.05)
    job = store.create("double", {"x": 21})
    runner.start()
    try:
        done = wait_for(store, job.id, "successful", "failed")
    finally:
        assert runner.stop(5)
    assert done.status == "successful" and done.outputs == {
        "answer": {"value": 42, "mediaType": "application/json"}
    }
    assert seen == [(25, "step 25"), (50, "step 50"), (75, "step 75")]
    assert done.progress == 100 and done.attempts == 1


def test_failures_are_recorded_and_the_runner_goes_on(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")

    def execute(job: Job, control: JobControl) -> dict:
        if job.inputs["kind"] == "input":
            raise InputError("unknown data source 'nowhere' (data sources: demo)")
        if job.inputs["kind"] == "bug":
            return {"ratio": 1 / 0}
        return {}

    removed: list[str] = []
    runner = JobRunner(store, execute, poll=0.05, cleanup=lambda job: removed.append(job.id))
    jobs = [store.create("p", {"kind": kind}) for kind in ("input", "bug", "fine")]
    runner.start()
    try:
        input_error, bug, fine = (wait_for(store, job.id, "successful", "failed") for job in jobs)
    finally:
        runner.stop(5)
    assert (
        input_error.status == "failed"
        and input_error.message == "unknown data source 'nowhere' (data sources: demo)"
    )
    assert bug.status == "failed" and bug.message == "internal error: ZeroDivisionError: division by zero"
    assert fine.status == "successful"
    assert sorted(removed) == sorted([input_error.id, bug.id])  # a failed job's partial files go; nothing resumes it


def _endless(started: threading.Event) -> Callable[[Job, JobControl], dict]:
    def execute(job: Job, control: JobControl) -> dict:
        started.set()
        for step in range(100_000):
            control.report(step % 100, f"step {step}")
            time.sleep(0.005)
        raise AssertionError("never stopped")

    return execute


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_dismissal_cancels_a_running_job_and_removes_its_files(tmp_path: Path, where: str) -> None:
    store, started, removed = JobStore(tmp_path / "jobs.sqlite"), threading.Event(), []
    runner = JobRunner(store, _endless(started), cleanup=lambda job: removed.append(job.id), poll=0.05)
    job = store.create("endless", {})
    runner.start()
    try:
        assert started.wait(10)
        store.dismiss(job.id)
        if where == "this process":
            assert runner.cancel(job.id)  # at once; other processes learn it at their next write
        deadline = time.monotonic() + 10
        while runner.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.running() == [] and removed == [job.id]
        assert store.get(job.id).status == "dismissed"
        follow_up = store.create("endless", {})  # the worker is free again
        started.clear()
        assert started.wait(10) and runner.running() == [follow_up.id]
    finally:
        assert runner.stop(10)


def test_a_stop_hands_the_running_job_back_and_the_next_runner_finishes_it(tmp_path: Path) -> None:
    store, started = JobStore(tmp_path / "jobs.sqlite"), threading.Event()
    runner = JobRunner(store, _endless(started), poll=0.05)
    job = store.create("endless", {})
    runner.start()
    assert started.wait(10)
    assert runner.stop(10) and not runner.started
    back = store.get(job.id)
    assert (back.status, back.message, back.attempts) == ("accepted", STOPPED, 0)

    later = JobRunner(JobStore(tmp_path / "jobs.sqlite"), lambda job, control: {"done": True}, poll=0.05)
    later.start()
    try:
        assert wait_for(store, job.id, "successful").attempts == 1
    finally:
        later.stop(5)


# ---------------------------------------------------------------------------------------------
# the processes, for real
# ---------------------------------------------------------------------------------------------
#: Pixels of the 32 × 32 scene checked against the model itself: corners, the borders of the 16-pixel
#: blocks, inside.
PIXELS = [(0, 0), (0, 31), (31, 0), (31, 31), (15, 15), (15, 16), (16, 15), (16, 16), (7, 23), (26, 9)]


def test_a_raster_job_classifies_the_scene(
    tmp_path: Path, config: JobsConfig, scene_source: Path, default_model: LoadedModel,
    direct_map: Callable[..., Path],
) -> None:  # fmt: skip
    jobs = Jobs(JobStore(tmp_path / "jobs.sqlite"), Processes(config), poll=0.05)
    job = jobs.submit("classify-raster", {"data_source": "scene", "block_size": 16, "probabilities": True})
    assert job.inputs["model"] == "default"  # resolved when submitted
    jobs.start()
    try:
        done = wait_for(jobs.store, job.id, "successful", "failed")
    finally:
        jobs.stop(10)
    assert done.status == "successful", done.message
    assert done.outputs["map"] == {
        "file": "map.tif",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
    }
    summary = done.outputs["summary"]["value"]
    assert (summary["width"], summary["height"], summary["blocks"], summary["blocks_resumed"]) == (
        32,
        32,
        4,
        0,
    )
    assert summary["bands"][:2] == ["class", "confidence"] and len(summary["bands"]) == 2 + 8
    with rasterio.open(config.job_dir(job.id) / "map.tif") as cog:
        assert (cog.width, cog.height, cog.count) == (32, 32, 10)
        assert cog.descriptions[:2] == ("class", "confidence")
    assert not (config.job_dir(job.id) / "map.tif.parts").exists()

    # pixel for pixel the map cropstar.infer makes of the same cube with the same model
    bands, crs, transform = read_map(config.job_dir(job.id) / "map.tif")
    direct, direct_crs, direct_transform = read_map(direct_map(16, probabilities=True))
    assert (crs, transform) == (direct_crs, direct_transform)
    np.testing.assert_array_equal(bands, direct)
    # and the model's own probabilities at some pixels: the class, and the confidence and p_<code>
    # bands in percent (rounded)
    card = default_model.card
    prepared = prepare_cube(card, open_cube(scene_source, bands=card.bands)).compute()
    rows, cols = np.array(PIXELS).T
    patches = extract_patches(prepared.data.values, rows, cols, card.patch_size)
    probabilities = predict_patches(default_model, patches, values_at(prepared.valid.values, rows, cols))
    np.testing.assert_array_equal(bands[0, rows, cols], probabilities.argmax(-1))
    assert np.abs(bands[2:, rows, cols].T - probabilities * 100).max() <= 0.5 + 1e-4
    np.testing.assert_array_equal(bands[1, rows, cols], bands[2:, rows, cols].max(0))
    assert len(np.unique(bands[0])) > 1  # a map, not one class everywhere


def test_a_stopped_raster_job_resumes_with_its_finished_blocks(
    tmp_path: Path, config: JobsConfig, direct_map: Callable[..., Path]
) -> None:
    db = tmp_path / "jobs.sqlite"
    processes = Processes(config)
    job = Jobs(JobStore(db), processes).submit("classify-raster", {"data_source": "scene", "block_size": 8})

    stopping = threading.Event()

    def stop_after_four_blocks(message: str | None) -> None:
        if message and message.startswith("4 of 16 blocks"):
            stopping.set()
            runner.stop(timeout=0)  # from the job's own thread: the next report stops it

    runner = JobRunner(JobStore(db), hooked(processes.execute, stop_after_four_blocks), poll=0.05)
    runner.start()
    assert stopping.wait(60)
    assert runner.stop(60)
    stopped = runner.store.get(job.id)
    assert (stopped.status, stopped.message) == ("accepted", STOPPED)
    parts = config.job_dir(job.id) / "map.tif.parts" / "blocks"
    assert len(list(parts.glob("*.npy"))) == 5  # the stop is seen at the report after the fifth block

    restarted = Jobs(JobStore(db), Processes(config), poll=0.05)  # a new service process
    restarted.start()
    try:
        done = wait_for(restarted.store, job.id, "successful", "failed")
    finally:
        restarted.stop(10)
    assert done.status == "successful", done.message
    summary = done.outputs["summary"]["value"]
    assert (summary["blocks"], summary["blocks_resumed"], summary["blocks_computed"]) == (16, 5, 11)
    # the map of an uninterrupted run, byte for byte
    assert (config.job_dir(job.id) / "map.tif").read_bytes() == direct_map(8).read_bytes()


CRASHING_CHILD = """
import os, sys
from pathlib import Path
from service.jobs import JobRunner, JobStore, JobsConfig, Processes

db, work, source = sys.argv[1:4]
processes = Processes(JobsConfig(work_dir=Path(work), data_sources={"scene": source}))

def crash_after_five_blocks(job, control):
    report = control.report
    def report_then_crash(percent, message=None):
        report(percent, message)
        if message and message.startswith("5 of 16 blocks"):
            os._exit(3)  # killed: no stop, no release; the job stays running in the store
    control.report = report_then_crash
    return processes.execute(job, control)

JobRunner(JobStore(db), crash_after_five_blocks, poll=0.05).start()
import time; time.sleep(120)
"""


def _crashed_raster_job(db: Path, config: JobsConfig) -> Job:
    """A raster job whose process (a child) was killed after finishing some blocks."""
    job = Jobs(JobStore(db), Processes(config)).submit("classify-raster", {"data_source": "scene", "block_size": 8})
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(db), str(config.work_dir), config.data_sources["scene"]],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert child.returncode == 3, child.stderr
    return job


def test_a_raster_job_of_a_crashed_process_resumes_at_the_next_start(
    tmp_path: Path, config: JobsConfig, direct_map: Callable[..., Path]
) -> None:
    db = tmp_path / "jobs.sqlite"
    job = _crashed_raster_job(db, config)
    crashed = JobStore(db).get(job.id)
    assert crashed.status == "running" and crashed.attempts == 1

    restarted = Jobs(JobStore(db), Processes(config), poll=0.05)
    restarted.start()  # recover(): the owner's process is gone → accepted, then resumed
    try:
        done = wait_for(restarted.store, job.id, "successful", "failed")
    finally:
        restarted.stop(10)
    assert done.status == "successful", done.message
    assert done.attempts == 2
    assert done.outputs["summary"]["value"]["blocks_resumed"] == 5
    assert (config.job_dir(job.id) / "map.tif").read_bytes() == direct_map(8).read_bytes()  # uninterrupted


def test_a_crashed_raster_job_out_of_attempts_fails_and_leaves_no_parts(tmp_path: Path, config: JobsConfig) -> None:
    db = tmp_path / "jobs.sqlite"
    job = _crashed_raster_job(db, config)
    assert (config.job_dir(job.id) / "map.tif.parts").is_dir()  # the blocks it finished before the crash
    restarted = Jobs(JobStore(db), Processes(config), poll=0.05, max_attempts=1)
    restarted.start()  # recover(): started once already, so it fails instead of resuming
    try:
        failed = wait_for(restarted.store, job.id, "failed")
    finally:
        restarted.stop(10)
    assert "given up" in failed.message and not config.job_dir(job.id).exists()


def test_retrain_trains_registers_and_retrains_from_the_registered_model(
    tmp_path: Path, config: JobsConfig
) -> None:
    jobs = Jobs(JobStore(tmp_path / "jobs.sqlite"), Processes(config), poll=0.05)
    first = jobs.submit("retrain", {"dataset": "crops", "config": TINY_TRAINING, "register_as": "crops"})
    jobs.start()
    try:
        first = wait_for(jobs.store, first.id, "successful", "failed")
        assert first.status == "successful", first.message
        again = jobs.submit("retrain", {"dataset": "crops", "init_from": "crops", "config": {"epochs": 2}})
        assert again.inputs["init_from"] == "crops:v1" and again.inputs["register_as"] == "crops"
        again = wait_for(jobs.store, again.id, "successful", "failed")
    finally:
        jobs.stop(10)
    assert first.outputs["model"]["value"] == {
        "id": "crops:v1",
        "name": "crops",
        "version": 1,
        "current": True,
    }
    training = first.outputs["training"]["value"]
    assert training["epochs_run"] == 3 and not training["resumed"] and training["best"]["val_accuracy"] > 0.5
    log = config.job_dir(first.id) / first.outputs["log"]["file"]
    assert len(log.read_text().splitlines()) == 1 + 3
    assert (config.job_dir(first.id) / first.outputs["model_weights"]["file"]).is_file()

    assert again.status == "successful", again.message
    assert again.outputs["model"]["value"] == {
        "id": "crops:v2",
        "name": "crops",
        "version": 2,
        "current": False,
    }
    card = json.loads((config.job_dir(again.id) / "run" / "model" / "model.json").read_text())
    assert card["training"]["init_from"]["path"].endswith("crops/v1")


def test_a_stopped_retrain_job_continues_from_its_checkpoint(tmp_path: Path, config: JobsConfig) -> None:
    db = tmp_path / "jobs.sqlite"
    processes = Processes(config)
    job = Jobs(JobStore(db), processes).submit("retrain", {"dataset": "crops", "config": TINY_TRAINING})

    stopping = threading.Event()

    def stop_after_the_first_epoch(message: str | None) -> None:
        if message and message.startswith("epoch 1 of 3 done"):
            stopping.set()
            runner.stop(timeout=0)

    runner = JobRunner(JobStore(db), hooked(processes.execute, stop_after_the_first_epoch), poll=0.05)
    runner.start()
    assert stopping.wait(60)
    assert runner.stop(60)
    assert runner.store.get(job.id).status == "accepted"
    assert (config.job_dir(job.id) / "run" / "checkpoint.pt").is_file()

    restarted = Jobs(JobStore(db), Processes(config), poll=0.05)
    restarted.start()
    try:
        done = wait_for(restarted.store, job.id, "successful", "failed")
    finally:
        restarted.stop(10)
    assert done.status == "successful", done.message
    training = done.outputs["training"]["value"]
    assert training["resumed"] and training["epochs_run"] == 3
    assert done.outputs["model"]["value"]["id"] == "crops:v1"  # registered once
    rows = (config.job_dir(job.id) / "run" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]


def test_dismissing_a_finished_job_removes_its_files(tmp_path: Path, config: JobsConfig) -> None:
    jobs = Jobs(JobStore(tmp_path / "jobs.sqlite"), Processes(config), poll=0.05)
    job = jobs.submit("classify-raster", {"data_source": "scene", "block_size": 32})
    jobs.start()
    try:
        wait_for(jobs.store, job.id, "successful")
    finally:
        jobs.stop(10)
    assert (config.job_dir(job.id) / "map.tif").is_file()
    assert jobs.dismiss(job.id).status == "dismissed"
    assert not config.job_dir(job.id).exists()
    assert jobs.dismiss("no-such-job") is None


SCENE = {"data_source": "scene"}
CROPS = {"dataset": "crops"}


@pytest.mark.parametrize(
    ("process", "inputs", "message"),
    [
        (
            "classify-raster",
            {"data_source": "nowhere"},
            r"unknown data source 'nowhere' \(data sources: scene\)",
        ),
        ("classify-raster", {"data_source": "/etc"}, "unknown data source '/etc'"),
        ("classify-raster", {**SCENE, "model": "../../secret"}, "is not a model id"),
        ("classify-raster", {**SCENE, "model": "crops:v9"}, "unknown model 'crops:v9'"),
        ("classify-raster", {**SCENE, "block_size": 4}, "input block_size: .*greater than or equal to 8"),
        ("classify-raster", {**SCENE, "colour": "red"}, "unknown input 'colour'"),
        ("classify-raster", {}, "input data_source: Field required"),
        ("retrain", {"dataset": "other"}, r"unknown dataset 'other' \(datasets: crops\)"),
        ("retrain", {**CROPS, "config": {"epochs": 0}}, "epochs: Input should be greater than or equal to 1"),
        ("retrain", {**CROPS, "config": {"model.colour": 1}}, "unknown setting 'model.colour'"),
        ("retrain", {**CROPS, "register_as": "a/b"}, "register_as 'a/b' must start"),
    ],
)
def test_inputs_are_checked_when_submitted(
    tmp_path: Path, config: JobsConfig, process: str, inputs: dict[str, Any], message: str
) -> None:
    jobs = Jobs(JobStore(tmp_path / "jobs.sqlite"), Processes(config))
    with pytest.raises(InputError, match=message):
        jobs.submit(process, inputs)
    assert jobs.store.count() == 0
