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
own step code (``fused`` → ``project_input`` → ``recur``) is what is differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, vjp, vmap

from cropstar.errors import InputError
from cropstar.nn.cell import RecurrentCell
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.init import orthogonalise
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

    @classmethod
    def from_dict(cls, data: dict) -> GradientSimulation:
        """The inverse of :meth:`to_dict`, e.g. for re-plotting a saved ``simulation_{loss}.json``."""
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("hidden", "params", "hidden_std", "params_std")}
        return cls(**{**data, **arrays})


def run_generator(seed: int, run: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one run: every run draws from its own stream, so chunking changes nothing."""
    state = np.random.SeedSequence([seed, run]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def sample_runs(
    cells: list[RecurrentCell],
    num_steps: int,
    input_size: int,
    alpha: float,
    seed: int,
    runs: range,
    device: torch.device | str = "cpu",
) -> tuple[list[dict[str, Tensor]], Tensor]:
    """Weights and inputs of ``runs``, stacked on a leading run dimension.

    Per run, from :func:`run_generator`: for every layer and weight (in parameter order) a Gaussian
    matrix turned orthogonal, then the input noise ξ (T, I). Biases are zero.
    Returns per-layer parameter dictionaries and x (runs, T, I), drawn on ``device`` (a seed gives
    the same draws on the same kind of device: CPU and CUDA generators differ).
    """
    gaussians: list[dict[str, list[Tensor]]] = [{} for _ in cells]
    noise = []
    for run in runs:
        generator = run_generator(seed, run, device)
        for layer, cell in enumerate(cells):
            for name, p in cell.named_parameters():
                if not name.startswith("b"):
                    rows, cols = p.shape[-2:]
                    shape = (*p.shape[:-2], max(rows, cols), min(rows, cols))
                    gaussians[layer].setdefault(name, []).append(
                        torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
                    )
        noise.append(torch.randn(num_steps, input_size, generator=generator, device=device))
    params = []
    for layer, cell in enumerate(cells):
        sampled: dict[str, Tensor] = {}
        for name, p in cell.named_parameters():
            if name.startswith("b"):
                sampled[name] = torch.zeros(len(runs), *p.shape, device=device)
            else:
                rows, cols = p.shape[-2:]
                sampled[name] = orthogonalise(torch.stack(gaussians[layer][name]), rows, cols).float()
        params.append(sampled)
    return params, correlated_inputs(torch.stack(noise), alpha)


def correlated_inputs(xi: Tensor, alpha: float) -> Tensor:
    """x_t = α x_{t−1} + (1−α) ξ_t with x_{−1} = 0, for noise ξ (runs, T, I)."""
    xs = torch.empty_like(xi)
    previous = torch.zeros_like(xi[:, 0])
    for t in range(xi.shape[1]):
        previous = alpha * previous + (1 - alpha) * xi[:, t]
        xs[:, t] = previous
    return xs


def _lattice_stats(cells: list[RecurrentCell], loss: Loss) -> Callable:
    """The per-run function (vmapped over runs): params, x (T, I) → (hidden (L, T), params (L, T))."""
    num_layers = len(cells)
    num_states = cells[0].num_states

    def step(layer: int, fused: dict[str, Tensor], inp: Tensor, prev: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        cell = cells[layer]
        return cell.recur(cell.project_input(inp, fused), prev, fused)

    def lattice_loss(eps: Tensor, params: list[dict[str, Tensor]], x: Tensor):
        # eps: (L, T, S, H) zero perturbations added to every state; d loss / d eps = g_h.
        # Unbound once per layer: indexing eps per step would scatter a full-size gradient per step.
        inputs, prevs = [], []
        below = list(x.unbind(0))
        for layer in range(num_layers):
            fused = cells[layer].fused(params[layer])
            state = cells[layer].zero_state(below[0])
            layer_inputs, layer_prevs, outputs = [], [], []
            layer_eps = [e.unbind(0) for e in eps[layer].unbind(0)]
            for t, inp in enumerate(below):
                layer_inputs.append(inp)
                layer_prevs.append(torch.stack(state))
                new = step(layer, fused, inp, state)
                state = tuple(s + e for s, e in zip(new, layer_eps[t]))
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
                _, pullback = vjp(
                    lambda p: step(layer, cells[layer].fused(p), inp, tuple(prev.unbind(0))), params[layer]
                )
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
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> GradientSimulation:
    """Simulate gradient magnitudes across an L × T lattice of ``cell`` (paper §3.1).

    The input is the scalar process of the paper (``input_size`` 1) unless set otherwise;
    ``chunk_size`` runs are vectorised at once (default 25: fastest on a 2-core CPU; use thousands
    on a GPU ``device``); results do not depend on it. ``progress(done, runs)`` follows each chunk.
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
    per_run = vmap(_lattice_stats(cells, loss))
    hidden_runs, param_runs = [], []
    done = 0
    while done < runs:
        n = min(chunk_size, runs - done)
        params, x = sample_runs(cells, num_steps, input_size, alpha, seed, range(done, done + n), device)
        h, p = per_run(params, x)
        hidden_runs.append(h.detach().cpu())
        param_runs.append(p.detach().cpu())
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


