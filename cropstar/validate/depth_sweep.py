"""Depth sweeps: every cell × depth × seed trained with the suite's protocol (Adam, the
epoch of the lowest validation loss selected, DESIGN.md), recording what the paper's Figure 3 shows —
per-layer gradient norms at initialisation and over the first epoch, and the training loss.

Each run is written as ``OUT/runs/<cell>-L<layers>-s<seed>.json`` when it ends (atomically); a rerun
with the same suite and budget reuses finished runs, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cropstar.analysis.training_gradients import layer_gradient_norms
from cropstar.errors import InputError
from cropstar.files import write_text_atomic
from cropstar.nn import CELLS
from cropstar.validate.budgets import Budget
from cropstar.validate.suites import Split, SuiteData, build_model

#: A run "fails to train" when its test accuracy stays within this fraction of the way from chance to
#: perfect (10 classes: below 0.19), or its loss is not finite.
FAILURE_MARGIN = 0.1
#: At most this many training-loss points are kept per run (evenly spaced steps).
LOSS_POINTS = 400
CPU = torch.device("cpu")
#: ``progress(run_index, runs, epoch, epochs, label)``.
Progress = Callable[[int, int, int, int, str], None]


@dataclass
class RunResult:
    """One trained model of the sweep."""

    cell: str
    layers: int
    seed: int
    test_accuracy: float
    best_epoch: int
    best_val_loss: float
    failed: bool
    reason: str
    seconds: float
    val_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # per step, thinned to LOSS_POINTS
    loss_steps: list[int] = field(default_factory=list)
    grad_at_init: list[float] = field(default_factory=list)  # (L,), bottom layer first
    grad_first_epoch: list[list[float]] = field(default_factory=list)  # (steps, L)


def _batches(
    split: Split, batch_size: int, generator: torch.Generator | None, device: torch.device = CPU
) -> Iterator[tuple[Tensor, ...]]:
    """``(x, y, mask)`` batches on ``device``, shuffled by ``generator`` (None: in order)."""
    order = (
        torch.randperm(len(split), generator=generator) if generator is not None else torch.arange(len(split))
    )
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        mask = None if split.mask is None else split.mask[index].to(device, non_blocking=True)
        yield split.x[index].to(device, non_blocking=True), split.y[index].to(device, non_blocking=True), mask


def _loss(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the labelled targets (per sequence, or per time step with −1 = ignore)."""
    logits = model(x, mask)
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-1
    ), logits


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int, device: torch.device = CPU
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (on ``device``) over the labelled targets of ``split``."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for x, y, mask in _batches(split, batch_size, None, device):
        loss, logits = _loss(model, x, y, mask)
        labelled = y >= 0
        total += float(loss) * int(labelled.sum())
        correct += int((logits.argmax(dim=-1) == y)[labelled].sum())
        count += int(labelled.sum())
    model.train()
    return total / max(count, 1), correct / max(count, 1)


def make_optimizer(model: nn.Module, budget: Budget) -> torch.optim.Optimizer:
    """Adam (β 0.9 / 0.999) or SGD with momentum 0.9, at ``budget.lr`` with ``budget.weight_decay``."""
    if budget.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=budget.lr, momentum=0.9, weight_decay=budget.weight_decay
        )
    return torch.optim.Adam(
        model.parameters(), lr=budget.lr, betas=(0.9, 0.999), weight_decay=budget.weight_decay
    )


def train_run(
    data: SuiteData, cell: str, layers: int, seed: int, budget: Budget,
    on_epoch: Callable[[int], None] | None = None, device: torch.device = CPU,
) -> RunResult:  # fmt: skip
    """Train one model on ``device`` (:func:`make_optimizer`, the budget's learning-rate decay),
    ``budget.epochs`` epochs, the epoch of the lowest validation loss selected and scored on the test
    split. The model is initialised on the CPU, so a seed gives the same initial weights on any device."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(data, cell, layers, budget).to(device)
    optimizer = make_optimizer(model, budget)
    batches_per_epoch = math.ceil(len(data.train) / budget.batch_size)
    schedule = None
    if budget.final_lr is not None:  # linear (polynomial, power 1) decay to final_lr over the epochs
        total = budget.epochs * batches_per_epoch
        end = budget.final_lr / budget.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1 + (end - 1) * min(step / total, 1)
        )
    generator = torch.Generator().manual_seed(seed)
    x0, y0, m0 = next(_batches(data.train, budget.batch_size, torch.Generator().manual_seed(seed), device))
    _loss(model, x0, y0, m0)[0].backward()
    grad_at_init = layer_gradient_norms(model).tolist()
    model.zero_grad()

    losses, first_epoch, val_losses = [], [], []
    best_loss, best_epoch, best_state, reason = math.inf, 0, None, ""
    for epoch in range(1, budget.epochs + 1):
        for x, y, mask in _batches(data.train, budget.batch_size, generator, device):
            optimizer.zero_grad()
            loss = _loss(model, x, y, mask)[0]
            loss.backward()
            if epoch == 1:
                first_epoch.append(layer_gradient_norms(model).tolist())
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                reason = f"the training loss became {losses[-1]} in epoch {epoch}"
                break
            optimizer.step()
            if schedule is not None:
                schedule.step()
        if reason:
            break
        val_loss, _ = evaluate(model, data.val, budget.batch_size, device)
        val_losses.append(val_loss)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch)
    accuracy = 0.0
    if best_state is not None:
        model.load_state_dict(best_state)
        accuracy = evaluate(model, data.test, budget.batch_size, device)[1]
    chance = 1.0 / data.num_classes
    floor = chance + FAILURE_MARGIN * (1 - chance)
    if not reason and accuracy < floor:
        reason = f"test accuracy {accuracy:.3f} below {floor:.3f} (chance {chance:.3f})"
    keep = np.unique(np.linspace(0, len(losses) - 1, min(len(losses), LOSS_POINTS)).round().astype(int))
    return RunResult(
        cell, layers, seed, accuracy, best_epoch, best_loss, bool(reason), reason,
        time.perf_counter() - started, val_losses, [losses[i] for i in keep] if losses else [],
        keep.tolist() if losses else [], grad_at_init, first_epoch,
    )  # fmt: skip


def run_path(out: Path, cell: str, layers: int, seed: int) -> Path:
    return out / "runs" / f"{cell}-L{layers}-s{seed}.json"


def sweep(
    data: SuiteData, budget: Budget, cells: list[str], layers: list[int], seeds: int, out: Path,
    progress: Progress | None = None, device: torch.device = CPU,
) -> list[RunResult]:  # fmt: skip
    """Every cell × depth × seed (seeds 0 … seeds − 1) trained on ``device``; finished runs of the same
    suite and budget in ``out`` are reused (whichever device trained them)."""
    kind = -3 if data.conv else -1  # the feature axis of the suite's cells: conv or dense
    unknown = [c for c in cells if c not in CELLS or CELLS[c].feature_dim != kind]
    if unknown:
        fitting = [name for name, cls in CELLS.items() if cls.feature_dim == kind]
        raise InputError(f"unknown {'conv' if data.conv else 'dense'} cell(s) {', '.join(unknown)} for "
                         f"{data.name}; choose from {', '.join(fitting)}")  # fmt: skip
    if not layers or min(layers) < 1 or seeds < 1:
        raise InputError(f"layers must be positive and seeds at least 1, got layers {layers}, seeds {seeds}")
    identity = json.loads(json.dumps({"suite": data.name, "budget": asdict(budget), "steps": data.steps}))
    plan = [(cell, depth, seed) for cell in cells for depth in layers for seed in range(seeds)]
    results = []
    for index, (cell, depth, seed) in enumerate(plan):
        path = run_path(out, cell, depth, seed)
        label = f"{cell} L{depth} seed {seed}"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("identity") == identity:
                results.append(RunResult(**stored["result"]))
                if progress is not None:
                    progress(index + 1, len(plan), budget.epochs, budget.epochs, label + " (done before)")
                continue
        if progress is not None:
            progress(index, len(plan), 0, budget.epochs, label)
        report = (
            None
            if progress is None
            else (lambda e, i=index, lb=label: progress(i, len(plan), e, budget.epochs, lb))
        )
        result = train_run(data, cell, depth, seed, budget, on_epoch=report, device=device)
        write_text_atomic(path, json.dumps({"identity": identity, "result": asdict(result)}) + "\n")
        results.append(result)
        if progress is not None:
            progress(index + 1, len(plan), budget.epochs, budget.epochs, label)
    return results


def results_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per run for ``results.csv``."""
    return [
        {"cell": r.cell, "layers": r.layers, "seed": r.seed, "test_accuracy": round(r.test_accuracy, 4),
         "best_epoch": r.best_epoch, "best_val_loss": round(r.best_val_loss, 4), "failed": r.failed,
         "reason": r.reason, "seconds": round(r.seconds, 1)}
        for r in results
    ]  # fmt: skip
