"""An ensemble of sequence classifiers that averages their class probabilities.

Its output stays logits, so everything that reads a classifier (evaluation, maps, the service,
ONNX export) reads an ensemble alike: ``log(mean_i softmax(z_i))``, whose softmax is the members'
mean probability (and whose argmax is the averaged vote).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cropstar.nn.heads import SequenceClassifier


class EnsembleClassifier(nn.Module):
    """Members of one architecture (trained from other seeds): x (B, T, I), mask (B, T) → the log of
    their mean class probabilities, (B, C) or (B, T, C)."""

    def __init__(self, members: Sequence[SequenceClassifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        tasks = {member.task for member in members}
        if len(tasks) > 1:
            raise ValueError(f"ensemble members predict different tasks: {', '.join(sorted(tasks))}")
        self.members = nn.ModuleList(members)

    @property
    def task(self) -> str:
        return self.members[0].task

    @property
    def use_mask(self) -> bool:
        return bool(self.members[0].use_mask)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        log_probabilities = torch.stack([torch.log_softmax(member(x, mask), dim=-1) for member in self.members])
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(self.members))
