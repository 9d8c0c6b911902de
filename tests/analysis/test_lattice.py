"""The lattice gradient simulation (paper §3.1): shapes, exact values, determinism, an independent
autograd reconstruction of both statistics, and the qualitative claims of Fig. 2 / 6."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from cropstar.analysis import GradientSimulation, simulate_gradients
from cropstar.analysis.lattice import correlated_inputs, sample_runs
from cropstar.errors import InputError
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.stack import make_rnn

ALL_DENSE = sorted(DENSE_CELLS)
TINY = {"num_layers": 3, "num_steps": 4, "hidden_size": 4, "runs": 3}


# ---- shapes and exact values -------------------------------------------------------------------
@pytest.mark.parametrize("cell", ALL_DENSE)
def test_final_loss_shapes_corner_and_positivity(cell: str) -> None:
    sim = simulate_gradients(cell, loss="final", **TINY)
    assert isinstance(sim, GradientSimulation)
    assert (sim.cell, sim.num_layers, sim.num_steps, sim.hidden_size, sim.runs, sim.loss) == (
        cell, 3, 4, 4, 3, "final",
    )
    for key in ("hidden", "params", "hidden_std", "params_std"):
        assert getattr(sim, key).shape == (3, 4), key
    # h_T^L feeds nothing but the linear sum loss, so its gradient is ones(H) in every run.
    assert sim.hidden[-1, -1] == pytest.approx(math.sqrt(4), abs=1e-6)
    assert sim.hidden_std[-1, -1] == pytest.approx(0.0, abs=1e-6)
    for key in ("hidden", "params"):
        values = getattr(sim, key)
        assert np.isfinite(values).all() and (values > 0).all(), key
    for key in ("hidden_std", "params_std"):
        values = getattr(sim, key)
        assert np.isfinite(values).all() and (values >= 0).all(), key
    # several runs with different weights: a real spread somewhere below the top-right cell
    assert sim.params_std.max() > 0


def test_all_loss_collects_more_gradient_than_final() -> None:
    """With the loss on every top state, each top cell before T gets an extra ones(H) directly."""
    final = simulate_gradients("star", loss="final", seed=3, **TINY)
    every = simulate_gradients("star", loss="all", seed=3, **TINY)
    # Same seed → same weights and inputs; the top row's hidden gradients differ for t < T.
    assert not np.allclose(final.hidden[-1, :-1], every.hidden[-1, :-1])
    assert every.hidden[-1, -1] == pytest.approx(final.hidden[-1, -1])


def test_hidden_size_sets_the_corner_value() -> None:
    sim = simulate_gradients("vrnn", 2, 3, hidden_size=9, runs=2)
    assert sim.hidden[-1, -1] == pytest.approx(3.0, abs=1e-6)


# ---- determinism -------------------------------------------------------------------------------
def test_same_seed_same_result_other_seed_differs() -> None:
    a = simulate_gradients("gru", seed=7, **TINY)
    b = simulate_gradients("gru", seed=7, **TINY)
    c = simulate_gradients("gru", seed=8, **TINY)
    for key in ("hidden", "params", "hidden_std", "params_std"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert not np.allclose(a.params, c.params)
    assert not np.allclose(a.hidden[:-1], c.hidden[:-1])


def test_global_rng_does_not_matter() -> None:
    torch.manual_seed(1)
    a = simulate_gradients("star", seed=2, **TINY)
    torch.manual_seed(99)
    b = simulate_gradients("star", seed=2, **TINY)
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("cell", ["vrnn", "lstm"])
def test_chunking_does_not_change_the_result(cell: str) -> None:
    one = simulate_gradients(cell, chunk_size=1, **TINY)
    whole = simulate_gradients(cell, chunk_size=TINY["runs"], **TINY)
    for key in ("hidden", "params", "hidden_std", "params_std"):
        np.testing.assert_allclose(getattr(one, key), getattr(whole, key), rtol=1e-5, atol=1e-7)


def test_progress_reports_runs_per_chunk() -> None:
    calls: list[tuple[int, int]] = []
    simulate_gradients("star", 2, 2, 3, runs=5, chunk_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_to_dict_is_json_ready() -> None:
    sim = simulate_gradients("lstm", **TINY)
    data = json.loads(json.dumps(sim.to_dict()))
    assert data["cell"] == "lstm" and data["runs"] == 3
    np.testing.assert_allclose(np.asarray(data["params"]), sim.params)
    assert np.asarray(data["hidden_std"]).shape == (3, 4)


# ---- independent reconstruction with plain autograd --------------------------------------------
def _hand_lattice(cell: str, layers: int, steps: int, hidden: int, input_size: int, loss: str, seed: int,
                  alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One run rebuilt by hand: the weights and input drawn as simulate_gradients draws them for
    runs=1, the lattice unrolled with a separate copy of each layer's parameters at every step.

    The gradient of the loss w.r.t. the copy used at (l, t) is exactly that cell's contribution
    (∂h_t^l/∂w)ᵀ g; retain_grad on h_t^l gives the total ‖∂L/∂h_t^l‖. Also checks that the
    per-step contributions add up, as vectors, to the gradient of the tied parameters.
    """
    cells = list(make_rnn(cell, input_size, hidden, layers, bias_init="zero").layers)
    sampled, xs = sample_runs(cells, steps, input_size, alpha, seed, range(1))
    x = xs[0]  # (T, I)

    shared = [{k: v[0].clone().requires_grad_(True) for k, v in layer.items()} for layer in sampled]
    copies = [
        [{k: v[0].detach().clone().requires_grad_(True) for k, v in layer.items()} for _ in range(steps)]
        for layer in sampled
    ]
    # Two identical graphs: one through per-step copies, one through the tied parameters.
    results = []
    for use_copies in (True, False):
        below = [x[t : t + 1] for t in range(steps)]  # batch of one
        hs: list[list[torch.Tensor]] = []
        for layer, module in enumerate(cells):
            state = module.zero_state(below[0])
            row = []
            for t in range(steps):
                params = copies[layer][t] if use_copies else shared[layer]
                prev = state if module.num_states > 1 else state[0]
                new = functional_call(module, params, (below[t], prev))
                state = (new,) if isinstance(new, torch.Tensor) else tuple(new)
                state[0].retain_grad()
                row.append(state[0])
            hs.append(row)
            below = row
        value = below[-1].sum() if loss == "final" else torch.stack(below).sum()
        value.backward()
        results.append(hs)
    hs = results[0]
    hidden_norm = np.array([[float(hs[l][t].grad.norm()) for t in range(steps)] for l in range(layers)])
    param_norm = np.array([
        [float(torch.sqrt(sum((p.grad**2).sum() for p in copies[l][t].values()))) for t in range(steps)]
        for l in range(layers)
    ])
    for layer in range(layers):  # contributions sum (as vectors) to the true gradient
        for name, tied in shared[layer].items():
            total = sum(copies[layer][t][name].grad for t in range(steps))
            torch.testing.assert_close(total, tied.grad, rtol=1e-4, atol=1e-6)
    return hidden_norm, param_norm


@pytest.mark.parametrize("cell", ALL_DENSE)
@pytest.mark.parametrize("loss", ["final", "all"])
def test_matches_hand_built_lattice(cell: str, loss: str) -> None:
    layers, steps, hidden, input_size, seed = 3, 4, 5, 2, 11
    sim = simulate_gradients(cell, layers, steps, hidden, runs=1, loss=loss, seed=seed, input_size=input_size)
    hidden_norm, param_norm = _hand_lattice(cell, layers, steps, hidden, input_size, loss, seed)
    np.testing.assert_allclose(sim.hidden, hidden_norm, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(sim.params, param_norm, rtol=1e-4, atol=1e-7)
    assert sim.hidden.shape == sim.params.shape == (layers, steps)
    assert sim.hidden[-1, -1] == pytest.approx(math.sqrt(hidden), abs=1e-6)  # ones(H) at h_T^L
    # one run: no spread
    np.testing.assert_array_equal(sim.params_std, np.zeros((layers, steps)))


def _forward_no_grad(cells, sampled, x, layers: int, steps: int) -> list[list[tuple[torch.Tensor, ...]]]:
    """states[l][t] = the state (h, or (h, c)) of layer l after step t, with the drawn weights."""
    out = []
    with torch.no_grad():
        below = [x[t : t + 1] for t in range(steps)]
        for layer in range(layers):
            params = {k: v[0] for k, v in sampled[layer].items()}
            state = cells[layer].zero_state(below[0])
            row = []
            for t in range(steps):
                new = functional_call(cells[layer], params, (below[t], state if len(state) > 1 else state[0]))
                state = (new,) if isinstance(new, torch.Tensor) else tuple(new)
                row.append(state)
            out.append(row)
            below = [s[0] for s in row]
    return out


@pytest.mark.parametrize("cell", ["lstm", "star"])
def test_top_right_contribution_is_the_last_step_gradient_of_the_top_layer(cell: str) -> None:
    """At (L−1, T−1) with the final loss, the contribution is ∇_w Σ h_T^L through the last step only."""
    layers, steps, hidden, seed = 2, 3, 4, 5
    sim = simulate_gradients(cell, layers, steps, hidden, runs=1, seed=seed)
    cells = list(make_rnn(cell, 1, hidden, layers, bias_init="zero").layers)
    sampled, xs = sample_runs(cells, steps, 1, 0.5, seed, range(1))
    x = xs[0]
    states = _forward_no_grad(cells, sampled, x, layers, steps)
    inp = states[-2][-1][0]  # h_T^{L-1}
    prev = states[-1][-2]  # the top layer's state after step T-1
    top = {k: v[0].clone().requires_grad_(True) for k, v in sampled[-1].items()}
    new = functional_call(cells[-1], top, (inp, prev if len(prev) > 1 else prev[0]))
    (new[0] if isinstance(new, tuple) else new).sum().backward()
    expected = float(torch.sqrt(sum((p.grad**2).sum() for p in top.values())))
    assert sim.params[-1, -1] == pytest.approx(expected, rel=1e-4)


def test_correlated_inputs_follow_the_ar_process() -> None:
    xi = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(4))
    xs = correlated_inputs(xi, 0.5)
    expected = torch.zeros(2, 3)
    for t in range(5):
        expected = 0.5 * expected + 0.5 * xi[:, t]
        torch.testing.assert_close(xs[:, t], expected)


def test_sampled_weights_orthogonal_and_biases_zero() -> None:
    cells = list(make_rnn("star", 1, 6, 2).layers)
    sampled, _ = sample_runs(cells, 4, 1, 0.5, 0, range(3))
    for layer in sampled:
        for name, value in layer.items():
            assert value.shape[0] == 3
            if name.startswith("b"):
                assert torch.count_nonzero(value) == 0
            else:
                rows, cols = value.shape[-2:]
                gram = value @ value.transpose(-2, -1) if rows <= cols else value.transpose(-2, -1) @ value
                eye = torch.eye(min(rows, cols)).expand_as(gram)
                torch.testing.assert_close(gram, eye, atol=1e-5, rtol=0)
    # the two runs got different weights
    assert not torch.allclose(sampled[1]["W_h"][0], sampled[1]["W_h"][1])


# ---- the paper's qualitative claims (Fig. 2 and 6) ---------------------------------------------
@pytest.fixture(scope="module")
def zero_point() -> dict[str, GradientSimulation]:
    return {
        cell: simulate_gradients(cell, 6, 8, hidden_size=16, runs=30, seed=0)
        for cell in ("vrnn", "lstm", "star")
    }


def _depth_ratio(sim: GradientSimulation, key: str = "params") -> float:
    values = getattr(sim, key)
    return float(values[0, -1] / values[-1, -1])


@pytest.mark.parametrize("key", ["params", "hidden"])
def test_vrnn_amplifies_towards_early_shallow_cells(zero_point, key: str) -> None:
    values = getattr(zero_point["vrnn"], key)
    assert values[0, 0] > values[-1, -1]


@pytest.mark.parametrize("key", ["params", "hidden"])
def test_lstm_attenuates_towards_shallow_layers(zero_point, key: str) -> None:
    values = getattr(zero_point["lstm"], key)
    assert values[0, -1] < 0.1 * values[-1, -1]


@pytest.mark.parametrize("key", ["params", "hidden"])
def test_star_depth_ratio_between_lstm_and_vrnn(zero_point, key: str) -> None:
    lstm, star, vrnn = (_depth_ratio(zero_point[c], key) for c in ("lstm", "star", "vrnn"))
    assert lstm < star < vrnn


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["conv_star", "conv_lstm", "bogus"])
def test_non_dense_cell_rejected(cell: str) -> None:
    with pytest.raises(InputError, match=cell):
        simulate_gradients(cell, 2, 2, 3, runs=1)


def test_unknown_loss_rejected() -> None:
    with pytest.raises(InputError, match="loss"):
        simulate_gradients("star", 2, 2, 3, runs=1, loss="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("runs", {"runs": 0}), ("runs", {"runs": 1.5}), ("num_layers", {"num_layers": 0}),
     ("num_steps", {"num_steps": -1})],
)
def test_non_positive_sizes_rejected(field: str, kwargs: dict) -> None:
    settings = {"cell": "star", "num_layers": 2, "num_steps": 2, "hidden_size": 3, "runs": 1} | kwargs
    with pytest.raises(InputError, match=field):
        simulate_gradients(**settings)
