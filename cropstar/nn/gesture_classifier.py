"""The gesture-video classifier of the paper's Jester experiment (DESIGN.md "The paper's protocols":
Gestures): a deep conv RNN, its top-layer outputs averaged over time, then a 4-layer CNN head
(128, 128, 256, 256 filters) and a linear layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn.conv_cells import CONV_CELLS
from cropstar.nn.stack import DeepRNN, make_rnn

#: The paper's head: four 3×3 conv layers with these numbers of filters.
HEAD_FILTERS: tuple[int, ...] = (128, 128, 256, 256)


def masked_time_mean(outputs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over time of outputs (B, T, ...) on the valid steps of mask (B, T) → (B, ...).

    A sequence without any valid step averages to zeros.
    """
    if mask is None:
        return outputs.mean(dim=1)
    weights = mask.to(outputs.dtype).view(*mask.shape, *(1,) * (outputs.dim() - 2))
    return (outputs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class ConvHead(nn.Sequential):
    """Feature maps (B, C, h, w) → logits (B, K): per filter count a 3×3 "same" conv, ReLU and a 2×2
    max-pool (ceil mode: a 1×1 map stays 1×1), then a global average pool and a linear layer.

    The convs start He-initialised (Kaiming normal for ReLU, zero bias): PyTorch's default init leaves
    a narrow head (a few filters, for CPU budgets) dead — every ReLU of a layer off, no gradient to
    the RNN — about once in a hundred draws; He init did not in a hundred draws.
    """

    def __init__(self, in_channels: int, num_classes: int, filters: Sequence[int] = HEAD_FILTERS) -> None:
        modules: list[nn.Module] = []
        previous = in_channels
        for width in filters:
            modules += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            previous = width
        modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
        super().__init__(*modules)
        for module in self:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)


class GestureClassifier(nn.Module):
    """A conv RNN and a CNN head: x (B, T, C, h, w), mask (B, T) bool → logits (B, K).

    The RNN's top-layer outputs (B, T, H, h, w) are averaged over the valid time steps (all steps
    without a mask) and classified by :class:`ConvHead`.
    """

    task: ClassVar[str] = "per_sequence"

    def __init__(self, rnn: DeepRNN, num_classes: int, head_filters: Sequence[int] = HEAD_FILTERS) -> None:
        super().__init__()
        if not rnn.is_conv:
            raise InputError(
                f"a gesture classifier needs a conv RNN ({', '.join(CONV_CELLS)}), got {rnn.cell}"
            )
        if not isinstance(num_classes, int) or num_classes < 2:
            raise InputError(f"num_classes must be an integer ≥ 2, got {num_classes!r}")
        head_filters = tuple(head_filters)
        if not head_filters or not all(isinstance(f, int) and f >= 1 for f in head_filters):
            raise InputError(f"head_filters must be positive integers, got {head_filters!r}")
        self.rnn = rnn
        self.head = ConvHead(rnn.hidden_size, num_classes, head_filters)
        self.num_classes = num_classes
        self.head_filters = head_filters

    def features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The time-averaged top-layer outputs (B, H, h, w) that the head reads."""
        outputs, _ = self.rnn(x, mask=mask)
        assert isinstance(outputs, torch.Tensor)
        return masked_time_mean(outputs, mask)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.head(self.features(x, mask))


def make_gesture_classifier(
    cell: str,
    in_channels: int,
    *,
    filters: int = 64,
    layers: int,
    num_classes: int,
    kernel_size: int = 3,
    head_filters: Sequence[int] = HEAD_FILTERS,
    **init: Any,
) -> GestureClassifier:
    """A :class:`GestureClassifier` on a ``layers``-deep stack of ``cell`` (conv_star, conv_lstm,
    conv_lstm_wf) with ``filters`` channels per layer; ``init``: the stack's initialisation options
    (``bias_init``, ``t_max``, ``gate_bias``, ``weight_init``; :func:`cropstar.nn.make_rnn`)."""
    if cell not in CONV_CELLS:
        raise InputError(f"gesture classifiers use a conv cell ({', '.join(CONV_CELLS)}), got {cell!r}")
    rnn = make_rnn(cell, in_channels, filters, layers, kernel_size=kernel_size, **init)
    return GestureClassifier(rnn, num_classes, head_filters)
