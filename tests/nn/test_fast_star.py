"""The fast STAR inference path (cropstar.nn.fast_star): the numbers of the reference cell loop, every
layer's outputs and final states, with and without masks and initial states; masked steps keep the
state exactly; it runs whenever no gradient is recorded, and only then."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cropstar.nn import make_rnn, stack
from cropstar.nn.fast_star import tanh_

B, T, I, H, L = 5, 9, 7, 6, 3
TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-13}


def _stack(dtype: torch.dtype) -> stack.DeepRNN:
    torch.manual_seed(0)
    rnn = make_rnn("star", I, H, L, t_max=T).to(dtype)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.copy_(0.5 * torch.randn_like(param))
    return rnn


def _mask() -> Tensor:
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(1)) < 0.7
    mask[:, 3] = True  # a step every sequence observes (no torch.where there)
    mask[0] = False  # a sequence never observed
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_equals_the_reference_cells(dtype: torch.dtype, masked: bool, with_h0: bool) -> None:
    rnn = _stack(dtype)
    x = torch.randn(B, T, I, dtype=dtype)
    mask = _mask() if masked else None
    h0 = 0.5 * torch.randn(L, B, H, dtype=dtype) if with_h0 else None
    rnn.fused = False  # the reference: the cells' own loop
    want_layers, want_states = rnn(x, h0, mask=mask, return_all_layers=True)
    rnn.fused = True
    assert want_states.requires_grad
    with torch.inference_mode():
        got_layers, got_states = rnn(x, h0, mask=mask, return_all_layers=True)
    assert not got_states.requires_grad
    tol = TOLERANCE[dtype]
    for got, want in zip(got_layers, want_layers, strict=True):
        torch.testing.assert_close(got, want.detach(), atol=tol, rtol=0)
    torch.testing.assert_close(got_states, want_states.detach(), atol=tol, rtol=0)


def test_masked_steps_keep_the_state_exactly_and_nothing_leaks() -> None:
    rnn = _stack(torch.float32)
    mask = _mask()
    x = torch.randn(B, T, I)
    x[~mask] = float("nan")  # inputs of unobserved steps must not reach the state
    h0 = 0.5 * torch.randn(L, B, H)
    with torch.no_grad():
        layers, states = rnn(x, h0, mask=mask, return_all_layers=True)
    for index, out in enumerate(layers):
        assert torch.isfinite(out).all()
        for b in range(B):
            for t in range(T):
                previous = out[b, t - 1] if t > 0 else h0[index, b]
                assert torch.equal(out[b, t], previous) != bool(mask[b, t]), (index, b, t)
    assert torch.equal(states, torch.stack([out[:, -1] for out in layers]))
    assert torch.equal(states[:, 0], h0[:, 0])  # the never observed sequence ends where it began


def test_an_all_true_mask_is_no_mask() -> None:
    rnn = _stack(torch.float32)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        assert torch.equal(rnn(x, mask=torch.ones(B, T, dtype=torch.bool))[0], rnn(x)[0])


def test_the_fast_path_runs_exactly_when_no_gradient_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = stack.star_stack_inference
    monkeypatch.setattr(stack, "star_stack_inference", lambda *a: calls.append(1) or original(*a))
    rnn, x = _stack(torch.float32), torch.randn(B, T, I)
    rnn(x)[0].sum().backward()  # training
    assert calls == [] and rnn.layers[0].W_h.grad is not None
    with torch.no_grad():
        rnn(x)
    with torch.inference_mode():
        rnn(x)
    assert calls == [1, 1]
    conv = make_rnn("conv_star", 2, 3, 2)  # conv STAR keeps its own loop
    with torch.no_grad():
        conv(torch.randn(2, 3, 2, 4, 4))
    assert calls == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_in_place(dtype: torch.dtype) -> None:
    x = torch.linspace(-30, 30, 10001, dtype=dtype)
    got = tanh_(x.clone())
    torch.testing.assert_close(got, torch.tanh(x), atol=TOLERANCE[dtype] / 4, rtol=0)
    assert got.abs().max() <= 1


def test_returned_outputs_survive_the_next_call() -> None:
    """Lower layers' buffers are reused per thread; what a call returns is never among them."""
    rnn = _stack(torch.float32)
    x1, x2 = torch.randn(B, T, I), torch.randn(B, T, I)
    with torch.no_grad():
        top, states = rnn(x1)
        layers, _ = rnn(x1, return_all_layers=True)
        kept = [t.clone() for t in (top, states, *layers)]
        rnn(x2, return_all_layers=True)
        rnn(x2)
    for got, want in zip((top, states, *layers), kept, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("all_layers", [False, True])
def test_large_batches_run_in_chunks_with_the_same_numbers(monkeypatch: pytest.MonkeyPatch, all_layers: bool) -> None:
    from cropstar.nn import fast_star

    rnn = _stack(torch.float32)
    x, mask, h0 = torch.randn(B, T, I), _mask(), 0.5 * torch.randn(L, B, H)
    with torch.no_grad():
        whole = rnn(x, h0, mask=mask, return_all_layers=all_layers)
        monkeypatch.setattr(fast_star, "CPU_CHUNK", 2)  # B = 5: chunks of 2, 2 and 1
        chunked = rnn(x, h0, mask=mask, return_all_layers=all_layers)
    for got, want in zip(chunked[0] if all_layers else [chunked[0]], whole[0] if all_layers else [whole[0]],
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked[1], whole[1], atol=1e-6, rtol=0)
