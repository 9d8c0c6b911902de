"""Classifier heads on top of a deep RNN (paper §5.2: task A per time step, task B per sequence)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from cropstar.nn.stack import DeepRNN


class LinearHead(nn.Module):
    """Base of the heads: one linear layer from the hidden size to the class logits."""

    task: ClassVar[str] = "custom"

    def __init__(self, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_classes)


class PerTimestepHead(LinearHead):
    """A linear classifier on every time step: outputs (B, T, H) → logits (B, T, C)."""

    task: ClassVar[str] = "per_timestep"

    def forward(self, outputs: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.linear(outputs)


class PerSequenceHead(LinearHead):
    """Mean of the outputs over valid steps, then linear: (B, T, H) → logits (B, C).

    A sequence without any valid step averages to zero features (its logits are the bias).
    """

    task: ClassVar[str] = "per_sequence"

    def forward(self, outputs: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            pooled = outputs.mean(dim=1)
        else:
            weights = mask.to(outputs.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (outputs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.linear(pooled)


class FinalStateHead(LinearHead):
    """Linear on the output of the last step (pixel MNIST, paper §5.1): (B, T, H) → (B, C).

    A masked step repeats the kept state, so the last output is that of the last valid step.
    """

    task: ClassVar[str] = "per_sequence"

    def forward(self, outputs: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.linear(outputs[:, -1])


class SequenceClassifier(nn.Module):
    """A deep RNN and a head: x (B, T, I), mask (B, T) → logits (B, C) or (B, T, C).

    ``use_mask=False``: the mask is not used (every step is read, e.g. gap-filled values on masked
    steps), in training and in inference alike.
    """

    def __init__(self, rnn: DeepRNN, head: nn.Module, use_mask: bool = True) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = head
        self.use_mask = use_mask

    @property
    def task(self) -> str:
        return str(getattr(self.head, "task", "custom"))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = mask if self.use_mask else None
        outputs, _ = self.rnn(x, mask=mask)
        assert isinstance(outputs, torch.Tensor)
        return self.head(outputs, mask)
