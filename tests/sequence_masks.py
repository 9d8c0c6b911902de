"""A step mask that exercises every masking case of the recurrent layers, shared by their tests."""

from __future__ import annotations

import torch
from torch import Tensor


def awkward_mask(batch: int, steps: int) -> Tensor:
    """(batch, steps) bool, ~60% valid: a step every sequence observes (2), a sequence never observed
    (0), a final state kept from an earlier step (sequence 1's last step masked)."""
    mask = torch.rand(batch, steps, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, 2] = True
    mask[0] = False
    mask[1, -1] = False
    return mask
