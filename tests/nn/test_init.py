"""Initialisation: orthogonal weights (dense, stacked RHN and flattened conv kernels), chrono gate
biases, the zero / xavier_uniform / uniform options and their errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cropstar.errors import InputError
from cropstar.nn import CELLS, make_rnn
from cropstar.nn.init import chrono_bias, init_weight_, orthogonal

ALL_CELLS = ["star", "vrnn", "lstm", "lstm_wf", "gru", "rhn", "conv_star", "conv_lstm", "conv_lstm_wf"]
CONV = {"conv_star", "conv_lstm", "conv_lstm_wf"}


def build(name: str, i: int, h: int, **options) -> torch.nn.Module:
    if name == "rhn":
        options.setdefault("recurrence_depth", 2)
    return CELLS[name](i, h, **options)


def weights(cell: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in cell.named_parameters() if not n.startswith("b")}


def biases(cell: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in cell.named_parameters() if n.startswith("b")}


def matrices(name: str, w: Tensor) -> list[Tensor]:
    """The matrices that must be orthogonal: (out, in), each RHN depth slice, flattened conv kernels."""
    if w.dim() == 4:
        return [w.reshape(w.shape[0], -1)]
    if w.dim() == 3:
        return list(w)
    return [w]


def assert_semi_orthogonal(m: Tensor) -> None:
    m = m.double()
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    torch.testing.assert_close(gram, torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-5, rtol=0)


# ---- orthogonal weights --------------------------------------------------------------------------
@pytest.mark.parametrize(("i", "h"), [(3, 5), (6, 4), (4, 4)], ids=["tall-input", "wide-input", "square"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_every_weight_orthogonal_by_default(name: str, i: int, h: int) -> None:
    cell = build(name, i, h)
    ws = weights(cell)
    assert ws
    for pname, w in ws.items():
        for m in matrices(name, w):
            assert_semi_orthogonal(m)
        assert not torch.equal(w, torch.zeros_like(w)), pname
    # orthogonal, yet random: no two weights of the cell are equal, and no weight is the identity
    flat = [w.flatten() for w in ws.values()]
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            assert flat[a].shape != flat[b].shape or not torch.equal(flat[a], flat[b])
    for w in ws.values():
        if w.dim() == 2 and w.shape[0] == w.shape[1]:
            assert not torch.allclose(w.abs(), torch.eye(w.shape[0]))


def test_conv_kernel_orthogonal_as_flattened_matrix() -> None:
    cell = CELLS["conv_star"](2, 4, kernel_size=3)  # W_x: (4, 18) wide, rows orthonormal
    flat = cell.W_x.detach().reshape(4, -1).double()
    torch.testing.assert_close(flat @ flat.T, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    tall = CELLS["conv_star"](1, 16, kernel_size=1)  # W_x: (16, 1, 1, 1): tall, one unit column
    torch.testing.assert_close(tall.W_x.detach().reshape(16, 1).norm().item(), 1.0, atol=1e-5, rtol=0)


def test_orthogonal_function() -> None:
    q = orthogonal(3, rows=4, cols=6, dtype=torch.float64)
    assert q.shape == (3, 4, 6) and q.dtype == torch.float64
    for m in q:
        torch.testing.assert_close(m @ m.T, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert not torch.allclose(q[0], q[1])
    tall = orthogonal(rows=6, cols=4, dtype=torch.float64)
    torch.testing.assert_close(tall.T @ tall, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    a = orthogonal(rows=5, cols=5, generator=torch.Generator().manual_seed(1))
    b = orthogonal(rows=5, cols=5, generator=torch.Generator().manual_seed(1))
    c = orthogonal(rows=5, cols=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32


def test_orthogonal_is_haar_not_biased() -> None:
    """Sign-corrected QR: the diagonal of Q is symmetric around 0 (plain QR makes it biased)."""
    q = orthogonal(2000, rows=3, cols=3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    diagonal_mean = torch.diagonal(q, dim1=-2, dim2=-1).mean().item()
    assert abs(diagonal_mean) < 0.05
    assert (torch.linalg.det(q) > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_reset_parameters_restores_the_initialisation() -> None:
    cell = build("lstm", 3, 4, t_max=20)
    with torch.no_grad():
        for p in cell.parameters():
            p.fill_(0.3)
    cell.reset_parameters()
    for w in weights(cell).values():
        assert_semi_orthogonal(w)
    assert torch.equal(cell.b_i, -cell.b_f) and (cell.b_f > 0).any()
    assert torch.equal(cell.b_o, torch.zeros(4))


# ---- chrono --------------------------------------------------------------------------------------
T_MAX = 50
HID = 96
BOUND = math.log(T_MAX - 1)


def assert_chrono_positive(b: Tensor) -> None:
    """b = log U(1, T_max − 1): in [0, log(T_max − 1)], spread over it, exp(b) of mean T_max / 2."""
    assert b.shape == (HID,)
    assert (b >= 0).all() and (b <= BOUND + 1e-6).all()
    assert b.min() < 2.0 and b.max() > BOUND - 0.1
    # U(1, 49) has mean 25 (sd of a 96-mean ≈ 1.4); a log-uniform draw would give ≈ 12.3
    assert abs(b.exp().mean().item() - T_MAX / 2) < 7.0


def zero_except(cell: torch.nn.Module, *names: str) -> None:
    for n, b in biases(cell).items():
        if n not in names:
            assert torch.equal(b, torch.zeros_like(b)), n


@pytest.mark.parametrize("name", ["star", "conv_star"])
def test_chrono_star(name: str) -> None:
    cell = build(name, 2, HID, t_max=T_MAX)
    assert cell.bias_init == "chrono"
    assert_chrono_positive(-cell.b_k.detach())  # b_k in [-log(T_max-1), 0]: k weighs the new input
    zero_except(cell, "b_k")


@pytest.mark.parametrize("name", ["lstm", "conv_lstm"])
def test_chrono_lstm(name: str) -> None:
    cell = build(name, 2, HID, t_max=T_MAX)
    assert_chrono_positive(cell.b_f.detach())
    assert torch.equal(cell.b_i, -cell.b_f)
    zero_except(cell, "b_f", "b_i")


@pytest.mark.parametrize("name", ["lstm_wf", "conv_lstm_wf"])
def test_chrono_lstm_wf(name: str) -> None:
    cell = build(name, 2, HID, t_max=T_MAX)
    assert_chrono_positive(cell.b_f.detach())
    zero_except(cell, "b_f")


def test_chrono_gru() -> None:
    cell = build("gru", 2, HID, t_max=T_MAX)
    assert_chrono_positive(-cell.b_z.detach())  # z weighs the new candidate
    zero_except(cell, "b_z")


def test_chrono_rhn() -> None:
    cell = build("rhn", 2, HID, t_max=T_MAX, recurrence_depth=2)
    for d in range(2):
        assert_chrono_positive(-cell.b_T[d].detach())  # t weighs the new candidate
    assert not torch.equal(cell.b_T[0], cell.b_T[1])
    zero_except(cell, "b_T")


def test_chrono_vrnn_has_no_gate() -> None:
    cell = build("vrnn", 2, 8, t_max=T_MAX)
    zero_except(cell)


def test_chrono_weights_stay_orthogonal_and_layers_differ() -> None:
    rnn = make_rnn("star", 3, 16, 3, t_max=T_MAX)
    for layer in rnn.layers:
        assert layer.bias_init == "chrono" and (layer.b_k < 0).any()
        for w in weights(layer).values():
            assert_semi_orthogonal(w)
    assert not torch.equal(rnn.layers[1].b_k, rnn.layers[2].b_k)


def test_chrono_bias_function() -> None:
    b = chrono_bias(1000, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert b.dtype == torch.float64
    assert (b >= 0).all() and (b <= math.log(9)).all()
    again = chrono_bias(1000, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(b, again)
    assert torch.equal(chrono_bias(5, 2), torch.zeros(5))  # U(1, 1)
    with pytest.raises(ValueError, match="t_max"):
        chrono_bias(5, 1)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_bias_init_zero_overrides_t_max(name: str) -> None:
    cell = build(name, 2, 6, t_max=T_MAX, bias_init="zero")
    assert cell.bias_init == "zero"
    zero_except(cell)
    for w in weights(cell).values():
        assert not torch.equal(w, torch.zeros_like(w))


@pytest.mark.parametrize("name", ALL_CELLS)
def test_no_t_max_means_zero_biases(name: str) -> None:
    cell = build(name, 2, 6)
    assert cell.bias_init == "zero" and cell.t_max is None
    zero_except(cell)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_chrono_without_t_max_is_an_input_error(name: str) -> None:
    with pytest.raises(InputError, match="t_max"):
        build(name, 2, 6, bias_init="chrono")
    with pytest.raises(InputError, match="t_max"):
        build(name, 2, 6, t_max=1)
    with pytest.raises(InputError, match="t_max"):
        make_rnn(name, 2, 6, 2, bias_init="chrono")


@pytest.mark.parametrize("name", ["star", "conv_lstm"])
def test_unknown_schemes_are_input_errors(name: str) -> None:
    with pytest.raises(InputError, match="weight_init.*'kaiming'.*orthogonal"):
        build(name, 2, 6, weight_init="kaiming")
    with pytest.raises(InputError, match="bias_init.*'ones'.*chrono"):
        build(name, 2, 6, bias_init="ones")
    with pytest.raises(InputError, match="weight_init"):
        make_rnn(name, 2, 6, 2, weight_init="kaiming")
    with pytest.raises(ValueError, match="weight_init"):
        init_weight_(torch.empty(3, 3), "kaiming")


# ---- xavier_uniform and uniform ------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["xavier_uniform", "uniform"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_other_weight_schemes_work(name: str, scheme: str) -> None:
    cell = build(name, 3, 5, weight_init=scheme)
    assert cell.weight_init == scheme
    x = torch.randn(2, 3, 3, 4, 4) if name in CONV else torch.randn(2, 3, 3)
    out, _ = cell.run(x)
    assert torch.isfinite(out).all()
    for w in weights(cell).values():
        assert not torch.equal(w, torch.zeros_like(w))
    zero_except(cell)


@pytest.mark.parametrize("scheme", ["xavier_uniform", "uniform"])
def test_dense_weight_scheme_bounds(scheme: str) -> None:
    rows, cols = 64, 48
    cell = build("star", cols, rows, weight_init=scheme)
    w = cell.W_x.detach()  # (64, 48)
    bound = math.sqrt(6.0 / (rows + cols)) if scheme == "xavier_uniform" else 1.0 / math.sqrt(rows)
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.95 * bound  # uniform over the whole interval
    assert abs(w.mean().item()) < 0.1 * bound
    gram = w.T.double() @ w.double()
    assert not torch.allclose(gram, torch.eye(cols, dtype=torch.float64), atol=1e-2)  # not orthogonal


def test_init_weight_in_place_batched() -> None:
    w = torch.empty(2, 4, 4)
    init_weight_(w, "orthogonal")
    for m in w:
        assert_semi_orthogonal(m)
    k = torch.empty(4, 2, 3, 3)
    init_weight_(k, "orthogonal", fan_in_dims=3)
    assert_semi_orthogonal(k.reshape(4, -1))


# ---- constant gate bias ----------------------------------------------------------------------------
#: cell → (bias of the gate weighing the new input, sign of every memory-gate bias relative to it).
MEMORY_GATES = {
    "star": {"b_k": 1}, "conv_star": {"b_k": 1}, "gru": {"b_z": 1}, "rhn": {"b_T": 1},
    "lstm": {"b_i": 1, "b_f": -1}, "conv_lstm": {"b_i": 1, "b_f": -1},
    "lstm_wf": {"b_f": -1}, "conv_lstm_wf": {"b_f": -1}, "vrnn": {},
}  # fmt: skip


@pytest.mark.parametrize("name", ALL_CELLS)
@pytest.mark.parametrize("gate_bias", [-1.0, 0.5])
def test_constant_sets_the_new_input_gate_and_negates_the_old_state_gate(name: str, gate_bias: float) -> None:
    cell = build(name, 2, 6, bias_init="constant", gate_bias=gate_bias)
    assert cell.bias_init == "constant" and cell.gate_bias == gate_bias
    for bias, sign in MEMORY_GATES[name].items():
        values = getattr(cell, bias).detach()
        assert torch.equal(values, torch.full_like(values, sign * gate_bias)), bias
    zero_except(cell, *MEMORY_GATES[name])
    for w in weights(cell).values():
        for m in matrices(name, w):
            assert_semi_orthogonal(m)
    assert f"gate_bias={gate_bias:g}" in repr(cell)


def test_star_gate_bias_minus_one_gives_k_about_0_27() -> None:
    rnn = make_rnn("star", 4, 8, 3, bias_init="constant", gate_bias=-1.0)
    for layer in rnn.layers:
        assert torch.allclose(torch.sigmoid(layer.b_k), torch.full((8,), 0.2689), atol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bias_init": "constant"}, "gate_bias goes with bias_init constant .* gate_bias None"),
        ({"bias_init": "chrono", "t_max": 26, "gate_bias": -1.0}, "gate_bias .* got bias_init 'chrono'"),
        ({"gate_bias": -1.0}, "gate_bias"),
        ({"bias_init": "constant", "gate_bias": float("nan")}, "finite"),
    ],
)
def test_gate_bias_goes_with_constant_only(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build("star", 2, 6, **options)


def test_chrono_is_one_draw_after_the_weights() -> None:
    """LSTM chrono: b_i = −chrono_bias, b_f = +chrono_bias, drawn once right after the weights."""
    torch.manual_seed(3)
    cell = build("lstm", 2, 6, t_max=T_MAX)
    torch.manual_seed(3)
    reference = build("lstm", 2, 6, bias_init="zero")  # the same weight draws
    expected_b_i = -chrono_bias(6, T_MAX)  # then the chrono draw
    assert torch.equal(cell.b_i.detach(), expected_b_i) and torch.equal(cell.b_f.detach(), -expected_b_i)
    assert all(torch.equal(a, b) for a, b in zip(weights(cell).values(), weights(reference).values()))
