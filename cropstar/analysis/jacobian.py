"""The Jacobian probe of paper §3.1: singular values of J = ∂h_t^l/∂h_t^{l−1} (input) and
H = ∂h_t^l/∂h_{t−1}^l (recurrence) at a representative point (eq. 6–9, 13–14).

At the default point — zero input, zero state, zero biases, orthogonal weights — the paper derives
all singular values 1 for the vRNN, 0.25 for the LSTM and 0.5 for STAR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev

from cropstar.errors import InputError
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.stack import make_rnn


@dataclass
class JacobianSpectrum:
    """Singular values (descending) of the input Jacobian J and the recurrent Jacobian H."""

    cell: str
    hidden_size: int
    J: np.ndarray = field(repr=False)
    H: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, float | str]:
        """min / mean / max of each spectrum, for tables."""
        out: dict[str, float | str] = {"cell": self.cell}
        for name, values in (("J", self.J), ("H", self.H)):
            out[f"{name}_min"] = float(values.min())
            out[f"{name}_mean"] = float(values.mean())
            out[f"{name}_max"] = float(values.max())
        return out


def jacobian_singular_values(
    cell: str,
    hidden_size: int = 64,
    *,
    x: Tensor | None = None,
    h_prev: Tensor | None = None,
    weight_init: str = "orthogonal",
    seed: int = 0,
) -> JacobianSpectrum:
    """Singular values of J and H for a layer of ``cell`` above the first (input size = hidden size).

    ``x`` and ``h_prev`` (both (hidden_size,)) give the point; zero by default. LSTM's cell state
    c_{t−1} is held at zero. Biases are zero; weights drawn with ``weight_init`` from ``seed``.
    """
    if cell not in DENSE_CELLS:
        raise InputError(f"the Jacobian probe takes a dense cell ({', '.join(DENSE_CELLS)}), got {cell!r}")
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global generator untouched
        torch.manual_seed(seed)
        layer = make_rnn(cell, hidden_size, hidden_size, 1, bias_init="zero", weight_init=weight_init).layers[0]
        layer = layer.double()
        layer.reset_parameters()  # drawn again in float64, so orthogonality holds to 1e-15
    zero = torch.zeros(hidden_size, dtype=torch.float64)
    x = zero if x is None else x.to(torch.float64)
    h_prev = zero if h_prev is None else h_prev.to(torch.float64)
    for name, value in (("x", x), ("h_prev", h_prev)):
        if tuple(value.shape) != (hidden_size,):
            raise InputError(f"{name} must have shape ({hidden_size},), got {tuple(value.shape)}")

    def new_h(inp: Tensor, h: Tensor) -> Tensor:
        state = (h, torch.zeros_like(h)) if layer.num_states == 2 else h
        out = layer(inp, state)
        return out[0] if isinstance(out, tuple) else out

    J, H = jacrev(new_h, argnums=(0, 1))(x, h_prev)
    with torch.no_grad():
        return JacobianSpectrum(
            cell=cell,
            hidden_size=hidden_size,
            J=torch.linalg.svdvals(J).numpy(),
            H=torch.linalg.svdvals(H).numpy(),
        )
