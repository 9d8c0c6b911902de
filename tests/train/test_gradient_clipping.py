"""Gradient clipping in the training loop (``clip_grad_norm``, cropstar.train.trainer): the update the
optimiser applies, watched around each of its steps in a real :func:`~cropstar.train.trainer.train` run.
With SGD at lr 1 and no momentum or weight decay the change of the weights is the applied gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from cropstar.train.config import load_config
from cropstar.train.trainer import train

#: One epoch of one batch (the whole training split): a single optimiser step.
ONE_STEP = ["model.hidden_size=16", "model.num_layers=2", "batch_size=1000", "epochs=1", "device=cpu",
            "optimiser.name=sgd", "optimiser.lr=1", "optimiser.momentum=0",
            "optimiser.weight_decay=0"]  # fmt: skip


def weight_changes(data: Path, out: Path, *overrides: str) -> list[torch.Tensor]:
    """Train on ``data`` with :data:`ONE_STEP` and ``overrides``; the change of all the weights (flat)
    that each optimiser step made."""
    before: list[torch.Tensor] = []
    changes: list[torch.Tensor] = []

    def weights(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]

    def snapshot(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        before[:] = weights(optimizer)

    def compare(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        after = weights(optimizer)
        changes.append(torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)]))

    hooks = [register_optimizer_step_pre_hook(snapshot), register_optimizer_step_post_hook(compare)]
    try:
        train(load_config(None, [*ONE_STEP, *overrides]), data, out)
    finally:
        for hook in hooks:
            hook.remove()
    return changes


def test_clipping_bounds_the_applied_gradient_norm(crop_dataset: Path, tmp_path: Path) -> None:
    (free,) = weight_changes(crop_dataset, tmp_path / "free")  # one step
    norm = float(free.norm())
    clip = norm / 4
    assert norm > 0

    (clipped,) = weight_changes(crop_dataset, tmp_path / "clipped", f"clip_grad_norm={clip!r}")
    assert float(clipped.norm()) <= clip * (1 + 1e-5)  # lr 1: at most clip × lr
    assert float(clipped.norm()) == pytest.approx(clip, rel=1e-4)  # scaled down to the bound
    assert norm > 3.9 * clip  # without clipping the same step moves the weights four times as far
    # the same gradient (same seed, same batch), scaled as a whole: its direction is kept
    torch.testing.assert_close(clipped, free * (clip / norm), rtol=1e-4, atol=1e-7)

    (loose,) = weight_changes(crop_dataset, tmp_path / "loose", f"clip_grad_norm={10 * norm!r}")
    torch.testing.assert_close(loose, free, rtol=1e-5, atol=0)  # a bound above the norm changes nothing
