"""The paper's gradient-propagation simulation on the unrolled L × T lattice (§3.1, Fig. 2, 6, 7).

Protocol: zero initial states and biases, random orthogonal weights drawn anew for every run, input
x_t = α x_{t−1} + (1−α) ξ_t with ξ_t ~ N(0, I) and x_{−1} = 0, and a linear loss on the top layer:
L = Σ_i (h_T^L)_i ("final") or L = Σ_t Σ_i (h_t^L)_i ("all"). For every lattice cell (l, t) we record

* ``hidden``: ‖g_{h_t^l}‖ = ‖∂L/∂h_t^l‖, the total gradient arriving at the cell's output (eq. 4);
* ``params``: ‖(∂h_t^l/∂w)ᵀ g_{h_t^l}‖, the cell's own contribution to the gradient of its layer's
  parameters (eq. 3; for LSTM the cotangent includes the cell state's gradient, so the contributions
  add up to the true parameter gradient);

averaged over runs, with the mean-normalised standard deviation (std / mean) across runs.
The runs are vectorised with ``torch.func.vmap`` over independently drawn weights, so the cells'
own ``forward`` code is what is differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, grad, vjp, vmap

from cropstar.errors import InputError
from cropstar.nn.cell import RecurrentCell
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.init import orthogonal
from cropstar.nn.stack import make_rnn

Loss = Literal["final", "all"]
Progress = Callable[[int, int], None]


@dataclass
class GradientSimulation:
    """Per-lattice-cell gradient statistics; arrays are (L, T), row 0 the bottom layer, column 0 t=1."""

    cell: str
    num_layers: int
    num_steps: int
    hidden_size: int
    runs: int
    loss: str
    alpha: float
    seed: int
    hidden: np.ndarray = field(repr=False)
    params: np.ndarray = field(repr=False)
    hidden_std: np.ndarray = field(repr=False)
    params_std: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready: settings plus the four arrays as nested lists."""
        out = asdict(self)
        for key in ("hidden", "params", "hidden_std", "params_std"):
            out[key] = getattr(self, key).tolist()
        return out


def _sample_params(
    cells: list[RecurrentCell], runs: int, generator: torch.Generator
) -> list[dict[str, Tensor]]:
    """Per layer, every parameter with a leading run dimension: orthogonal weights, zero biases."""
    sampled = []
    for cell in cells:
        layer: dict[str, Tensor] = {}
        for name, p in cell.named_parameters():
            if name.startswith("b"):
                layer[name] = torch.zeros(runs, *p.shape)
            else:
                layer[name] = orthogonal(runs, *p.shape[:-2], rows=p.shape[-2], cols=p.shape[-1], generator=generator)
        sampled.append(layer)
    return sampled


def correlated_inputs(runs: int, steps: int, size: int, alpha: float, generator: torch.Generator) -> Tensor:
    """x_t = α x_{t−1} + (1−α) ξ_t, x_{−1} = 0: (runs, T, size)."""
    xi = torch.randn(runs, steps, size, generator=generator)
    xs = torch.empty_like(xi)
    previous = torch.zeros(runs, size)
    for t in range(steps):
        previous = alpha * previous + (1 - alpha) * xi[:, t]
        xs[:, t] = previous
    return xs


def _as_tuple(state: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (state,) if isinstance(state, Tensor) else tuple(state)


def _lattice_stats(cells: list[RecurrentCell], loss: Loss) -> Callable:
    """The per-run function (vmapped over runs): params, x (T, I) → (hidden (L, T), params (L, T))."""
    num_layers = len(cells)
    num_states = cells[0].num_states

    def step(layer: int, params: dict[str, Tensor], inp: Tensor, prev: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        cell = cells[layer]
        return _as_tuple(functional_call(cell, params, (inp, prev if num_states > 1 else prev[0])))

    def lattice_loss(eps: Tensor, params: list[dict[str, Tensor]], x: Tensor):
        # eps: (L, T, S, H) zero perturbations added to every state; d loss / d eps = g_h.
        inputs, prevs = [], []
        below = list(x.unbind(0))
        for layer in range(num_layers):
            state = cells[layer].zero_state(below[0])
            layer_inputs, layer_prevs, outputs = [], [], []
            for t, inp in enumerate(below):
                layer_inputs.append(inp)
                layer_prevs.append(torch.stack(state))
                new = step(layer, params[layer], inp, state)
                state = tuple(s + eps[layer, t, i] for i, s in enumerate(new))
                outputs.append(state[0])
            inputs.append(torch.stack(layer_inputs))
            prevs.append(torch.stack(layer_prevs))
            below = outputs
        value = below[-1].sum() if loss == "final" else torch.stack(below).sum()
        return value, (inputs, prevs)

    def per_run(params: list[dict[str, Tensor]], x: Tensor) -> tuple[Tensor, Tensor]:
        hidden_size = cells[-1].hidden_size
        eps = x.new_zeros(num_layers, x.shape[0], num_states, hidden_size)
        g, (inputs, prevs) = grad(lattice_loss, has_aux=True)(eps, params, x)
        hidden_norm = g[:, :, 0].norm(dim=-1)
        param_norms = []
        for layer in range(num_layers):

            def local_grad(inp: Tensor, prev: Tensor, cotangent: Tensor, layer: int = layer) -> Tensor:
                _, pullback = vjp(lambda p: step(layer, p, inp, tuple(prev.unbind(0))), params[layer])
                (g_params,) = pullback(tuple(cotangent.unbind(0)))
                return torch.sqrt(sum((v**2).sum() for v in g_params.values()))

            param_norms.append(vmap(local_grad)(inputs[layer], prevs[layer], g[layer]))
        return hidden_norm, torch.stack(param_norms)

    return per_run


def simulate_gradients(
    cell: str,
    num_layers: int,
    num_steps: int,
    hidden_size: int = 64,
    runs: int = 200,
    loss: Loss = "final",
    alpha: float = 0.5,
    seed: int = 0,
    *,
    input_size: int = 1,
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> GradientSimulation:
    """Simulate gradient magnitudes across an L × T lattice of ``cell`` (paper §3.1).

    The input is the scalar process of the paper (``input_size`` 1) unless set otherwise;
    ``progress(done, runs)`` is called after each chunk of runs.
    """
    if cell not in DENSE_CELLS:
        raise InputError(f"the lattice simulation takes a dense cell ({', '.join(DENSE_CELLS)}), got {cell!r}")
    if loss not in ("final", "all"):
        raise InputError(f"loss must be 'final' or 'all', got {loss!r}")
    for label, value in (("num_layers", num_layers), ("num_steps", num_steps), ("runs", runs)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{label} must be a positive integer, got {value!r}")
    template = make_rnn(cell, input_size, hidden_size, num_layers, bias_init="zero")
    cells = list(template.layers)
    chunk_size = chunk_size or min(runs, 25)  # measured fastest on 2 cores for H = 64
    generator = torch.Generator().manual_seed(seed)
    per_run = vmap(_lattice_stats(cells, loss))
    hidden_runs, param_runs = [], []
    done = 0
    while done < runs:
        n = min(chunk_size, runs - done)
        params = _sample_params(cells, n, generator)
        x = correlated_inputs(n, num_steps, input_size, alpha, generator)
        h, p = per_run(params, x)
        hidden_runs.append(h.detach())
        param_runs.append(p.detach())
        done += n
        if progress is not None:
            progress(done, runs)
    hidden = torch.cat(hidden_runs).double().numpy()
    params_norm = torch.cat(param_runs).double().numpy()
    return GradientSimulation(
        cell=cell,
        num_layers=num_layers,
        num_steps=num_steps,
        hidden_size=hidden_size,
        runs=runs,
        loss=loss,
        alpha=alpha,
        seed=seed,
        hidden=hidden.mean(0),
        params=params_norm.mean(0),
        hidden_std=_normalised_std(hidden),
        params_std=_normalised_std(params_norm),
    )


def _normalised_std(values: np.ndarray) -> np.ndarray:
    """std over runs divided by the mean over runs (0 where the mean is 0)."""
    mean = values.mean(0)
    std = values.std(0)
    return np.divide(std, mean, out=np.zeros_like(mean), where=mean > 0)


