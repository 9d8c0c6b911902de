"""The fast STAR layer, inference path: the equations of :class:`cropstar.nn.cells.STARCell`
(eq. 10–12) without autograd bookkeeping, for every forward pass that records no gradient
(``torch.no_grad`` / ``torch.inference_mode``: classification, evaluation).

Per layer, time-major (T, B, ·):

* both input terms for all steps at once, two large products: z = tanh(W_z x + b_z) (eq. 10) and
  a_k = W_x x + b_k (the input part of eq. 11);
* in the loop over time only the recurrent product, written into a_k's own step (no new tensor),
  and in-place element-wise work: k = σ(a_k + W_h h) (eq. 11), h' = tanh(h + k∘(z − h)) (eq. 12,
  written into z's step, so z's buffer becomes the layer's outputs);
* a masked step keeps h (``torch.where``, exact); steps every sequence observes skip it.

In float32 on CPU, where STAR's C++ extension loads (:func:`cropstar.nn.star_steps.compiled_steps`;
not with ``CROPSTAR_NO_CPP`` or ``star_steps.USE_CPP = False``), the loop over time runs in C++
(``inference_steps``): after each step's recurrent product, eq. 11–12 and the masked step in ONE loop over
the B × H values instead of about eight ATen passes. Its σ is its own (vectorised exp, within 2 ulp), so
its numbers differ from the ATen loop below by float32 rounding (≲ 1e-6), not bit for bit.

The buffers of the input terms and of every layer's outputs but the top one's are kept per thread
and reused by the next call (up to :data:`WORKSPACE_MAX_BYTES` each): writing fresh large tensors
costs a page fault per page, as much as a third of a forward pass at classification batch sizes.
(The training path, :mod:`cropstar.nn.fused_star`, reuses its buffers too, through the pool of
:mod:`cropstar.nn.star_steps`, with the same limit per buffer.)

On CPU tanh is computed as 2σ(2x) − 1: torch's CPU tanh is several times slower than its sigmoid
(benchmarks/raster_speed.py). Results equal the reference cell's up to float rounding (about 1e-6 in
float32; tests/nn/test_fast_star.py).
"""

from __future__ import annotations

import threading
from math import prod
from typing import Any

import torch
from torch import Tensor

#: Sequences per pass through the stack on CPU (benchmarks/raster_speed.py: 512 ran 1.2× faster than 2048).
CPU_CHUNK = 512
#: Largest buffer kept per thread between calls (bytes); larger ones are allocated per call.
WORKSPACE_MAX_BYTES = 64 * 2**20
_workspace = threading.local()


def scratch(slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A tensor of ``shape`` (dtype and device of ``like``, contents undefined) from this thread's
    workspace ``slot``: the same memory on every call while it fits :data:`WORKSPACE_MAX_BYTES`."""
    numel = prod(shape)
    if numel * like.element_size() > WORKSPACE_MAX_BYTES:
        return like.new_empty(shape)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    key = (slot, like.dtype, like.device)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable under no_grad and inference_mode alike
            buffer = buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buffer[:numel].view(shape)


def tanh_(t: Tensor) -> Tensor:
    """tanh in place; on CPU as 2σ(2x) − 1."""
    if t.device.type != "cpu":
        return t.tanh_()
    return t.mul_(2).sigmoid_().mul_(2).sub_(1)


@torch.no_grad()
def star_layer_inference(
    x: Tensor,
    W_z: Tensor,
    b_z: Tensor,
    W_x: Tensor,
    b_k: Tensor,
    W_h: Tensor,
    h0: Tensor | None = None,
    mask: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """One STAR layer over a time-major sequence x (T, B, I) → outputs h_1..h_T (T, B, H), written
    into ``out`` if given (T·B·H elements, not overlapping x); the final state is the last output.
    h0 (B, H) (default zeros); mask (T, B) bool, False: the step keeps h."""
    steps, batch = x.shape[0], x.shape[1]
    hidden = W_h.shape[0]
    flat = x.reshape(steps * batch, x.shape[2])
    z = x.new_empty(steps * batch, hidden) if out is None else out.view(steps * batch, hidden)
    tanh_(torch.addmm(b_z, flat, W_z.t().contiguous(), out=z))  # eq. 10
    z = z.view(steps, batch, hidden)
    a_k = scratch("a_k", (steps * batch, hidden), x)
    a_k = torch.addmm(b_k, flat, W_x.t().contiguous(), out=a_k).view(steps, batch, hidden)
    W_h_t = W_h.t().contiguous()
    compiled = _compiled_inference(x)
    if compiled is not None:
        compiled.inference_steps(z, a_k, W_h_t, h0, mask)  # eq. 11–12, element-wise work fused
        return z
    keep = None if mask is None else mask.unsqueeze(-1)
    observed = [True] * steps if mask is None else mask.all(dim=1).tolist()
    h = x.new_zeros(batch, hidden) if h0 is None else h0
    for t in range(steps):
        k = torch.addmm(a_k[t], h, W_h_t, out=a_k[t]).sigmoid_()  # eq. 11
        new = tanh_(torch.lerp(h, z[t], k, out=z[t]))  # eq. 12: tanh(h + k∘(z − h))
        if not observed[t]:
            assert keep is not None
            torch.where(keep[t], new, h, out=new)
        h = new
    return z


def _compiled_inference(x: Tensor) -> Any:
    """The C++ extension module for a float32 CPU layer where it loads, else None (the ATen loop runs)."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    from cropstar.nn.star_steps import compiled_steps  # here: star_steps imports this module

    return compiled_steps()


@torch.no_grad()
def star_stack_inference(
    layers: list, x: Tensor, h0: list[Tensor | None], mask: Tensor | None, keep_all: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """A deep stack of :class:`~cropstar.nn.cells.STARCell` over x (B, T, I) batch-major: the outputs
    (B, T, H) of every layer with ``keep_all``, else of the top layer only (the others stay in this
    thread's workspace), and every layer's final state (B, H). On CPU a large batch runs :data:`CPU_CHUNK` sequences at a time (the sequences are independent),
    so each step's work stays in the core's cache."""
    if x.device.type == "cpu" and x.shape[0] > CPU_CHUNK:
        parts = [
            _stack_inference(layers, x[i : i + CPU_CHUNK], [None if s is None else s[i : i + CPU_CHUNK] for s in h0],
                             None if mask is None else mask[i : i + CPU_CHUNK], keep_all)
            for i in range(0, x.shape[0], CPU_CHUNK)
        ]  # fmt: skip
        outputs = [torch.cat([part[0][j] for part in parts]) for j in range(len(parts[0][0]))]
        finals = [torch.cat([part[1][j] for part in parts]) for j in range(len(parts[0][1]))]
        return outputs, finals
    return _stack_inference(layers, x, h0, mask, keep_all)


def _stack_inference(
    layers: list, x: Tensor, h0: list[Tensor | None], mask: Tensor | None, keep_all: bool
) -> tuple[list[Tensor], list[Tensor]]:
    batch, steps = x.shape[0], x.shape[1]
    inputs = scratch("x", (steps, batch, x.shape[2]), x).copy_(x.transpose(0, 1))
    time_mask = None if mask is None else mask.t().contiguous()
    outputs, finals = [], []
    for index, (layer, state) in enumerate(zip(layers, h0)):
        top = keep_all or index == len(layers) - 1
        out = None if top else scratch(f"out{index % 2}", (steps, batch, layer.hidden_size), x)
        inputs = star_layer_inference(inputs, layer.W_z, layer.b_z, layer.W_x, layer.b_k, layer.W_h, state,
                                      time_mask, out)  # fmt: skip
        if top:
            outputs.append(inputs.transpose(0, 1))
        finals.append(inputs[-1] if top else inputs[-1].clone())
    return outputs, finals
