"""Fused layers for the gated baselines with more than one recurrent product or state: LSTM
(eq. 16–21), GRU (eq. 25–27) and RHN (Zilly et al. 2017), each as one ``torch.autograd.Function``
with a hand-written backward through time, like :mod:`cropstar.nn.fused_cells` for the vRNN and the
LSTM w/f.

The layer projects the inputs of all steps in one product (u = W_x x + b, autograd as usual); the
function runs the recurrence over u, time-major (T, B, ·), keeping the states and the activated
gates, and its backward walks back through time with one or two (B × G)·(G × H) products per step.
The factors that do not depend on the incoming gradient are computed for all steps at once before
the backward loop, and the weight gradients Σ_t δa_tᵀ h_{t−1} are one large product after it. A
masked step keeps every state (``torch.where``) and passes its gradient straight back.

    LSTM: [i, f, o, z] = [σ, σ, σ, tanh](u + W_h h);  c' = f c + i z (eq. 20);  h' = o tanh(c') (eq. 21)
          δo = δh' tanh c',  δc = δc' + δh' o (1 − tanh² c'),  δf = δc c,  δi = δc z,  δz = δc i,
          δc ← δc f,  δh ← δa W_h
    GRU:  [z, r] = σ(u_zr + W_{z,r} h);  q = tanh(u_q + W_hh (r h));  h' = h + z (q − h) (eq. 25–27)
          δa_z = δh' (q − h) z (1 − z),  δa_q = δh' z (1 − q²),  δ(rh) = δa_q W_hh,
          δa_r = δ(rh) h r (1 − r),  δh ← δh' (1 − z) + δ(rh) r + δa_zr W_{z,r}
    RHN:  per micro-step d (s_0 = h_{t−1}): [a_H, a_T] = u·[d = 0] + R[d] s + b[d];
          s' = tanh(a_H) t + s (1 − t), t = σ(a_T);  h_t = s_D
          δa_H = δs' t (1 − tanh²),  δa_T = δs' (tanh(a_H) − s) t (1 − t),  δs ← δs' (1 − t) + δa R[d]

Tested against the cells' own loops, values and gradients, and by float64 gradcheck
(tests/nn/test_fused_layers.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cropstar.nn.fast_star import tanh_


def observed_steps(mask: Tensor | None, steps: int) -> tuple[list[bool], Tensor | None]:
    """Per step, whether every sequence observes it; the mask as (T, B, 1) (None: no mask)."""
    if mask is None:
        return [True] * steps, None
    return mask.all(dim=1).tolist(), mask.unsqueeze(-1)


def _sigmoid_slope(gate: Tensor) -> Tensor:
    """σ'(a) = σ (1 − σ) from the activated gate σ."""
    return gate - gate * gate


def _tanh_slope(value: Tensor) -> Tensor:
    """tanh'(a) = 1 − tanh² from the activated value."""
    return 1 - value * value


class LSTMRecurrence(torch.autograd.Function):
    """(u, W_h, h0, c0, mask) → (outputs h_1..h_T (T, B, H), final cell state c_T (B, H)): u (T, B, 4H)
    the projected inputs with gates in the order i, f, o, z; W_h (4H, H); mask (T, B) bool or None."""

    @staticmethod
    def forward(
        ctx: Any, u: Tensor, W_h: Tensor, h0: Tensor, c0: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        steps, batch, _ = u.shape
        hidden = h0.shape[-1]
        gates = torch.empty_like(u)  # σ(i, f, o), tanh(z)
        h_states = u.new_empty(steps + 1, batch, hidden)
        c_states = u.new_empty(steps + 1, batch, hidden)
        tanh_c = u.new_empty(steps, batch, hidden)  # tanh of the unmasked new cell state
        h_states[0], c_states[0] = h0, c0
        observed, keep = observed_steps(mask, steps)
        W_h_t = W_h.t()
        for t in range(steps):
            h, c, g = h_states[t], c_states[t], gates[t]
            torch.addmm(u[t], h, W_h_t, out=g)
            g[:, : 3 * hidden].sigmoid_()
            tanh_(g[:, 3 * hidden :])
            i, f, o, z = g.split(hidden, dim=1)
            direct = keep is None or observed[t]  # every row observed: write the states in place
            c_new = c_states[t + 1] if direct else torch.empty_like(c)
            h_new = h_states[t + 1] if direct else torch.empty_like(h)
            torch.mul(f, c, out=c_new).addcmul_(i, z)  # eq. 20
            torch.mul(o, tanh_(tanh_c[t].copy_(c_new)), out=h_new)  # eq. 21
            if not direct:
                torch.where(keep[t], h_new, h, out=h_states[t + 1])
                torch.where(keep[t], c_new, c, out=c_states[t + 1])
        ctx.save_for_backward(W_h, h_states, c_states, gates, tanh_c, mask)
        return h_states[1:], c_states[-1].clone()

    @staticmethod
    def backward(ctx: Any, grad_outputs: Tensor, grad_c_final: Tensor | None) -> tuple[Tensor | None, ...]:
        W_h, h_states, c_states, gates, tanh_c, mask = ctx.saved_tensors
        steps, hidden = gates.shape[0], h_states.shape[-1]
        observed, keep = observed_steps(mask, steps)
        i, f, o, z = gates.split(hidden, dim=2)
        # factors without the incoming gradient, for all steps at once: δa = [δc, δc, δh', δc] × these
        factors = torch.cat(
            [
                z * _sigmoid_slope(i),
                c_states[:-1] * _sigmoid_slope(f),
                tanh_c * _sigmoid_slope(o),
                i * _tanh_slope(z),
            ],
            dim=2,
        ).view(steps, -1, 4, hidden)
        h_to_c = o * _tanh_slope(tanh_c)  # ∂h'/∂c'
        grad_u = torch.empty_like(gates)
        g_h = grad_outputs[-1].clone()
        g_c = torch.zeros_like(g_h) if grad_c_final is None else grad_c_final.clone()
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                g_h.add_(grad_outputs[t])
            if observed[t]:
                gh, gc = g_h, g_c
            else:  # masked rows: h_t = h_{t−1}, c_t = c_{t−1}
                gh, gc = g_h.masked_fill(~keep[t], 0.0), g_c.masked_fill(~keep[t], 0.0)
            dc = torch.addcmul(gc, gh, h_to_c[t])
            da = grad_u[t].view(-1, 4, hidden)
            torch.mul(factors[t], dc.unsqueeze(1), out=da)
            torch.mul(factors[t, :, 2], gh, out=da[:, 2])  # δa_o = δh' tanh c' o (1 − o)
            carried_h = grad_u[t] @ W_h
            carried_c = dc.mul_(f[t])
            if observed[t]:
                g_h, g_c = carried_h, carried_c
            else:
                g_h, g_c = torch.where(keep[t], carried_h, g_h), torch.where(keep[t], carried_c, g_c)
        grad_W_h = grad_u.flatten(0, 1).t() @ h_states[:-1].flatten(0, 1)  # Σ_t δa_tᵀ h_{t−1}
        return grad_u, grad_W_h, g_h, g_c, None


class GRURecurrence(torch.autograd.Function):
    """(u, W_zr, W_hh, h0, mask) → outputs h_1..h_T (T, B, H): u (T, B, 3H) the projected inputs with
    gates in the order z, r, candidate; W_zr = [W_hz; W_hr] (2H, H); W_hh (H, H); mask (T, B) or None."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, W_zr: Tensor, W_hh: Tensor, h0: Tensor, mask: Tensor | None) -> Tensor:
        steps, batch, _ = u.shape
        hidden = h0.shape[-1]
        gates = u.new_empty(steps, batch, 2 * hidden)  # σ(z, r)
        reset_states = u.new_empty(steps, batch, hidden)  # r ∘ h_{t−1}
        candidates = u.new_empty(steps, batch, hidden)  # q
        states = u.new_empty(steps + 1, batch, hidden)
        states[0] = h0
        observed, keep = observed_steps(mask, steps)
        W_zr_t, W_hh_t = W_zr.t(), W_hh.t()
        for t in range(steps):
            h = states[t]
            zr = torch.addmm(u[t, :, : 2 * hidden], h, W_zr_t, out=gates[t]).sigmoid_()
            z, r = zr[:, :hidden], zr[:, hidden:]
            rh = torch.mul(r, h, out=reset_states[t])
            q = tanh_(torch.addmm(u[t, :, 2 * hidden :], rh, W_hh_t, out=candidates[t]))  # eq. 26
            if keep is None or observed[t]:
                torch.lerp(h, q, z, out=states[t + 1])  # eq. 27: h + z (q − h)
            else:
                torch.where(keep[t], torch.lerp(h, q, z), h, out=states[t + 1])
        ctx.save_for_backward(W_zr, W_hh, states, gates, reset_states, candidates, mask)
        return states[1:]

    @staticmethod
    def backward(ctx: Any, grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        W_zr, W_hh, states, gates, reset_states, candidates, mask = ctx.saved_tensors
        steps, hidden = gates.shape[0], states.shape[-1]
        observed, keep = observed_steps(mask, steps)
        z, r = gates[:, :, :hidden], gates[:, :, hidden:]
        previous = states[:-1]
        # factors without the incoming gradient, for all steps at once
        z_factor = (candidates - previous).mul_(_sigmoid_slope(z))  # δa_z = δh' (q − h) z (1 − z)
        q_factor = z * _tanh_slope(candidates)  # δa_q = δh' z (1 − q²)
        r_factor = previous * _sigmoid_slope(r)  # δa_r = δ(rh) h r (1 − r)
        grad_u = torch.empty(*gates.shape[:2], 3 * hidden, dtype=gates.dtype, device=gates.device)
        g = grad_outputs[-1].clone()
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                g.add_(grad_outputs[t])
            g_new = g if observed[t] else g.masked_fill(~keep[t], 0.0)
            da_z, da_r, da_q = grad_u[t].split(hidden, dim=1)
            torch.mul(g_new, z_factor[t], out=da_z)
            torch.mul(g_new, q_factor[t], out=da_q)
            d_rh = da_q @ W_hh
            torch.mul(d_rh, r_factor[t], out=da_r)
            carried = torch.addcmul(g_new, g_new, z[t], value=-1)  # δh' (1 − z)
            carried.addcmul_(d_rh, r[t]).addmm_(grad_u[t, :, : 2 * hidden], W_zr)
            g = carried if observed[t] else torch.where(keep[t], carried, g)
        grad_W_zr = grad_u[:, :, : 2 * hidden].flatten(0, 1).t() @ previous.flatten(0, 1)
        grad_W_hh = grad_u[:, :, 2 * hidden :].flatten(0, 1).t() @ reset_states.flatten(0, 1)
        return grad_u, grad_W_zr, grad_W_hh, g, None


class RHNRecurrence(torch.autograd.Function):
    """(u, R, b, h0, mask) → outputs h_1..h_T (T, B, H) of a recurrent highway layer of depth D:
    u (T, B, 2H) = [W_H x; W_T x]; R (D, 2H, H) = [R_H; R_T] per micro-step; b (D, 2H) = [b_H; b_T]."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, R: Tensor, b: Tensor, h0: Tensor, mask: Tensor | None) -> Tensor:
        steps, batch, _ = u.shape
        depth, hidden = R.shape[0], h0.shape[-1]
        gates = u.new_empty(steps, depth, batch, 2 * hidden)  # tanh(a_H), σ(a_T)
        micro_states = u.new_empty(steps, depth + 1, batch, hidden)  # s_0 = h_{t−1} … s_D
        states = u.new_empty(steps + 1, batch, hidden)
        states[0] = h0
        observed, keep = observed_steps(mask, steps)
        for t in range(steps):
            micro_states[t, 0] = states[t]
            for d in range(depth):
                s, a = micro_states[t, d], gates[t, d]
                torch.addmm(b[d], s, R[d].t(), out=a)
                if d == 0:
                    a.add_(u[t])
                candidate, carry = tanh_(a[:, :hidden]), a[:, hidden:].sigmoid_()
                torch.lerp(s, candidate, carry, out=micro_states[t, d + 1])  # s (1 − t) + tanh(a_H) t
            if keep is None or observed[t]:
                states[t + 1] = micro_states[t, depth]
            else:
                torch.where(keep[t], micro_states[t, depth], states[t], out=states[t + 1])
        ctx.save_for_backward(R, gates, micro_states, mask)
        return states[1:]

    @staticmethod
    def backward(ctx: Any, grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        R, gates, micro_states, mask = ctx.saved_tensors
        steps, depth, hidden = micro_states.shape[0], R.shape[0], R.shape[-1]
        observed, keep = observed_steps(mask, steps)
        candidate, carry = gates[..., :hidden], gates[..., hidden:]
        inputs = micro_states[:, :-1]  # s_{d−1} of every micro-step
        # factors without the incoming gradient, for all micro-steps at once
        H_factor = carry * _tanh_slope(candidate)  # δa_H = δs' t (1 − tanh²)
        T_factor = (candidate - inputs).mul_(_sigmoid_slope(carry))  # δa_T = δs' (tanh(a_H) − s) t (1 − t)
        keep_factor = 1 - carry  # δs ← δs' (1 − t) + δa R[d]
        grad_a = torch.empty_like(gates)
        g = grad_outputs[-1].clone()
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                g.add_(grad_outputs[t])
            g_s = g if observed[t] else g.masked_fill(~keep[t], 0.0)
            for d in range(depth - 1, -1, -1):
                da = grad_a[t, d]
                torch.mul(g_s, H_factor[t, d], out=da[:, :hidden])
                torch.mul(g_s, T_factor[t, d], out=da[:, hidden:])
                g_s = torch.mul(g_s, keep_factor[t, d]).addmm_(da, R[d])
            g = g_s if observed[t] else torch.where(keep[t], g_s, g)
        grad_R = torch.stack(
            [grad_a[:, d].flatten(0, 1).t() @ inputs[:, d].flatten(0, 1) for d in range(depth)]
        )  # Σ_t δa_{t,d}ᵀ s_{t,d−1}
        grad_b = grad_a.sum(dim=(0, 2))
        return grad_a[:, 0].clone(), grad_R, grad_b, g, None
