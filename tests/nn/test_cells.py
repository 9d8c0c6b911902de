"""The dense cells against naive re-implementations of the DESIGN.md equations, PyTorch's own cells,
their exact parameter sets, float64 gradchecks and the single-step API."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from cropstar.errors import InputError
from cropstar.nn import CELLS, GRUCell, LSTMCell, LSTMwfCell, RHNCell, STARCell, VRNNCell, make_rnn
from cropstar.nn.cells import DENSE_CELLS

B, T, I, H = 3, 5, 4, 3  # I != H so that a transposed weight cannot go unnoticed
F64 = torch.float64

# (cell name, constructor options): every dense cell, RHN at recurrence depth 1 and 2
DENSE_CASES = [
    ("star", {}),
    ("vrnn", {}),
    ("lstm", {}),
    ("lstm_wf", {}),
    ("gru", {}),
    ("rhn", {"recurrence_depth": 1}),
    ("rhn", {"recurrence_depth": 2}),
]
CASE_IDS = ["star", "vrnn", "lstm", "lstm_wf", "gru", "rhn-D1", "rhn-D2"]


# ---- naive references: one step of each DESIGN.md equation, on the cell's named parameters ------
def lin(W: Tensor, v: Tensor) -> Tensor:
    """W v for a weight stored (out, in) and a batch of vectors v (B, in)."""
    return torch.einsum("oi,bi->bo", W, v)


def sig(a: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-a))


def star_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (h,) = state
    z = torch.tanh(lin(p["W_z"], x) + p["b_z"])
    k = sig(lin(p["W_x"], x) + lin(p["W_h"], h) + p["b_k"])
    return (torch.tanh((1 - k) * h + k * z),)


def vrnn_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (h,) = state
    return (torch.tanh(lin(p["W_x"], x) + lin(p["W_h"], h) + p["b"]),)


def lstm_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    h, c = state
    pre = {g: lin(p[f"W_x{g}"], x) + lin(p[f"W_h{g}"], h) + p[f"b_{g}"] for g in "ifoz"}
    i, f, o = sig(pre["i"]), sig(pre["f"]), sig(pre["o"])
    z = torch.tanh(pre["z"])
    c_new = f * c + i * z
    return o * torch.tanh(c_new), c_new


def lstm_wf_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (h,) = state
    f = sig(lin(p["W_xf"], x) + lin(p["W_hf"], h) + p["b_f"])
    z = torch.tanh(lin(p["W_xz"], x) + lin(p["W_hz"], h) + p["b_z"])
    return (torch.tanh(f * h + (1 - f) * z),)


def gru_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (h,) = state
    z = sig(lin(p["W_xz"], x) + lin(p["W_hz"], h) + p["b_z"])
    r = sig(lin(p["W_xr"], x) + lin(p["W_hr"], h) + p["b_r"])
    candidate = torch.tanh(lin(p["W_xh"], x) + lin(p["W_hh"], r * h) + p["b_h"])
    return ((1 - z) * h + z * candidate,)


def rhn_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (s,) = state
    for d in range(p["R_H"].shape[0]):
        x_H = lin(p["W_H"], x) if d == 0 else 0.0
        x_T = lin(p["W_T"], x) if d == 0 else 0.0
        hd = torch.tanh(x_H + lin(p["R_H"][d], s) + p["b_H"][d])
        td = sig(x_T + lin(p["R_T"][d], s) + p["b_T"][d])
        s = hd * td + s * (1 - td)
    return (s,)


STEPS = {"star": star_step, "vrnn": vrnn_step, "lstm": lstm_step, "lstm_wf": lstm_wf_step,
         "gru": gru_step, "rhn": rhn_step}  # fmt: skip


def reference_run(
    name: str, p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...], mask: Tensor | None = None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The layer over time: a masked step keeps the previous state."""
    outputs = []
    for t in range(x.shape[1]):
        new = STEPS[name](p, x[:, t], state)
        if mask is not None:
            new = tuple(torch.where(mask[:, t, None], n, s) for n, s in zip(new, state))
        state = new
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights and clearly non-zero random biases (|b| in [0.3, 1.2], random sign)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                magnitude = 0.3 + 0.9 * torch.rand(param.shape, generator=generator, dtype=F64)
                sign = torch.where(torch.rand(param.shape, generator=generator, dtype=F64) < 0.5, -1.0, 1.0)
                param.copy_(magnitude * sign)
            else:
                param.copy_(0.7 * torch.randn(param.shape, generator=generator, dtype=F64))


def params_of(cell: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in cell.named_parameters()}


def make_cell(name: str, opts: dict, input_size: int = I, hidden_size: int = H) -> nn.Module:
    cell = CELLS[name](input_size, hidden_size, **opts).to(F64)
    randomize_(cell, torch.Generator().manual_seed(7))
    return cell


def random_state(name: str, batch: int = B, hidden: int = H) -> tuple[Tensor, ...]:
    n = CELLS[name].num_states
    return tuple(0.5 * torch.randn(batch, hidden, dtype=F64) for _ in range(n))


# ---- 1. reference equality -----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("start", ["zero", "random"])
def test_run_equals_naive_reference(name: str, opts: dict, start: str) -> None:
    cell = make_cell(name, opts)
    x = torch.randn(B, T, I, dtype=F64)
    state = random_state(name) if start == "random" else None
    ref_state = (
        state if state is not None else tuple(torch.zeros(B, H, dtype=F64) for _ in random_state(name))
    )
    out, final = cell.run(x, state)
    ref_out, ref_final = reference_run(name, params_of(cell), x, ref_state)
    assert out.shape == (B, T, H)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    assert len(final) == len(ref_final) == CELLS[name].num_states
    for got, want in zip(final, ref_final):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
def test_biases_enter_the_equations(name: str, opts: dict) -> None:
    """Sanity of the reference test: every single bias tensor changes the output."""
    cell = make_cell(name, opts)
    x = torch.randn(B, T, I, dtype=F64)
    out, _ = cell.run(x)
    for pname, param in cell.named_parameters():
        if pname.startswith("b"):
            with torch.no_grad():
                saved = param.clone()
                param.add_(0.25)
                changed, _ = cell.run(x)
                param.copy_(saved)
            assert not torch.allclose(changed, out), f"{name}: bias {pname} has no effect"


@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
def test_stack_equals_naive_reference(name: str, opts: dict) -> None:
    layers = 3
    rnn = make_rnn(name, I, H, layers, **opts).to(F64)
    randomize_(rnn, torch.Generator().manual_seed(11))
    x = torch.randn(B, T, I, dtype=F64)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 0, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    for m in (None, mask):
        out, states = rnn(x, mask=m)
        ref, finals = x, []
        for layer in rnn.layers:
            zero = tuple(torch.zeros(B, H, dtype=F64) for _ in range(CELLS[name].num_states))
            ref, final = reference_run(name, params_of(layer), ref, zero, m)
            finals.append(final)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        states = (states,) if isinstance(states, Tensor) else states
        for i, got in enumerate(states):
            torch.testing.assert_close(got, torch.stack([f[i] for f in finals]), atol=1e-12, rtol=0)


def test_star_is_not_the_keep_gate_variant() -> None:
    """DESIGN.md: k weighs the NEW input z. With k saturated to 1 the state is tanh(z) at once."""
    cell = STARCell(2, 2).to(F64)
    with torch.no_grad():
        cell.b_k.fill_(50.0)
        cell.W_h.zero_()
        cell.W_x.zero_()
    x = torch.randn(1, 1, 2, dtype=F64)
    h0 = (torch.full((1, 2), 0.9, dtype=F64),)
    out, _ = cell.run(x, h0)
    z = torch.tanh(x[:, 0] @ cell.W_z.T + cell.b_z)
    torch.testing.assert_close(out[:, 0], torch.tanh(z), atol=1e-12, rtol=0)


# ---- 2. cross-check against PyTorch --------------------------------------------------------------
def test_lstm_equals_torch_lstmcell() -> None:
    ours = make_cell("lstm", {})
    ref = nn.LSTMCell(I, H).to(F64)
    with torch.no_grad():  # torch gate order i, f, g(=z), o; one bias per gate: bias_hh = 0
        ref.weight_ih.copy_(torch.cat([ours.W_xi, ours.W_xf, ours.W_xz, ours.W_xo]))
        ref.weight_hh.copy_(torch.cat([ours.W_hi, ours.W_hf, ours.W_hz, ours.W_ho]))
        ref.bias_ih.copy_(torch.cat([ours.b_i, ours.b_f, ours.b_z, ours.b_o]))
        ref.bias_hh.zero_()
    x = torch.randn(B, T, I, dtype=F64)
    h, c = random_state("lstm")
    out, (h_n, c_n) = ours.run(x, (h, c))
    for t in range(T):
        h, c = ref(x[:, t], (h, c))
        torch.testing.assert_close(out[:, t], h, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, h, atol=1e-12, rtol=0)
    torch.testing.assert_close(c_n, c, atol=1e-12, rtol=0)


def test_vrnn_equals_torch_rnncell() -> None:
    ours = make_cell("vrnn", {})
    ref = nn.RNNCell(I, H, nonlinearity="tanh").to(F64)
    with torch.no_grad():
        ref.weight_ih.copy_(ours.W_x)
        ref.weight_hh.copy_(ours.W_h)
        ref.bias_ih.copy_(ours.b)
        ref.bias_hh.zero_()
    x = torch.randn(B, T, I, dtype=F64)
    (h,) = random_state("vrnn")
    out, (h_n,) = ours.run(x, h)
    for t in range(T):
        h = ref(x[:, t], h)
        torch.testing.assert_close(out[:, t], h, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, h, atol=1e-12, rtol=0)


# ---- 3. exact parameter sets ---------------------------------------------------------------------
def expected_parameters(name: str, i: int, h: int, d: int = 1) -> dict[str, tuple[int, ...]]:
    def gates(letters: str) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for g in letters:
            out |= {f"W_x{g}": (h, i), f"W_h{g}": (h, h), f"b_{g}": (h,)}
        return out

    return {
        "star": {"W_z": (h, i), "b_z": (h,), "W_x": (h, i), "W_h": (h, h), "b_k": (h,)},
        "vrnn": {"W_x": (h, i), "W_h": (h, h), "b": (h,)},
        "lstm": gates("ifoz"),
        "lstm_wf": gates("fz"),
        "gru": gates("zrh"),
        "rhn": {
            "W_H": (h, i),
            "W_T": (h, i),
            "R_H": (d, h, h),
            "R_T": (d, h, h),
            "b_H": (d, h),
            "b_T": (d, h),
        },
    }[name]


def expected_count(name: str, i: int, h: int, d: int = 1) -> int:
    return {
        "star": 2 * h * i + h * h + 2 * h,
        "vrnn": h * i + h * h + h,
        "lstm": 4 * (h * i + h * h + h),
        "lstm_wf": 2 * (h * i + h * h + h),
        "gru": 3 * (h * i + h * h + h),
        "rhn": 2 * h * i + 2 * d * h * h + 2 * d * h,
    }[name]


@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
@pytest.mark.parametrize(("i", "h"), [(4, 3), (2, 5)])
def test_parameter_names_shapes_and_count(name: str, opts: dict, i: int, h: int) -> None:
    d = opts.get("recurrence_depth", 1)
    cell = CELLS[name](i, h, **opts)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == expected_parameters(name, i, h, d)
    assert sum(p.numel() for p in cell.parameters()) == expected_count(name, i, h, d)
    assert list(cell.buffers()) == []
    assert (cell.input_size, cell.hidden_size) == (i, h)


def test_parameter_count_examples() -> None:
    """Concrete numbers: STAR 2HI + H² + 2H and LSTM 4(HI + H² + H), one bias per gate."""
    assert sum(p.numel() for p in STARCell(54, 128).parameters()) == 2 * 128 * 54 + 128 * 128 + 2 * 128
    assert sum(p.numel() for p in LSTMCell(54, 128).parameters()) == 4 * (128 * 54 + 128 * 128 + 128)
    torch_lstm = sum(p.numel() for p in nn.LSTMCell(54, 128).parameters())
    assert torch_lstm - sum(p.numel() for p in LSTMCell(54, 128).parameters()) == 4 * 128  # no bias_hh


def test_registry_names() -> None:
    assert set(DENSE_CELLS) == {"star", "vrnn", "lstm", "lstm_wf", "gru", "rhn"}
    assert set(CELLS) == set(DENSE_CELLS) | {"conv_star", "conv_lstm", "conv_lstm_wf"}
    for name, cls in CELLS.items():
        assert cls.name == name
    assert (STARCell.num_states, VRNNCell.num_states, LSTMCell.num_states) == (1, 1, 2)
    assert (LSTMwfCell.num_states, GRUCell.num_states, RHNCell.num_states) == (1, 1, 1)


@pytest.mark.parametrize("bad", [0, -1, 2.0, None])
@pytest.mark.parametrize("name", list(DENSE_CELLS))
def test_bad_sizes_rejected(name: str, bad: object) -> None:
    with pytest.raises(InputError, match="input_size"):
        CELLS[name](bad, 3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="hidden_size"):
        CELLS[name](3, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [0, -2, 1.5])
def test_rhn_bad_recurrence_depth(depth: object) -> None:
    with pytest.raises(InputError, match="recurrence_depth"):
        RHNCell(3, 4, recurrence_depth=depth)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(DENSE_CELLS))
def test_kernel_size_rejected_by_dense_cell(name: str) -> None:
    with pytest.raises(InputError, match="kernel_size"):
        CELLS[name](3, 4, kernel_size=3)


# ---- 4. gradcheck --------------------------------------------------------------------------------
class _Runner(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, state: tuple[Tensor, ...], mask: Tensor | None) -> tuple[Tensor, ...]:
        out, final = self.cell.run(x, state, mask)
        return (out, *final)


@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
def test_gradcheck_inputs_state_and_parameters(name: str, opts: dict) -> None:
    b, t = 2, 3
    runner = _Runner(make_cell(name, opts))
    names = [n for n, _ in runner.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in runner.parameters()]
    x = torch.randn(b, t, I, dtype=F64, requires_grad=True)
    state = tuple(s.requires_grad_(True) for s in random_state(name, batch=b))
    mask = torch.tensor([[True, False, True], [True, True, True]])
    n_state = len(state)

    def f(x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        st, ps = rest[:n_state], rest[n_state:]
        return functional_call(runner, dict(zip(names, ps)), (x, st, mask))

    assert torch.autograd.gradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-7)


# ---- 11. the single-step API ---------------------------------------------------------------------
@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
def test_single_step_equals_run(name: str, opts: dict) -> None:
    cell = make_cell(name, opts)
    x = torch.randn(B, T, I, dtype=F64)
    state = random_state(name)
    out, final = cell.run(x, state)
    two_states = CELLS[name].num_states == 2
    step_state: Tensor | tuple[Tensor, ...] = state if two_states else state[0]
    for t in range(T):
        step_state = cell(x[:, t], step_state)
        if two_states:
            assert isinstance(step_state, tuple) and len(step_state) == 2
            h = step_state[0]
        else:
            assert isinstance(step_state, Tensor)
            h = step_state
        assert h.shape == (B, H)
        torch.testing.assert_close(h, out[:, t], atol=1e-14, rtol=0)
    final_single = step_state if two_states else (step_state,)
    for got, want in zip(final_single, final):
        torch.testing.assert_close(got, want, atol=1e-14, rtol=0)


@pytest.mark.parametrize(("name", "opts"), DENSE_CASES, ids=CASE_IDS)
def test_single_step_default_state_is_zero(name: str, opts: dict) -> None:
    cell = make_cell(name, opts)
    x_t = torch.randn(B, I, dtype=F64)
    zero = tuple(torch.zeros(B, H, dtype=F64) for _ in range(CELLS[name].num_states))
    got = cell(x_t)
    want = cell(x_t, zero if len(zero) == 2 else zero[0])
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    ref = STEPS[name](params_of(cell), x_t, zero)
    for g, w, r in zip(got_t, want_t, ref):
        assert torch.equal(g, w)
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)
    out, _ = cell.run(x_t[:, None])
    assert torch.equal(out[:, 0], got_t[0])


def test_lstm_state_must_be_a_pair() -> None:
    cell = make_cell("lstm", {})
    x = torch.randn(2, 3, I, dtype=F64)
    h = torch.randn(2, H, dtype=F64)
    with pytest.raises(InputError, match=r"\(h, c\)"):
        cell.run(x, h)
    with pytest.raises(InputError, match=r"\(h, c\)"):
        cell(x[:, 0], h)
    with pytest.raises(InputError, match="tensor h"):
        make_cell("star", {}).run(x, (h, h))
