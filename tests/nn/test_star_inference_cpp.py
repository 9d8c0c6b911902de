"""The C++ inference step loop of the fast STAR path (``inference_steps`` in csrc/star_steps.cpp, eq. 11–12
with the element-wise work fused) against the ATen loop of cropstar.nn.fast_star and the reference cells:
equal within float32 rounding with and without masks and initial states, over several shapes; masked
steps keep the state exactly; float64, or the extension disabled, runs the ATen loop."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import Tensor

from cropstar.nn import fast_star, make_rnn, star_steps
from cropstar.nn.stack import DeepRNN

#: (B, T, I, H, L): one sequence, one step, crop-like widths, a deep stack.
SHAPES = [(1, 5, 6, 64, 2), (7, 1, 6, 64, 2), (9, 26, 54, 64, 4), (5, 12, 13, 128, 3), (1, 1, 3, 128, 1)]
#: Fused C++ loop against the ATen loop and the cells (its σ and tanh round differently).
TOLERANCE = 1e-5


@pytest.fixture
def compiled(star_steps_module: ModuleType | None) -> ModuleType:
    if star_steps_module is None:
        pytest.skip("STAR's C++ extension did not build here (no compiler or ninja, or CROPSTAR_NO_CPP set)")
    return star_steps_module


def _stack(shape: tuple[int, int, int, int, int], dtype: torch.dtype = torch.float32) -> DeepRNN:
    _, steps, inputs, hidden, layers = shape
    torch.manual_seed(sum(shape))
    rnn = make_rnn("star", inputs, hidden, layers, t_max=max(steps, 2)).to(dtype)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.copy_(0.5 * torch.randn_like(param))
    return rnn


def _mask(batch: int, steps: int) -> Tensor:
    mask = torch.rand(batch, steps, generator=torch.Generator().manual_seed(3)) < 0.6
    mask[:, 0] = True  # a step every sequence observes
    mask[0, 1:] = False  # a sequence observed once
    return mask


def _run(rnn: DeepRNN, x: Tensor, h0: Tensor | None, mask: Tensor | None, use_cpp: bool,
         monkeypatch: pytest.MonkeyPatch) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    monkeypatch.setattr(star_steps, "USE_CPP", use_cpp)
    with torch.inference_mode():
        layers, states = rnn(x, h0, mask=mask, return_all_layers=True)
    return [layer.clone() for layer in layers], states.clone()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-I{}-H{}-L{}".format(*s))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_fused_loop_equals_the_aten_loop_and_the_cells(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], masked: bool, with_h0: bool
) -> None:
    batch, steps, inputs, hidden, layers = shape
    rnn = _stack(shape)
    x = torch.randn(batch, steps, inputs, generator=torch.Generator().manual_seed(5))
    mask = _mask(batch, steps) if masked else None
    h0 = 0.5 * torch.randn(layers, batch, hidden) if with_h0 else None
    calls: list[int] = []
    original = compiled.inference_steps
    monkeypatch.setattr(compiled, "inference_steps", lambda *a: calls.append(1) or original(*a))
    fused_layers, fused_states = _run(rnn, x, h0, mask, True, monkeypatch)
    assert len(calls) == layers
    aten_layers, aten_states = _run(rnn, x, h0, mask, False, monkeypatch)
    assert len(calls) == layers
    rnn.fused = False  # the reference: the cells' own loop
    with torch.no_grad():
        cell_layers, cell_states = rnn(x, h0, mask=mask, return_all_layers=True)
    for want_layers, want_states in ((aten_layers, aten_states), (cell_layers, cell_states)):
        for got, want in zip(fused_layers, want_layers, strict=True):
            torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(fused_states, want_states, atol=TOLERANCE, rtol=0)


def test_masked_steps_keep_the_state_exactly(compiled: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (6, 10, 5, 64, 2)
    batch, steps, inputs, hidden, layers = shape
    rnn, mask = _stack(shape), _mask(batch, steps)
    mask[0] = False  # a sequence never observed
    x = torch.randn(batch, steps, inputs)
    x[~mask] = float("nan")  # inputs of unobserved steps must not reach the state
    h0 = 0.5 * torch.randn(layers, batch, hidden)
    outputs, states = _run(rnn, x, h0, mask, True, monkeypatch)
    for index, out in enumerate(outputs):
        assert torch.isfinite(out).all()
        for b in range(batch):
            for t in range(steps):
                previous = out[b, t - 1] if t > 0 else h0[index, b]
                assert torch.equal(out[b, t], previous) != bool(mask[b, t]), (index, b, t)
    assert torch.equal(states[:, 0], h0[:, 0])  # the never observed sequence ends where it began


def test_saturating_inputs_stay_finite_and_bounded(compiled: ModuleType) -> None:
    """σ's exp is clamped: huge gate inputs give k = 0 or 1, never inf or NaN."""
    steps, batch, hidden = 3, 4, 64
    z = torch.rand(steps, batch, hidden) * 2 - 1
    saturating = torch.tensor([-1e4, -100.0, 100.0, 1e4]).repeat_interleave(hidden // 4)
    want_z, gates = z.clone(), saturating.expand(steps, batch, hidden).contiguous()
    compiled.inference_steps(z, gates.clone(), torch.zeros(hidden, hidden), None, None)
    h = torch.zeros(batch, hidden)
    for t in range(steps):
        h = torch.tanh(torch.lerp(h, want_z[t], torch.sigmoid(gates[t])))
        torch.testing.assert_close(z[t], h, atol=TOLERANCE, rtol=0)
    assert z.abs().max() <= 1


@pytest.mark.parametrize("how", ["module_flag", "environment", "float64"])
def test_the_aten_loop_runs_when_disabled_or_not_float32(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    shape = (3, 4, 5, 64, 2)
    dtype = torch.float64 if how == "float64" else torch.float32
    rnn = _stack(shape, dtype)
    x = torch.randn(3, 4, 5, dtype=dtype)
    if how == "module_flag":
        monkeypatch.setattr(star_steps, "USE_CPP", False)
    elif how == "environment":
        monkeypatch.setenv(star_steps.DISABLE_VARIABLE, "1")
    monkeypatch.setattr(compiled, "inference_steps", lambda *a: pytest.fail("the C++ loop ran"))
    assert fast_star._compiled_inference(x) is None
    with torch.no_grad():
        out, _ = rnn(x)
    assert out.shape == (3, 4, 64)
