"""Fused layers for the baselines of the depth sweeps: vRNN (eq. 15) and LSTM with only a forget gate
(eq. 22–24), each as one ``torch.autograd.Function`` with a hand-written backward through time, like
:mod:`cropstar.nn.fused_star` does for STAR; and :func:`fused_stack`, which runs a deep stack of any
baseline on them and on the LSTM, GRU and RHN layers of :mod:`cropstar.nn.fused_gated`.

A cell here is its element-wise step: the layer projects the inputs of all steps in one product
(u = W_x x + b, autograd as usual); the function runs a_t = u_t + W_h h_{t−1} (one product per step)
and the cell's step on a_t, keeps what its backward needs, and after the backward loop computes
∂L/∂W_h = Σ_t δa_tᵀ h_{t−1} as one large product. A masked step keeps h_{t−1} (``torch.where``).

    vRNN:     n = tanh(a)                                      δa = δn (1 − n²)
    LSTM w/f: f = σ(a_f), z = tanh(a_z), n = tanh(f h + (1 − f) z)
              δq = δn (1 − n²),  δa_f = δq (h − z) f (1 − f),  δa_z = δq (1 − f) (1 − z²),
              and δh += δq f besides the path through W_h.

Tested against the cells' own loops, values and gradients, and by float64 gradcheck
(tests/nn/test_fused_layers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from cropstar.nn.cell import State
from cropstar.nn.fast_star import tanh_
from cropstar.nn.fused_gated import GRURecurrence, LSTMRecurrence, RHNRecurrence, observed_steps


class CellStep:
    """A cell's element-wise step: ``gates`` (T, B, ·) buffers it keeps for backward, ``forward`` writes
    the unmasked new state n into ``n``, ``backward`` writes δa and returns δh besides W_h's path."""

    gate_sizes: ClassVar[tuple[int, ...]] = ()  # in multiples of the hidden size

    @staticmethod
    def forward(a: Tensor, h: Tensor, n: Tensor, gates: list[Tensor]) -> None:
        raise NotImplementedError

    @staticmethod
    def backward(g: Tensor, n: Tensor, h: Tensor, gates: list[Tensor], da: Tensor) -> Tensor | None:
        raise NotImplementedError


class VRNNStep(CellStep):
    """vRNN: n = tanh(a) (eq. 15)."""

    @staticmethod
    def forward(a: Tensor, h: Tensor, n: Tensor, gates: list[Tensor]) -> None:
        tanh_(n.copy_(a))

    @staticmethod
    def backward(g: Tensor, n: Tensor, h: Tensor, gates: list[Tensor], da: Tensor) -> Tensor | None:
        torch.addcmul(g, g, torch.mul(n, n, out=da), value=-1, out=da)  # δn (1 − n²)
        return None


class LSTMwfStep(CellStep):
    """LSTM w/f: f = σ(a_f), z = tanh(a_z), n = tanh(f∘h + (1 − f)∘z) (eq. 22–24)."""

    gate_sizes = (1, 1)  # f, z

    @staticmethod
    def forward(a: Tensor, h: Tensor, n: Tensor, gates: list[Tensor]) -> None:
        f, z = gates
        hidden = h.shape[-1]
        f.copy_(a[:, :hidden]).sigmoid_()
        tanh_(z.copy_(a[:, hidden:]))
        tanh_(torch.lerp(z, h, f, out=n))  # f h + (1 − f) z

    @staticmethod
    def backward(g: Tensor, n: Tensor, h: Tensor, gates: list[Tensor], da: Tensor) -> Tensor | None:
        f, z = gates
        hidden = h.shape[-1]
        dq = torch.addcmul(g, g, n * n, value=-1)  # δq = δn (1 − n²)
        da_f, da_z = da[:, :hidden], da[:, hidden:]
        torch.sub(h, z, out=da_f).mul_(dq).mul_(torch.addcmul(f, f, f, value=-1))  # δq (h − z) f (1 − f)
        torch.addcmul(dq, dq, f, value=-1, out=da_z).mul_(torch.addcmul(z.new_ones(()), z, z, value=-1))
        return dq.mul_(f)  # δq f: the path to h that skips W_h


class FusedRecurrence(torch.autograd.Function):
    """(u, W_h, h0, mask, step) → outputs h_1..h_T (T, B, H): u (T, B, G) the projected inputs,
    W_h (G, H) the cell's recurrent weights (gates stacked), h0 (B, H), mask (T, B) bool or None."""

    @staticmethod
    def forward(
        ctx: Any, u: Tensor, W_h: Tensor, h0: Tensor, mask: Tensor | None, step: type[CellStep]
    ) -> Tensor:
        steps, batch, _ = u.shape
        hidden = h0.shape[-1]
        states = u.new_empty(steps + 1, batch, hidden)
        states[0] = h0
        gates = [u.new_empty(steps, batch, size * hidden) for size in step.gate_sizes]
        news = states[1:] if mask is None else u.new_empty(steps, batch, hidden)
        observed, keep = observed_steps(mask, steps)
        W_h_t = W_h.t()
        for t in range(steps):
            h = states[t]
            step.forward(torch.addmm(u[t], h, W_h_t), h, news[t], [gate[t] for gate in gates])
            if keep is not None and observed[t]:
                states[t + 1].copy_(news[t])
            elif keep is not None:
                torch.where(keep[t], news[t], h, out=states[t + 1])
        ctx.step = step
        ctx.save_for_backward(W_h, states, news, mask, *gates)
        return states[1:]

    @staticmethod
    def backward(ctx: Any, grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        W_h, states, news, mask, *gates = ctx.saved_tensors
        steps = news.shape[0]
        grad_u = news.new_empty(steps, news.shape[1], W_h.shape[0])
        observed, keep = observed_steps(mask, steps)
        g = grad_outputs[-1].clone()
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                g.add_(grad_outputs[t])
            g_new = g if observed[t] else g.masked_fill(~keep[t], 0.0)  # masked rows: h_t = h_{t−1}
            direct = ctx.step.backward(g_new, news[t], states[t], [gate[t] for gate in gates], grad_u[t])
            carried = grad_u[t] @ W_h if direct is None else direct.addmm_(grad_u[t], W_h)
            g = carried if observed[t] else torch.where(keep[t], carried, g)
        flat = grad_u.reshape(-1, grad_u.shape[-1])
        grad_W_h = flat.t() @ states[:-1].reshape(-1, states.shape[-1])  # Σ_t δa_tᵀ h_{t−1}
        return grad_u, grad_W_h, g, None, None


#: The single-product cells and their steps.
FUSED_STEPS: dict[str, type[CellStep]] = {"vrnn": VRNNStep, "lstm_wf": LSTMwfStep}

#: ``run(u, fused weights, h0, c0, mask)`` → (outputs (T, B, H), final states): a layer's recurrence
#: over its projected inputs u (T, B, G); c0 only for the LSTM.
LayerRun = Callable[[Tensor, dict[str, Tensor], Tensor, Tensor | None, Tensor | None], tuple[Tensor, State]]


def _single_product(step: type[CellStep]) -> LayerRun:
    def run(
        u: Tensor, fused: dict[str, Tensor], h0: Tensor, c0: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, State]:
        outputs = FusedRecurrence.apply(u, fused["W_rec"], h0, mask, step)
        return outputs, (outputs[-1],)

    return run


def _lstm(
    u: Tensor, fused: dict[str, Tensor], h0: Tensor, c0: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, State]:
    outputs, c_final = LSTMRecurrence.apply(
        u, fused["W_rec"], h0, torch.zeros_like(h0) if c0 is None else c0, mask
    )
    return outputs, (outputs[-1], c_final)


def _gru(
    u: Tensor, fused: dict[str, Tensor], h0: Tensor, c0: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, State]:
    outputs = GRURecurrence.apply(u, fused["W_rec"], fused["W_hh"], h0, mask)
    return outputs, (outputs[-1],)


def _rhn(
    u: Tensor, fused: dict[str, Tensor], h0: Tensor, c0: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, State]:
    outputs = RHNRecurrence.apply(u, fused["R"], fused["b"], h0, mask)
    return outputs, (outputs[-1],)


#: The baselines with a fused layer.
FUSED_LAYERS: dict[str, LayerRun] = {
    **{cell: _single_product(step) for cell, step in FUSED_STEPS.items()},
    "lstm": _lstm,
    "gru": _gru,
    "rhn": _rhn,
}


def fused_stack(
    layers: list, x: Tensor, initial: list[State | None], mask: Tensor | None
) -> tuple[list[Tensor], list[State]]:
    """A deep stack of baseline cells (:data:`FUSED_LAYERS`) over x (B, T, I) batch-major, from the
    initial states (h,) or (h, c) per layer (None: zeros): every layer's outputs (B, T, H) and final
    states; with autograd when it is enabled."""
    inputs = x.transpose(0, 1)
    time_mask = None if mask is None else mask.t().contiguous()
    outputs, finals = [], []
    for layer, state in zip(layers, initial):
        fused = layer.fused()
        steps, batch = inputs.shape[0], inputs.shape[1]
        u = layer.project_input(inputs.reshape(steps * batch, -1), fused).view(steps, batch, -1)
        h0 = inputs.new_zeros(batch, layer.hidden_size) if state is None else state[0]
        c0 = None if state is None or len(state) < 2 else state[1]
        inputs, final = FUSED_LAYERS[layer.name](u, fused, h0, c0, time_mask)
        outputs.append(inputs.transpose(0, 1))
        finals.append(final)
    return outputs, finals
