"""Parameter and compute budget of a deep RNN classifier (paper appendix D, Table 2).

Counts come from the real modules (built on the meta device, so nothing is allocated): parameters
include the classifier head and exactly one bias per gate. Multiply-adds count the matrix products
(convolutions: per output pixel) — each weight element is used once per step, RHN's per-micro-step
matrices once per micro-step — plus the head; element-wise gate arithmetic is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from cropstar.errors import InputError
from cropstar.nn.stack import CELLS, make_rnn

Task = Literal["per_sequence", "per_timestep"]
DEFAULT_DEPTHS: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Budget:
    """One row of the budget table."""

    cell: str
    num_layers: int
    hidden_size: int
    input_size: int
    num_classes: int
    seq_len: int
    task: str
    parameters: int
    macs_per_step: int
    macs_per_sequence: int

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


def parameter_budget(
    cell: str,
    num_layers: int,
    hidden_size: int,
    input_size: int,
    num_classes: int,
    *,
    seq_len: int = 784,
    task: Task = "per_sequence",
    kernel_size: int = 3,
    image_size: tuple[int, int] = (1, 1),
) -> Budget:
    """Parameters and multiply-adds of ``make_rnn(cell, ...)`` plus a linear head of ``num_classes``.

    Per step: the recurrent stack (and the head for a per-time-step task). Per sequence: ``seq_len``
    steps plus, for a per-sequence task, one head evaluation. Conv cells count per pixel of
    ``image_size`` (h, w) and a linear head on the channels.
    """
    if cell not in CELLS:
        raise InputError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    if task not in ("per_sequence", "per_timestep"):
        raise InputError(f"task must be 'per_sequence' or 'per_timestep', got {task!r}")
    options: dict[str, object] = {"weight_init": "uniform", "bias_init": "zero"}
    pixels = 1
    if cell.startswith("conv_"):
        options["kernel_size"] = kernel_size
        pixels = image_size[0] * image_size[1]
    with torch.device("meta"):
        rnn = make_rnn(cell, input_size, hidden_size, num_layers, **options)
    rnn_params = sum(p.numel() for p in rnn.parameters())
    rnn_macs = pixels * sum(p.numel() for name, p in rnn.named_parameters() if not name.split(".")[-1].startswith("b"))
    head_params = hidden_size * num_classes + num_classes
    head_macs = hidden_size * num_classes
    per_step = rnn_macs + (head_macs if task == "per_timestep" else 0)
    per_sequence = seq_len * per_step + (head_macs if task == "per_sequence" else 0)
    return Budget(
        cell=cell,
        num_layers=num_layers,
        hidden_size=hidden_size,
        input_size=input_size,
        num_classes=num_classes,
        seq_len=seq_len,
        task=task,
        parameters=rnn_params + head_params,
        macs_per_step=per_step,
        macs_per_sequence=per_sequence,
    )


def budget_table(
    cells: Sequence[str],
    hidden_size: int,
    input_size: int,
    num_classes: int,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    **options,
) -> list[Budget]:
    """``parameter_budget`` for every cell × depth, cells outermost."""
    return [
        parameter_budget(cell, depth, hidden_size, input_size, num_classes, **options)
        for cell in cells
        for depth in depths
    ]
