"""scripts/gpu_check.sh: without CUDA it stops at once saying so; its dry run (the same steps on the CPU
at tiny sizes) writes one JSON with every step's figures; a step out of time is recorded, the rest run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"
TILE_PIXELS = 10_980**2


def _check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "CROPSTAR_GPU_CHECK_DEVICE"}
    environment.update(OUT=str(out), OMP_NUM_THREADS="1", **env)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=600,
                          check=False)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_without_cuda_it_stops_at_once_saying_so(tmp_path: Path) -> None:
    done = _check(tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "CUDA is not available" in done.stdout and "--dry-run" in done.stderr
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["card"] is None and "env" in record["failed_steps"] and not record["env"]["cuda_available"]
    assert [s["name"] for s in record["steps"]][-1] == "env"  # nothing else ran


def test_a_step_out_of_time_is_recorded_and_the_next_ones_still_run(tmp_path: Path) -> None:
    done = _check(tmp_path, "--dry-run", CROPSTAR_GPU_CHECK_BUDGET="3")
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert {"env", "scene", "tests", "bench_speed", "train_data"} <= set(steps)  # each was tried
    out_of_time = [s for s in steps.values() if s["timed_out"] or s["rc"] == 125]
    assert out_of_time and set(record["failed_steps"]) >= {s["name"] for s in out_of_time}
    assert all(s["limit_s"] <= 3 for s in steps.values())
    skipped = [s for s in steps.values() if s["rc"] == 125]
    assert all("time budget" in (tmp_path / s["log"]).read_text() for s in skipped)


@pytest.mark.slow
def test_the_dry_run_measures_every_step_into_one_json(tmp_path: Path) -> None:
    done = _check(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["mode"].startswith("dry run") and record["failed_steps"] == []
    names = [s["name"] for s in record["steps"]]
    assert sorted(names) == ["bench_speed", "classify", "env", "scene", "tests", "train", "train_data"]
    assert all((tmp_path / s["log"]).is_file() and s["rc"] == 0 for s in record["steps"])
    assert record["tests"]["counts"]["passed"] >= 20 and "failed" not in record["tests"]["counts"]
    bench = record["bench_speed"]["cases"]
    assert set(bench) == {"train", "infer"} and set(bench["train"]["median_ms"]) == {"star", "torch_lstm", "torch_gru"}
    runs = record["train"]["runs"]
    assert set(runs) == {"device", "cpu_reference"}
    assert all(run["steps_per_second"] > 0 and run["device"] == "cpu" for run in runs.values())
    scene, classify = record["scene"], record["classify"]["device"]
    assert (scene["size"], scene["dates"]) == (64, 26) and (classify["width"], classify["height"]) == (64, 64)
    assert classify["dates"] == 26 and classify["pixels_per_second_with_io"] > 0
    estimate = record["tile_estimate"]
    assert estimate["pixels"] == TILE_PIXELS and "estimate" in estimate["note"]
    assert estimate["seconds"] == pytest.approx(classify["seconds_with_io"] * TILE_PIXELS / 64**2)
