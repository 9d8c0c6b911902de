"""Data-parallel training under torchrun equals single-process training with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cropstar.errors import InputError
from cropstar.train.config import load_config
from cropstar.train.distributed import World, per_rank_batch, rank_share
from cropstar.train.trainer import load_checkpoint, train

SCRIPT = """
import sys
from cropstar.train.config import load_config
from cropstar.train.trainer import train
train(load_config(sys.argv[1]), sys.argv[2], sys.argv[3])
"""


def test_world_from_the_torchrun_environment() -> None:
    assert World.from_env({}) == World(0, 1, 0)
    world = World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank, world.is_main, world.is_distributed) == (
        3,
        4,
        1,
        False,
        True,
    )
    with pytest.raises(InputError, match="RANK 4 outside 0…3"):
        World.from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_ranks_share_a_batch_without_overlap() -> None:
    batch = torch.tensor([9, 4, 7, 1, 0])
    shares = [rank_share(batch, World(rank, 2)) for rank in range(2)]
    assert torch.equal(torch.cat(shares), batch)
    assert per_rank_batch(500, World(0, 4)) == 125
    with pytest.raises(InputError, match="divisible"):
        per_rank_batch(500, World(0, 3))


def test_two_processes_train_the_single_process_model(
    crop_dataset_per_timestep: Path, tmp_path: Path
) -> None:
    """Per-time-step labels: the ranks see different numbers of labelled steps, so the losses must be
    scaled by the global batch's count for the gradients to match."""
    crop_dataset = crop_dataset_per_timestep
    overrides = ["model.hidden_size=16", "model.num_layers=2", "batch_size=32", "epochs=2", "device=cpu"]
    config = load_config(None, [*overrides, "optimiser.lr=1e-2"])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.to_yaml())
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*command, str(script), str(config_path), str(crop_dataset), str(tmp_path / "ddp")],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    single = train(config, crop_dataset, tmp_path / "single")

    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert [r["epoch"] for r in ddp["rows"]] == [1, 2] and ddp["best_epoch"] == single.best_epoch
    for a, b in zip(ddp["rows"], single.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    last = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["model"]
    best = [load_file(tmp_path / run / "model" / "model.safetensors") for run in ("ddp", "single")]
    for name, tensor in last.items():
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(best[0][name], best[1][name], rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only
