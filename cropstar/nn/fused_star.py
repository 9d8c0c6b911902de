"""The fused STAR layer for training: one layer of :class:`cropstar.nn.cells.STARCell`
(eq. 10–12) as one ``torch.autograd.Function`` with a hand-written backward through time.

Per layer, time-major (T, B, ·), the input terms of all steps come from one large product,
[u, a] = [W_z; W_x] x + [b_z; b_k], into a buffer the function owns; then

    z_t = tanh(u_t)                                  (eq. 10, all steps at once)
    k_t = σ(a_t + W_h h_{t−1})                       (eq. 11)
    h_t = tanh(h_{t−1} + k_t ∘ (z_t − h_{t−1}))      (eq. 12), or h_{t−1} where the step is masked

keeping only the input x, the states h_0..h_T, z and the gates k_1..k_T (in the buffer of the
products) for the backward pass, which walks back through time doing only element-wise work and one
(B × H)·(H × H) product per step, and computes the weight gradient ∂L/∂W_h = Σ_t δa_tᵀ h_{t−1} as one
large product after the loop (the plain loop makes T small ones). A masked step copies h_{t−1} back
into the rows it hides, so h_t stands for the unmasked new state n_t on every observed row, the only
rows where the backward reads it. With g_t = ∂L/∂h_t:

    δn_t = g_t on observed steps (0 on masked ones),  δp_t = δn_t ∘ (1 − n_t²)
    δz_t = δp_t ∘ k_t,  δk_t = δp_t ∘ (z_t − h_{t−1}),  δa_t = δk_t ∘ k_t ∘ (1 − k_t)
    g_{t−1} += δp_t ∘ (1 − k_t) + δa_t W_h  (+ g_t on masked steps),  δu_t = δz_t ∘ (1 − z_t²)

The factors that do not depend on g — (1 − n²) with the mask folded in, and (z − h) k (1 − k) — are
computed for all steps at once before the loop, in the gradient buffers, which then does a few
element-wise passes and the product per step. convSTAR (eq. 28–30) is the same with convolutions.

The two step loops of a dense layer on CPU run in C++ (``csrc/star_steps.cpp``, compiled at first use
by :mod:`cropstar.nn.star_steps`): in float64 the same ATen calls in the same order as
:func:`_forward_steps` and :func:`_backward_steps`; in float32 each step's element-wise work is one
loop, forward and backward (the backward computing δu, δa and the carried δp (1 − k) per step in one
pass, without the passes over all steps before and after the loop), rounding within float32 precision
of the ATen calls. The Python loops stay as the reference and as the fallback (convSTAR, other
devices, no compiler, ``CROPSTAR_NO_CPP=1``). With the C++ module, the large buffers — the products,
the states, the gradient buffers — come from a per-thread pool and are reused by the next call once
nothing holds them any more, so a training step writes no fresh memory (no page faults).

The same numbers as the reference cells (float64 gradchecks and equality tests:
tests/nn/test_fused_layers.py); the C++ loops the same as the Python ones, up to float32 rounding
(tests/nn/test_star_cpp.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from cropstar.nn.fast_star import tanh_
from cropstar.nn.star_steps import compiled_steps, reusable_empty


class STARLayer(torch.autograd.Function):
    """(x, W_in, b_in, W_h, h0, mask, padding) → outputs h_1..h_T (T, B, H[, h, w]) of one STAR layer:
    x (T, B, I) time-major (convSTAR: (T, B, C, h, w)), W_in = [W_z; W_x] and b_in = [b_z; b_k] (both
    input terms in one product), W_h (H, H), h0 (B, H[, h, w]), mask (T, B) bool or None.
    ``padding`` None: dense; else convSTAR (eq. 28–30): W_in, W_h are kernels convolved with that
    "same" padding (odd k)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W_in: Tensor, b_in: Tensor, W_h: Tensor, h0: Tensor, mask: Tensor | None,
        padding: int | None,
    ) -> Tensor:  # fmt: skip
        steps, hidden = x.shape[0], W_h.shape[0]
        flat = x.flatten(0, 1)
        if padding is None:
            ua = torch.addmm(b_in, flat, W_in.t(), out=reusable_empty((flat.shape[0], W_in.shape[0]), flat))
        else:
            ua = F.conv2d(flat, W_in, b_in, padding=padding)
        ua = ua.view(*x.shape[:2], *ua.shape[1:])  # our own buffer: z and the gates are computed in it
        z, gates = ua[:, :, :hidden], ua[:, :, hidden:]
        tanh_(z)  # eq. 10, all steps at once
        states = reusable_empty((steps + 1, *z.shape[1:]), z)  # h_0..h_T
        states[0] = h0
        compiled = _compiled_steps(x, padding)
        if compiled is None:
            _forward_steps(z, gates, states, W_h, mask, padding)
        else:
            compiled.forward_steps(z, gates, states, W_h, mask)
        ctx.padding = padding
        ctx.save_for_backward(x, W_in, W_h, ua, states, mask)
        return states[1:]

    @staticmethod
    def backward(ctx: Any, grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        x, W_in, W_h, ua, states, mask = ctx.saved_tensors
        hidden, padding = W_h.shape[0], ctx.padding
        z, gates = ua[:, :, :hidden], ua[:, :, hidden:]
        grad_ua = reusable_empty(ua.shape, ua)
        grad_z, grad_a = grad_ua[:, :, :hidden], grad_ua[:, :, hidden:]
        compiled = _compiled_steps(x, padding)
        if compiled is not None and ua.dtype == torch.float32:  # one C++ pass per step does it all
            g = compiled.train_backward_steps(grad_outputs, ua, states, W_h, mask, grad_ua)
            return _parameter_gradients(ctx.needs_input_grad, x, W_in, W_h, states, grad_ua, g, padding)
        # the factors that do not depend on the incoming gradient, for all steps at once (large passes
        # instead of small ones in the loop), in the gradient buffers the loop then scales in place:
        news = states[1:]  # n_t on observed rows; on masked ones h_{t−1}, whose 1 − n² the mask zeroes
        torch.mul(news, news, out=grad_z).neg_().add_(1)  # 1 − n², 0 on masked rows
        kept = None
        if mask is not None:
            observed = mask.view(*mask.shape, *([1] * (z.dim() - 2))).to(z.dtype)
            grad_z.mul_(observed)
            kept = None if bool(mask.all()) else 1 - observed  # masked rows pass g straight to h_{t−1}
        torch.sub(z, states[:-1], out=grad_a).mul_(gates)
        grad_a.addcmul_(grad_a, gates, value=-1)  # (z − h) k (1 − k)
        if compiled is None:
            g = _backward_steps(grad_outputs, grad_z, grad_a, gates, states, W_h, kept, padding)
        else:
            g = compiled.backward_steps(grad_outputs, grad_z, grad_a, gates, W_h, kept)
        grad_z.mul_(gates)  # δz = δp k
        z_squared = torch.square(z, out=reusable_empty(z.shape, z))
        grad_z.addcmul_(grad_z, z_squared, value=-1)  # δu = δz (1 − z²) (eq. 10)
        return _parameter_gradients(ctx.needs_input_grad, x, W_in, W_h, states, grad_ua, g, padding)


def _parameter_gradients(
    needed: tuple[bool, ...], x: Tensor, W_in: Tensor, W_h: Tensor, states: Tensor, grad_ua: Tensor, g: Tensor,
    padding: int | None,
) -> tuple[Tensor | None, ...]:  # fmt: skip
    """:meth:`STARLayer.backward`'s answer from the gradient of ua = [u, a] (δu, δa for all steps) and
    g = ∂L/∂h_0: the input gradients, ∂L/∂W_h = Σ_t δa_tᵀ h_{t−1} as one product, and g."""
    grads = _input_gradients(needed, x, W_in, grad_ua, padding)
    grad_a = grad_ua[:, :, W_h.shape[0]:].flatten(0, 1)
    previous = states[:-1].flatten(0, 1)
    if not needed[3]:
        grad_W_h = None
    elif padding is None:
        grad_W_h = grad_a.t() @ previous
    else:
        grad_W_h = conv2d_weight(previous, W_h.shape, grad_a, padding=padding)
    return *grads, grad_W_h, g, None, None  # ∂L/∂h_0 = g


def _compiled_steps(x: Tensor, padding: int | None) -> ModuleType | None:
    """The C++ step loops (:mod:`cropstar.nn.star_steps`) for a dense layer on CPU, else None."""
    return compiled_steps() if padding is None and x.device.type == "cpu" else None


def _forward_steps(
    z: Tensor, gates: Tensor, states: Tensor, W_h: Tensor, mask: Tensor | None, padding: int | None
) -> None:
    """Forward through time in place (eq. 11–12), the reference of ``csrc/star_steps.cpp``: the gates
    k_t into ``gates`` (a_t on entry), h_t into ``states[t + 1]`` (h_0 in ``states[0]``), the rows the
    mask hides at step t copied from h_{t−1}; z, gates (T, B, H[, h, w]), mask (T, B) or None."""
    W_h_t = W_h.t() if padding is None else W_h
    for t, hidden_rows in enumerate(_hidden_rows(mask, len(z))):
        h, k = states[t], gates[t]
        if padding is None:
            k.addmm_(h, W_h_t).sigmoid_()  # eq. 11: k = σ(a + W_h h)
        else:
            k.add_(F.conv2d(h, W_h, padding=padding)).sigmoid_()
        n = tanh_(torch.lerp(h, z[t], k, out=states[t + 1]))  # eq. 12: tanh(h + k∘(z − h))
        if hidden_rows is not None:
            n.index_copy_(0, hidden_rows, h.index_select(0, hidden_rows))  # a masked step keeps h


def _hidden_rows(mask: Tensor | None, steps: int) -> list[Tensor | None]:
    """Per step, the sequences (rows) the (T, B) mask hides, or None where it hides none."""
    if mask is None:
        return [None] * steps
    hidden = mask.logical_not()
    counts = hidden.sum(dim=1).tolist()
    rows = hidden.nonzero()[:, 1].split(counts)
    return [index if count else None for index, count in zip(rows, counts)]


def _backward_steps(
    grad_outputs: Tensor, grad_z: Tensor, grad_a: Tensor, gates: Tensor, states: Tensor, W_h: Tensor,
    kept: Tensor | None, padding: int | None,
) -> Tensor:  # fmt: skip
    """Backward through time, the reference of ``csrc/star_steps.cpp``: scales ``grad_z`` (1 − n², 0 on
    masked rows, on entry) to δp and ``grad_a`` ((z − h) k (1 − k) on entry) to δa in place, step by step
    from T, carrying g = ∂L/∂h_t; returns ∂L/∂h_0. kept: 1 on masked rows (T, B, 1[, 1, 1]) or None."""
    g = grad_outputs[-1].clone()  # ∂L/∂h_T
    for t in range(len(grad_outputs) - 1, -1, -1):
        if t < len(grad_outputs) - 1:
            g.add_(grad_outputs[t])  # ∂L/∂h_t: through the output and through step t + 1
        dp = grad_z[t].mul_(g)  # δp = δn (1 − n²)
        da = grad_a[t].mul_(dp)  # δa = δp (z − h) k (1 − k)
        carried = torch.addcmul(dp, dp, gates[t], value=-1)  # δp (1 − k)
        if padding is None:
            carried.addmm_(da, W_h)  # + δa W_h
        else:
            carried.add_(conv2d_input(states[t].shape, W_h, da, padding=padding))
        if kept is not None:
            carried.addcmul_(g, kept[t])
        g = carried
    return g


def _input_gradients(
    needed: tuple[bool, ...], x: Tensor, W_in: Tensor, grad_ua: Tensor, padding: int | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """∂L/∂x, ∂L/∂W_in, ∂L/∂b_in of ua = W_in x + b_in (a product or a "same" convolution)."""
    flat_x, flat = x.flatten(0, 1), grad_ua.flatten(0, 1)
    grad_x = grad_W = grad_b = None
    if padding is None:
        if needed[0]:
            grad_x = torch.mm(flat, W_in, out=reusable_empty((len(flat), W_in.shape[1]), flat)).view(x.shape)
        if needed[1]:
            grad_W = flat.t() @ flat_x
    else:
        if needed[0]:
            grad_x = conv2d_input(flat_x.shape, W_in, flat, padding=padding).view(x.shape)
        if needed[1]:
            grad_W = conv2d_weight(flat_x, W_in.shape, flat, padding=padding)
    if needed[2]:
        grad_b = flat.sum(dim=0) if padding is None else flat.sum(dim=(0, 2, 3))
    return grad_x, grad_W, grad_b


def star_layer_train(
    x: Tensor, W_z: Tensor, b_z: Tensor, W_x: Tensor, b_k: Tensor, W_h: Tensor, h0: Tensor | None,
    mask: Tensor | None, padding: int | None = None,
) -> Tensor:  # fmt: skip
    """One STAR layer over a time-major sequence x (T, B, I) (convSTAR: (T, B, C, h, w) and a
    ``padding``) with autograd: outputs (T, B, H[, h, w]), by :class:`STARLayer`."""
    if h0 is None:
        h0 = x.new_zeros(x.shape[1], W_h.shape[0], *x.shape[3:])
    return STARLayer.apply(x, torch.cat([W_z, W_x]), torch.cat([b_z, b_k]), W_h, h0, mask, padding)


def star_stack_train(
    layers: list, x: Tensor, h0: list[Tensor | None], mask: Tensor | None
) -> tuple[list[Tensor], list[Tensor]]:
    """A deep stack of :class:`~cropstar.nn.cells.STARCell` (or convSTAR cells with an odd kernel) over
    x (B, T, I) (convSTAR: (B, T, C, h, w)) batch-major, with autograd when it is enabled: every layer's
    outputs (B, T, H[, h, w]) and final states (B, H[, h, w])."""
    inputs = x.transpose(0, 1)
    time_mask = None if mask is None else mask.t().contiguous()
    outputs, finals = [], []
    for layer, state in zip(layers, h0):
        padding = None if layer.kernel_size is None else layer.kernel_size // 2
        inputs = star_layer_train(inputs, layer.W_z, layer.b_z, layer.W_x, layer.b_k, layer.W_h, state, time_mask,
                                  padding)  # fmt: skip
        outputs.append(inputs.transpose(0, 1))
        finals.append(inputs[-1])
    return outputs, finals
