"""Per-layer gradient norms of a real model at initialisation and over its first training steps
(paper §5.1, Fig. 3a/3b, with the training loss of Fig. 3c)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn.stack import DeepRNN


def cross_entropy_ignoring_missing(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy where label −1 means "ignore" (the labels contract)."""
    return nn.functional.cross_entropy(logits, labels, ignore_index=-1)


Batch = tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]


@dataclass
class LayerGradientTrace:
    """``norms[s, l]``: ‖∂loss/∂θ_l‖ of layer l (0 = bottom) at step s; row 0 is at initialisation."""

    norms: np.ndarray = field(repr=False)
    loss: np.ndarray = field(repr=False)

    @property
    def at_init(self) -> np.ndarray:
        """Fig. 3a: the per-layer norms before any update, (L,)."""
        return self.norms[0]


def _deep_rnn(model: nn.Module) -> DeepRNN:
    if isinstance(model, DeepRNN):
        return model
    rnn = getattr(model, "rnn", None)
    if not isinstance(rnn, DeepRNN):
        raise InputError(f"expected a DeepRNN or a model with a .rnn DeepRNN, got {type(model).__name__}")
    return rnn


def layer_gradient_norms(model: nn.Module) -> np.ndarray:
    """‖grad‖ over each recurrent layer's parameters after a backward pass, (L,); 0 where none."""
    norms = []
    for layer in _deep_rnn(model).layers:
        squares = [p.grad.detach().pow(2).sum() for p in layer.parameters() if p.grad is not None]
        norms.append(float(torch.stack(squares).sum().sqrt()) if squares else 0.0)
    return np.asarray(norms)


def track_layer_gradients(
    model: nn.Module,
    batches: Iterable[Batch],
    steps: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = cross_entropy_ignoring_missing,
    progress: Callable[[int, int], None] | None = None,
) -> LayerGradientTrace:
    """Train ``model`` for ``steps`` batches, recording per-layer gradient norms before each update.

    ``batches`` yields (x, y) or (x, y, mask); the model is called as ``model(x, mask)``.
    The optimiser defaults to the paper's Adam (lr 1e-3, β 0.9/0.999).
    """
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    norms, losses = [], []
    model.train()
    for step, batch in enumerate(batches):
        if step == steps:
            break
        x, y, *rest = batch
        mask = rest[0] if rest else None
        optimizer.zero_grad()
        logits = model(x, mask)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        norms.append(layer_gradient_norms(model))
        losses.append(float(loss.detach()))
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps)
    if not norms:
        raise InputError("track_layer_gradients got no batches")
    return LayerGradientTrace(norms=np.stack(norms), loss=np.asarray(losses))
