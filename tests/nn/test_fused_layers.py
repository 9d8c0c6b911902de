"""The fused layers for training (cropstar.nn.fused_star for STAR, cropstar.nn.fused_cells and
cropstar.nn.fused_gated for the baselines): the numbers of the reference cells — outputs, final states and every gradient — with
and without masks and initial states; float64 gradchecks of their hand-written backward through time."""

from __future__ import annotations

import pytest
import torch
from sequence_masks import awkward_mask
from torch import Tensor

from cropstar.nn import make_rnn
from cropstar.nn.fused_cells import FUSED_LAYERS, FUSED_STEPS, FusedRecurrence
from cropstar.nn.fused_gated import GRURecurrence, LSTMRecurrence, RHNRecurrence
from cropstar.nn.fused_star import STARLayer
from cropstar.nn.stack import DeepRNN

#: STAR's C++ step loops built (once per session) before these tests run on them
pytestmark = pytest.mark.usefixtures("star_steps_module")

B, T, I, H, L = 4, 7, 5, 6, 3
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


FUSED = ["star", *FUSED_LAYERS, "rhn_depth_3"]


def _stack(dtype: torch.dtype, cell: str = "star") -> DeepRNN:
    torch.manual_seed(0)
    options = {"recurrence_depth": 3} if cell == "rhn_depth_3" else {}
    rnn = make_rnn(cell.removesuffix("_depth_3"), I, H, L, t_max=T, **options).to(dtype)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.copy_(0.5 * torch.randn_like(param))
    return rnn



def _parts(states: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return states if isinstance(states, tuple) else (states,)


def _run(rnn: DeepRNN, fused: bool, x: Tensor, h0: Tensor | None, mask: Tensor | None) -> dict[str, Tensor]:
    """Outputs, final states and the gradients of a loss that reads every layer's outputs and states."""
    rnn.fused = fused
    rnn.zero_grad()
    x = x.clone().requires_grad_(True)
    starts = () if h0 is None else tuple(part.clone().requires_grad_(True) for part in _parts(h0))
    start = None if h0 is None else (starts[0] if isinstance(h0, Tensor) else starts)
    layers, states = rnn(x, start, mask=mask, return_all_layers=True)
    weights = torch.Generator().manual_seed(2)
    loss = sum((out * torch.randn(out.shape, generator=weights, dtype=out.dtype)).sum() for out in layers)
    parts = _parts(states)  # (h,) or the LSTM's (h, c)
    for part in parts:
        loss = loss + (part * torch.randn(part.shape, generator=weights, dtype=part.dtype)).sum()
    loss.backward()
    found = {f"out{i}": out.detach() for i, out in enumerate(layers)}
    found.update({f"states{i}": part.detach() for i, part in enumerate(parts)})
    found["grad_x"] = x.grad
    found.update({f"grad_h0_{i}": part.grad for i, part in enumerate(starts)})
    found.update({f"grad_{name}": p.grad.clone() for name, p in rnn.named_parameters()})
    return found


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("cell", FUSED)
def test_outputs_states_and_gradients_equal_the_reference_cells(
    cell: str, dtype: torch.dtype, masked: bool, with_h0: bool
) -> None:
    rnn = _stack(dtype, cell)
    x = torch.randn(B, T, I, dtype=dtype)
    h0 = (0.5 * torch.randn(rnn.num_states, L, B, H, dtype=dtype)).unbind() if with_h0 else None
    h0 = h0[0] if h0 is not None and rnn.num_states == 1 else h0
    mask = awkward_mask(B, T) if masked else None
    want = _run(rnn, False, x, h0, mask)
    got = _run(rnn, True, x, h0, mask)
    expected = L + 1 + rnn.num_states + with_h0 * rnn.num_states + len(list(rnn.parameters()))
    assert got.keys() == want.keys() and len(want) == expected
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype], msg=name)


@pytest.mark.parametrize("cell", FUSED)
def test_inputs_of_masked_steps_get_no_gradient(cell: str) -> None:
    rnn = _stack(torch.float64, cell)
    mask = awkward_mask(B, T)
    got = _run(rnn, True, torch.randn(B, T, I, dtype=torch.float64), None, mask)
    assert torch.count_nonzero(got["grad_x"][~mask]) == 0
    assert torch.count_nonzero(got["grad_x"][mask]) == mask.sum() * I


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_of_the_layer(masked: bool) -> None:
    torch.manual_seed(3)
    steps, batch, inputs, hidden = 5, 3, 2, 4
    x = torch.randn(steps, batch, inputs, dtype=torch.float64, requires_grad=True)
    W_in = (0.5 * torch.randn(2 * hidden, inputs, dtype=torch.float64)).requires_grad_(True)
    b_in = torch.randn(2 * hidden, dtype=torch.float64, requires_grad=True)
    W_h = (0.5 * torch.randn(hidden, hidden, dtype=torch.float64)).requires_grad_(True)
    h0 = (0.5 * torch.randn(batch, hidden, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(steps, batch) < 0.6 if masked else None
    assert torch.autograd.gradcheck(lambda *args: STARLayer.apply(*args, mask, None), (x, W_in, b_in, W_h, h0))


def test_the_outputs_are_guarded_against_in_place_changes() -> None:
    rnn = _stack(torch.float32)
    out, _ = rnn(torch.randn(B, T, I))
    with pytest.raises(RuntimeError, match="is a view and is being modified inplace"):
        out.mul_(2)  # the saved states are its base: refused, never a wrong gradient


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cell", list(FUSED_STEPS))
def test_gradcheck_of_the_baselines_recurrence(cell: str, masked: bool) -> None:
    torch.manual_seed(4)
    steps, batch, hidden = 5, 3, 4
    gates = {"vrnn": 1, "lstm_wf": 2}[cell]
    u = torch.randn(steps, batch, gates * hidden, dtype=torch.float64, requires_grad=True)
    W_h = (0.5 * torch.randn(gates * hidden, hidden, dtype=torch.float64)).requires_grad_(True)
    h0 = (0.5 * torch.randn(batch, hidden, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(steps, batch) < 0.6 if masked else None
    step = FUSED_STEPS[cell]
    assert torch.autograd.gradcheck(lambda *args: FusedRecurrence.apply(*args, mask, step), (u, W_h, h0))


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_of_the_convstar_layer(masked: bool) -> None:
    torch.manual_seed(6)
    steps, batch, channels, filters, side = 3, 2, 2, 2, 4
    x = torch.randn(steps, batch, channels, side, side, dtype=torch.float64, requires_grad=True)
    W_in = (0.3 * torch.randn(2 * filters, channels, 3, 3, dtype=torch.float64)).requires_grad_(True)
    b_in = torch.randn(2 * filters, dtype=torch.float64, requires_grad=True)
    W_h = (0.3 * torch.randn(filters, filters, 3, 3, dtype=torch.float64)).requires_grad_(True)
    h0 = (0.5 * torch.randn(batch, filters, side, side, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(steps, batch) < 0.6 if masked else None
    assert torch.autograd.gradcheck(lambda *args: STARLayer.apply(*args, mask, 1), (x, W_in, b_in, W_h, h0))


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_convstar_equals_its_cells(kernel: int, masked: bool) -> None:
    torch.manual_seed(7)
    rnn = make_rnn("conv_star", 2, 3, 2, kernel_size=kernel, t_max=T).double()
    x = torch.randn(B, T, 2, 5, 5, dtype=torch.float64)
    h0 = 0.5 * torch.randn(2, B, 3, 5, 5, dtype=torch.float64)
    want = _run(rnn, False, x, h0, awkward_mask(B, T) if masked else None)
    got = _run(rnn, True, x, h0, awkward_mask(B, T) if masked else None)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-12, rtol=1e-12, msg=name)


#: The gated recurrences' Functions and their input shapes (u, weights…, h0[, c0]) for steps 5, batch 3,
#: hidden 4 (RHN: recurrence depth 1 and 2).
GATED_RECURRENCES = {
    "lstm": (LSTMRecurrence, [(5, 3, 16), (16, 4), (3, 4), (3, 4)]),
    "gru": (GRURecurrence, [(5, 3, 12), (8, 4), (4, 4), (3, 4)]),
    "rhn_depth_1": (RHNRecurrence, [(5, 3, 8), (1, 8, 4), (1, 8), (3, 4)]),
    "rhn_depth_2": (RHNRecurrence, [(5, 3, 8), (2, 8, 4), (2, 8), (3, 4)]),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(GATED_RECURRENCES))
def test_gradcheck_of_the_gated_recurrences(name: str, masked: bool) -> None:
    function, shapes = GATED_RECURRENCES[name]
    torch.manual_seed(5)
    inputs = tuple((0.5 * torch.randn(shape, dtype=torch.float64)).requires_grad_(True) for shape in shapes)
    mask = torch.rand(5, 3) < 0.6 if masked else None
    assert torch.autograd.gradcheck(lambda *args: function.apply(*args, mask), inputs)
