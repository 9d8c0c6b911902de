"""The fused STAR layer for training (issue 7): the recurrence of :class:`cropstar.nn.cells.STARCell`
(eq. 11–12) as one ``torch.autograd.Function`` with a hand-written backward through time.

Per layer, time-major (T, B, ·), the input terms of all steps come from two large products that
autograd records as usual: u = W_z x + b_z and a = W_x x + b_k. The function runs

    z_t = tanh(u_t)                                  (eq. 10, all steps at once)
    k_t = σ(a_t + W_h h_{t−1})                       (eq. 11)
    h_t = tanh(h_{t−1} + k_t ∘ (z_t − h_{t−1}))      (eq. 12), or h_{t−1} where the step is masked

keeping only the states h_0..h_T, the gates k_1..k_T (and, with a mask, the unmasked new states
n_t) for the backward pass, which walks back
through time doing only element-wise work and one (B × H)·(H × H) product per step, and computes the
weight gradient ∂L/∂W_h = Σ_t δa_tᵀ h_{t−1} as one large product after the loop (the plain loop
makes T small ones). With n_t the unmasked new state and g_t = ∂L/∂h_t:

    δn_t = g_t on observed steps (0 on masked ones),  δp_t = δn_t ∘ (1 − n_t²)
    δz_t = δp_t ∘ k_t,  δk_t = δp_t ∘ (z_t − h_{t−1}),  δa_t = δk_t ∘ k_t ∘ (1 − k_t)
    g_{t−1} += δp_t ∘ (1 − k_t) + δa_t W_h  (+ g_t on masked steps),  δu_t = δz_t ∘ (1 − z_t²)

The same numbers as the reference cell (float64 gradcheck and equality tests: tests/nn/test_fused_star.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from cropstar.nn.fast_star import tanh_


class STARRecurrence(torch.autograd.Function):
    """(u, a, W_h, h0, mask, padding) → outputs h_1..h_T (T, B, H[, h, w]); u = W_z x + b_z and
    a = W_x x + b_k (T, B, H[, h, w]) time-major, h0 (B, H[, h, w]), mask (T, B) bool or None.
    ``padding`` None: dense, W_h (H, H); else convSTAR (eq. 28–30), W_h (H, H, k, k) convolved with
    that "same" padding (odd k)."""

    @staticmethod
    def forward(
        ctx: Any, u: Tensor, a: Tensor, W_h: Tensor, h0: Tensor, mask: Tensor | None, padding: int | None
    ) -> Tensor:
        steps = u.shape[0]
        z = tanh_(u.clone())  # eq. 10, all steps at once
        states = z.new_empty(steps + 1, *z.shape[1:])  # h_0..h_T
        states[0] = h0
        gates = torch.empty_like(a)
        W_h_t = W_h.t() if padding is None else W_h
        observed = [True] * steps if mask is None else mask.all(dim=1).tolist()
        keep = None if mask is None else mask.view(*mask.shape, *([1] * (z.dim() - 2)))
        # the unmasked new states n_t, for the backward pass: the states themselves without a mask
        news = states[1:] if mask is None else torch.empty_like(a)
        for t in range(steps):
            h, k = states[t], gates[t]
            if padding is None:
                torch.addmm(a[t], h, W_h_t, out=k).sigmoid_()  # eq. 11
            else:
                torch.add(a[t], F.conv2d(h, W_h, padding=padding), out=k).sigmoid_()
            n = tanh_(torch.lerp(h, z[t], k, out=news[t]))  # eq. 12: tanh(h + k∘(z − h))
            if keep is not None and observed[t]:
                states[t + 1].copy_(n)
            elif keep is not None:
                torch.where(keep[t], n, h, out=states[t + 1])
        ctx.padding = padding
        ctx.save_for_backward(z, W_h, states, gates, news, mask)
        return states[1:]

    @staticmethod
    def backward(ctx: Any, grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        z, W_h, states, gates, news, mask = ctx.saved_tensors
        steps = z.shape[0]
        grad_z = torch.empty_like(z)
        grad_a = torch.empty_like(z)
        observed = [True] * steps if mask is None else mask.all(dim=1).tolist()
        keep = None if mask is None else mask.view(*mask.shape, *([1] * (z.dim() - 2)))
        unkept = None if mask is None else ~keep
        padding = ctx.padding
        g = grad_outputs[-1].clone()  # ∂L/∂h_T
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                g.add_(grad_outputs[t])  # ∂L/∂h_t: through the output and through step t + 1
            h_prev, k, dp = states[t], gates[t], grad_z[t]  # δp is computed in z's gradient buffer
            torch.mul(news[t], news[t], out=dp)
            torch.addcmul(g, g, dp, value=-1, out=dp)  # δp = δn (1 − n²)
            if unkept is not None and not observed[t]:
                dp.masked_fill_(unkept[t], 0.0)  # masked rows: h_t = h_{t−1}, no gradient through n_t
            da = grad_a[t]
            torch.sub(z[t], h_prev, out=da).mul_(dp).mul_(torch.addcmul(k, k, k, value=-1))  # δp (z − h) k (1 − k)
            carried = torch.addcmul(dp, dp, k, value=-1)  # δp (1 − k)
            if padding is None:
                carried.addmm_(da, W_h)  # + δa W_h
            else:
                carried.add_(conv2d_input(h_prev.shape, W_h, da, padding=padding))
            if keep is not None and not observed[t]:
                carried = torch.where(keep[t], carried, g)
            dp.mul_(k)  # δz = δp k
            g = carried
        previous = states[:-1].flatten(0, 1)  # Σ_t δa_tᵀ h_{t−1} below, as one product
        if padding is None:
            grad_W_h = grad_a.flatten(0, 1).t() @ previous
        else:
            grad_W_h = conv2d_weight(previous, W_h.shape, grad_a.flatten(0, 1), padding=padding)
        grad_u = torch.addcmul(grad_z, grad_z, z * z, value=-1)  # through eq. 10: δu = δz (1 − z²)
        return grad_u, grad_a, grad_W_h, g, None, None  # ∂L/∂h_0 = g


def star_layer_train(
    x: Tensor, W_z: Tensor, b_z: Tensor, W_x: Tensor, b_k: Tensor, W_h: Tensor, h0: Tensor | None,
    mask: Tensor | None, padding: int | None = None,
) -> Tensor:  # fmt: skip
    """One STAR layer over a time-major sequence x (T, B, I) (convSTAR: (T, B, C, h, w) and a
    ``padding``) with autograd: outputs (T, B, H[, h, w]). The input terms are two large products (or
    convolutions) autograd records; the recurrence is :class:`STARRecurrence`."""
    flat = x.flatten(0, 1)
    if padding is None:
        u = torch.addmm(b_z, flat, W_z.t())  # W_z x + b_z (eq. 10 inside)
        a = torch.addmm(b_k, flat, W_x.t())
    else:
        u, a = F.conv2d(flat, W_z, b_z, padding=padding), F.conv2d(flat, W_x, b_k, padding=padding)
    u, a = u.view(*x.shape[:2], *u.shape[1:]), a.view(*x.shape[:2], *a.shape[1:])
    if h0 is None:
        h0 = x.new_zeros(u.shape[1:])
    return STARRecurrence.apply(u, a, W_h, h0, mask, padding)


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
