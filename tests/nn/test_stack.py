"""The deep stack: make_rnn / DeepRNN shapes, initial states, masking, input validation, depth 20,
gradchecks of whole stacks and cross-checks against torch.nn.LSTM / nn.RNN."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from cropstar.errors import InputError
from cropstar.nn import CELLS, DeepRNN, RecurrentCell, STARCell, make_rnn

F64 = torch.float64
ALL_CELLS = ["star", "vrnn", "lstm", "lstm_wf", "gru", "rhn", "conv_star", "conv_lstm", "conv_lstm_wf"]
CONV = {"conv_star", "conv_lstm", "conv_lstm_wf"}
B, T, I, H, L = 2, 4, 3, 4, 3
SIDE = 3  # conv images SIDE x SIDE


def is_lstm(name: str) -> bool:
    return CELLS[name].num_states == 2


def data(name: str, b: int = B, t: int = T, i: int = I, dtype: torch.dtype = torch.float32) -> Tensor:
    shape = (b, t, i, SIDE, SIDE) if name in CONV else (b, t, i)
    return torch.randn(shape, dtype=dtype)


def state_shape(name: str, layers: int = L, b: int = B, h: int = H) -> tuple[int, ...]:
    return (layers, b, h, SIDE, SIDE) if name in CONV else (layers, b, h)


def random_h0(name: str, layers: int = L, b: int = B, dtype: torch.dtype = torch.float32):
    parts = tuple(
        0.5 * torch.randn(state_shape(name, layers, b), dtype=dtype) for _ in range(2 if is_lstm(name) else 1)
    )
    return parts if is_lstm(name) else parts[0]


def as_tuple(states: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (states,) if isinstance(states, Tensor) else tuple(states)


def randomize_biases_(module: nn.Module) -> None:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.copy_(0.5 * torch.randn_like(param))


# ---- 9. shapes and API ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CELLS)
def test_shapes(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    assert isinstance(rnn, DeepRNN)
    assert (rnn.num_layers, rnn.input_size, rnn.hidden_size, rnn.cell) == (L, I, H, name)
    assert all(type(layer) is CELLS[name] for layer in rnn.layers)
    assert [layer.input_size for layer in rnn.layers] == [I] + [H] * (L - 1)
    out, states = rnn(data(name))
    assert out.shape == ((B, T, H, SIDE, SIDE) if name in CONV else (B, T, H))
    if is_lstm(name):
        assert isinstance(states, tuple) and len(states) == 2
    else:
        assert isinstance(states, Tensor)
    for s in as_tuple(states):
        assert s.shape == state_shape(name)
    # without a mask the final h of every layer is its last output; the top one is out[:, -1]
    assert torch.equal(as_tuple(states)[0][-1], out[:, -1])


@pytest.mark.parametrize("name", ALL_CELLS)
def test_return_all_layers(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    rnn.fused = False  # the stack's wiring, bit for bit against the cells (fused STAR: test_fused_star.py)
    randomize_biases_(rnn)
    x = data(name)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    out, states = rnn(x, mask=mask)
    per_layer, states_all = rnn(x, mask=mask, return_all_layers=True)
    assert isinstance(per_layer, list) and len(per_layer) == L
    assert torch.equal(per_layer[-1], out)
    for a, b in zip(as_tuple(states), as_tuple(states_all), strict=True):
        assert torch.equal(a, b)
    # layer l+1 reads layer l's outputs; every layer's final h is its last output (last step valid)
    below = x
    for layer, layer_out, h_n in zip(rnn.layers, per_layer, as_tuple(states)[0], strict=True):
        ref, _ = layer.run(below, None, mask)
        assert torch.equal(ref, layer_out)
        assert torch.equal(h_n, layer_out[:, -1])
        below = layer_out
    assert not torch.equal(per_layer[0], per_layer[1])


@pytest.mark.parametrize("name", ALL_CELLS)
def test_h0_is_used_layer_by_layer(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    rnn.fused = False  # the stack's wiring, bit for bit against the cells (fused STAR: test_fused_star.py)
    x = data(name)
    h0 = random_h0(name)
    out_zero, _ = rnn(x)
    out, states = rnn(x, h0)
    assert not torch.allclose(out, out_zero)
    parts = as_tuple(h0)
    below, finals = x, []
    for layer_index, layer in enumerate(rnn.layers):
        below, final = layer.run(below, tuple(p[layer_index] for p in parts))
        finals.append(final)
    assert torch.equal(out, below)
    for i, s in enumerate(as_tuple(states)):
        assert torch.equal(s, torch.stack([f[i] for f in finals]))
    # an explicit zero h0 equals no h0
    zeros = tuple(torch.zeros_like(p) for p in parts)
    out_explicit, _ = rnn(x, zeros if is_lstm(name) else zeros[0])
    assert torch.equal(out_explicit, out_zero)


@pytest.mark.parametrize("name", ["lstm", "conv_lstm"])
def test_lstm_c0_is_used(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    x = data(name)
    h0, c0 = random_h0(name)
    out_a, _ = rnn(x, (h0, c0))
    out_b, _ = rnn(x, (h0, torch.zeros_like(c0)))
    assert not torch.allclose(out_a, out_b)


# ---- 5. masking ----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_masked_steps_keep_every_layers_state_bitwise(name: str, with_h0: bool) -> None:
    rnn = make_rnn(name, I, H, L)
    randomize_biases_(rnn)
    x = data(name, t=6)
    mask = torch.tensor([[False, True, False, False, True, False], [True, False, True, True, False, True]])
    h0 = random_h0(name) if with_h0 else None
    per_layer, states = rnn(x, h0, mask=mask, return_all_layers=True)
    initial_h = as_tuple(h0)[0] if h0 is not None else torch.zeros(state_shape(name))
    for layer_index, out in enumerate(per_layer):
        for b in range(B):
            for t in range(6):
                previous = out[b, t - 1] if t > 0 else initial_h[layer_index, b]
                if not mask[b, t]:
                    assert torch.equal(out[b, t], previous), (layer_index, b, t)
                else:
                    assert not torch.equal(out[b, t], previous), (layer_index, b, t)
    # the final h is the output of the last valid step
    last_valid = [4, 5]
    for b in range(B):
        assert torch.equal(as_tuple(states)[0][:, b], torch.stack([o[b, last_valid[b]] for o in per_layer]))


@pytest.mark.parametrize("name", ALL_CELLS)
def test_fully_masked_sequence_returns_h0(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    h0 = random_h0(name)
    out, states = rnn(data(name), h0, mask=torch.zeros(B, T, dtype=torch.bool))
    for got, want in zip(as_tuple(states), as_tuple(h0), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(out, as_tuple(h0)[0][-1][:, None].expand_as(out))


def project_step_by_step_(rnn: DeepRNN, monkeypatch: pytest.MonkeyPatch) -> None:
    """Project the input one time step at a time instead of in one product over all B·T rows.

    BLAS may round a row of a matrix product differently (by one ulp) depending on how many rows the
    product has, so sequences of different lengths can differ in the last bit before any recurrence
    happens. Per-step products have the same shape in both runs, which isolates the masking logic.
    """
    for layer in rnn.layers:

        def per_step(x: Tensor, fused: dict[str, Tensor], layer: RecurrentCell = layer) -> Tensor:
            steps = [RecurrentCell.project_input(layer, x[:, t], fused) for t in range(x.shape[1])]
            return torch.stack(steps, dim=1)

        monkeypatch.setattr(layer, "project_input", per_step)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_inserted_masked_steps_change_nothing(name: str, dtype: torch.dtype, monkeypatch) -> None:
    """A sequence with masked steps inserted ends in exactly the state of the sequence without them."""
    rnn = make_rnn(name, I, H, L).to(dtype)
    randomize_biases_(rnn)
    x = data(name, t=7, dtype=dtype)
    valid_steps = [[1, 2, 4, 6], [0, 2, 3, 5]]  # 4 valid steps each, at different places
    mask = torch.zeros(B, 7, dtype=torch.bool)
    for b, steps in enumerate(valid_steps):
        mask[b, steps] = True
    h0 = random_h0(name, dtype=dtype)
    compact = torch.stack([x[b, steps] for b, steps in enumerate(valid_steps)])
    x_noisy = x.clone()
    x_noisy[~mask] = 1e6  # extreme values on masked steps must not leak into the state
    x_nan = x.clone()
    x_nan[~mask] = float("nan")  # nor may NaNs (forward only: gradients need gap-filled inputs)

    # the library's fused path: equal up to the rounding of the one input product
    fused_full, fused_states = rnn(x_noisy, h0, mask=mask)
    fused_compact, fused_compact_states = rnn(compact, h0)
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    for got, want in zip(as_tuple(fused_states), as_tuple(fused_compact_states), strict=True):
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
    for b, steps in enumerate(valid_steps):
        torch.testing.assert_close(fused_full[b, steps], fused_compact[b], atol=tol, rtol=0)

    # with per-step input products the two runs of the cells' own loop are bitwise equal
    rnn.fused = False
    project_step_by_step_(rnn, monkeypatch)
    out_compact, states_compact = rnn(compact, h0)
    for x_in in (x, x_noisy, x_nan):
        out_full, states_full = rnn(x_in, h0, mask=mask)
        for got, want in zip(as_tuple(states_full), as_tuple(states_compact), strict=True):
            assert torch.equal(got, want)
        for b, steps in enumerate(valid_steps):
            assert torch.equal(out_full[b, steps], out_compact[b])


# ---- 9. input validation -------------------------------------------------------------------------
def test_unknown_cell_lists_the_valid_names() -> None:
    with pytest.raises(InputError) as info:
        make_rnn("transformer", I, H, L)
    message = str(info.value)
    assert "transformer" in message
    for name in ALL_CELLS:
        assert name in message


@pytest.mark.parametrize("option", ["hidden_units", "dropout"])
def test_unknown_option_is_named(option: str) -> None:
    with pytest.raises(InputError, match=option):
        make_rnn("star", I, H, L, **{option: 1})


@pytest.mark.parametrize("name", ["star", "vrnn", "lstm", "lstm_wf", "gru", "rhn"])
def test_kernel_size_rejected_for_dense_cells(name: str) -> None:
    with pytest.raises(InputError, match="kernel_size"):
        make_rnn(name, I, H, L, kernel_size=3)


@pytest.mark.parametrize("name", ["star", "lstm", "conv_star"])
def test_recurrence_depth_only_for_rhn(name: str) -> None:
    with pytest.raises(InputError, match="recurrence_depth"):
        make_rnn(name, I, H, L, recurrence_depth=2)
    assert make_rnn("rhn", I, H, 2, recurrence_depth=2).layers[1].R_H.shape == (2, H, H)


def test_options_reach_every_layer() -> None:
    rnn = make_rnn("conv_star", I, H, 2, kernel_size=5, weight_init="uniform", t_max=10)
    for layer in rnn.layers:
        assert layer.kernel_size == 5 and layer.W_h.shape == (H, H, 5, 5)
        assert (layer.weight_init, layer.bias_init, layer.t_max) == ("uniform", "chrono", 10)


@pytest.mark.parametrize("layers", [0, -1, 2.0])
def test_bad_num_layers(layers: object) -> None:
    with pytest.raises(InputError, match="num_layers"):
        make_rnn("star", I, H, layers)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least one layer"):
        DeepRNN([])


@pytest.mark.parametrize("name", ["star", "lstm", "conv_star"])
def test_wrong_feature_count_names_expected_and_found(name: str) -> None:
    rnn = make_rnn(name, 5, H, L)
    x = data(name, i=7)
    with pytest.raises(InputError) as info:
        rnn(x)
    message = str(info.value)
    assert re.search(r"\b5\b", message) and re.search(r"\b7\b", message), message
    assert "expected" in message


@pytest.mark.parametrize("name", ["star", "conv_star"])
def test_wrong_rank_rejected(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    x = data(name)
    with pytest.raises(InputError, match="x must be"):
        rnn(x[:, 0])
    with pytest.raises(InputError, match="no time steps"):
        rnn(x[:, :0])


@pytest.mark.parametrize("name", ["star", "lstm", "conv_lstm"])
def test_wrong_mask_rejected(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    x = data(name)
    with pytest.raises(InputError, match=r"mask must be \(B, T\) = \(2, 4\), got \(2, 3\)"):
        rnn(x, mask=torch.ones(B, T - 1, dtype=torch.bool))
    with pytest.raises(InputError, match="mask"):
        rnn(x, mask=torch.ones(B, dtype=torch.bool))
    with pytest.raises(InputError, match="bool"):
        rnn(x, mask=torch.ones(B, T))


@pytest.mark.parametrize("name", ALL_CELLS)
def test_wrong_h0_rejected(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    x = data(name)
    good = as_tuple(random_h0(name))
    bad_shapes = [
        state_shape(name, layers=L - 1),  # too few layers
        state_shape(name, b=B + 1),  # wrong batch
        (L, B, H + 1) + ((SIDE, SIDE) if name in CONV else ()),  # wrong hidden size
    ]
    for shape in bad_shapes:
        parts = (torch.zeros(shape),) + good[1:]
        with pytest.raises(InputError, match=r"initial state must be") as info:
            rnn(x, parts if is_lstm(name) else parts[0])
        assert str(tuple(shape)) in str(info.value)
        assert str(state_shape(name)) in str(info.value)
    if is_lstm(name):
        with pytest.raises(InputError, match=r"\(h0, c0\)"):
            rnn(x, good[0])
    else:
        with pytest.raises(InputError, match=r"\(L, B, H\)"):
            rnn(x, (good[0], good[0]))


# ---- 6. depth 20 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CELLS)
def test_depth_20_forward_backward(name: str) -> None:
    depth = 20
    rnn = make_rnn(name, 2, 3, depth, t_max=3) if name != "vrnn" else make_rnn(name, 2, 3, depth)
    x = data(name, b=2, t=3, i=2)
    out, states = rnn(x, mask=torch.tensor([[True, False, True], [True, True, True]]))
    assert torch.isfinite(out).all()
    (out.sum() + sum(s.sum() for s in as_tuple(states))).backward()
    # distinct layers: distinct modules, no parameter storage shared anywhere
    assert len({id(layer) for layer in rnn.layers}) == depth
    params = list(rnn.parameters())
    assert len(params) == depth * len(list(rnn.layers[0].parameters()))
    assert len({p.data_ptr() for p in params}) == len(params)
    # independently initialised: the recurrent weights of two layers differ
    first, second = (dict(layer.named_parameters()) for layer in rnn.layers[1:3])
    recurrent = next(n for n in first if n.startswith(("W_h", "R_")))
    assert not torch.equal(first[recurrent], second[recurrent])
    for index, layer in enumerate(rnn.layers):
        for pname, param in layer.named_parameters():
            assert param.grad is not None, (index, pname)
            assert torch.isfinite(param.grad).all(), (index, pname)
        assert any(p.grad.abs().sum() > 0 for p in layer.parameters()), index


# ---- 4. gradcheck of whole stacks ----------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CELLS)
def test_gradcheck_stack_with_mask_and_h0(name: str) -> None:
    b, t, i, h = 2, 3, 2, 2
    rnn = make_rnn(name, i, h, 3).to(F64)
    randomize_biases_(rnn)
    names = [n for n, _ in rnn.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in rnn.parameters()]
    x = data(name, b=b, t=t, i=i, dtype=F64).requires_grad_(True)
    shape = (3, b, h, SIDE, SIDE) if name in CONV else (3, b, h)
    h0 = tuple(0.5 * torch.randn(shape, dtype=F64, requires_grad=True) for _ in range(CELLS[name].num_states))
    mask = torch.tensor([[True, False, True], [False, True, True]])
    n = len(h0)

    def f(x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        state = rest[:n] if n == 2 else rest[0]
        out, states = functional_call(rnn, dict(zip(names, rest[n:])), (x, state, mask))
        return (out, *as_tuple(states))

    assert torch.autograd.gradcheck(f, (x, *h0, *params), eps=1e-6, atol=1e-7)


# ---- 2. cross-check stacks against PyTorch -------------------------------------------------------
@pytest.mark.parametrize("name", ["lstm", "vrnn"])
def test_stack_equals_torch_multilayer(name: str) -> None:
    ours = make_rnn(name, I, H, L).to(F64)
    randomize_biases_(ours)
    ref = (nn.LSTM if name == "lstm" else nn.RNN)(I, H, L, batch_first=True).to(F64)
    with torch.no_grad():
        for index, layer in enumerate(ours.layers):
            if name == "lstm":
                w_ih = torch.cat([layer.W_xi, layer.W_xf, layer.W_xz, layer.W_xo])
                w_hh = torch.cat([layer.W_hi, layer.W_hf, layer.W_hz, layer.W_ho])
                b_ih = torch.cat([layer.b_i, layer.b_f, layer.b_z, layer.b_o])
            else:
                w_ih, w_hh, b_ih = layer.W_x, layer.W_h, layer.b
            getattr(ref, f"weight_ih_l{index}").copy_(w_ih)
            getattr(ref, f"weight_hh_l{index}").copy_(w_hh)
            getattr(ref, f"bias_ih_l{index}").copy_(b_ih)
            getattr(ref, f"bias_hh_l{index}").zero_()
    x = torch.randn(B, T, I, dtype=F64)
    h0 = random_h0(name, dtype=F64)
    out, states = ours(x, h0)
    ref_out, ref_states = ref(x, h0)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    for got, want in zip(as_tuple(states), as_tuple(ref_states), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_hand_built_stack() -> None:
    """DeepRNN accepts cells built by hand; its attributes come from the layers."""
    layers = [STARCell(I, H), STARCell(H, H)]
    rnn = DeepRNN(layers)
    assert rnn.num_layers == 2 and rnn.layers[0] is layers[0] and not rnn.is_conv
    out, states = rnn(torch.randn(B, T, I))
    assert out.shape == (B, T, H) and states.shape == (2, B, H)
    assert make_rnn("conv_star", I, H, 1).is_conv


@pytest.mark.parametrize("name", ["star", "lstm", "gru", "conv_star"])
def test_under_autocast_the_stack_runs_in_float32_with_the_same_numbers(name: str) -> None:
    rnn = make_rnn(name, I, H, L)
    x, mask = data(name).bfloat16(), torch.rand(B, T) < 0.7  # bf16 inputs, as an autocast layer below gives
    h0 = torch.randn(L, B, H, *((SIDE, SIDE) if name in CONV else ()))
    start = (h0, torch.zeros_like(h0)) if is_lstm(name) else h0

    def run(autocast: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        rnn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, states = rnn(x if autocast else x.float(), start, mask=mask)
        out.sum().backward()
        return out, states[0] if is_lstm(name) else states, [p.grad.clone() for p in rnn.parameters()]

    want, want_states, want_grads = run(autocast=False)
    got, got_states, got_grads = run(autocast=True)
    assert got.dtype == got_states.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_states, want_states)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad)
