"""The convolutional cells: OIHW parameters, per-gate convolution references, consistency with the
dense cells, "same" padding, locality, float64 gradchecks and the single-step API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cropstar.errors import InputError
from cropstar.nn import CELLS, ConvLSTMCell, ConvLSTMwfCell, ConvSTARCell
from cropstar.nn.conv_cells import CONV_CELLS

F64 = torch.float64
B, T, C, H, S = 2, 3, 2, 3, 5  # batch, steps, input channels, filters, image side
CONV_NAMES = ["conv_star", "conv_lstm", "conv_lstm_wf"]
DENSE_OF = {"conv_star": "star", "conv_lstm": "lstm", "conv_lstm_wf": "lstm_wf"}


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Random kernels and clearly non-zero random biases."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                magnitude = 0.3 + 0.9 * torch.rand(param.shape, generator=generator, dtype=F64)
                sign = torch.where(torch.rand(param.shape, generator=generator, dtype=F64) < 0.5, -1.0, 1.0)
                param.copy_(magnitude * sign)
            else:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=F64))


def make_cell(name: str, k: int = 3, c: int = C, h: int = H) -> nn.Module:
    cell = CELLS[name](c, h, kernel_size=k).to(F64)
    randomize_(cell, torch.Generator().manual_seed(3))
    return cell


# ---- naive references: one conv per gate, explicit integer padding --------------------------------
def conv(W: Tensor, v: Tensor) -> Tensor:
    return F.conv2d(v, W, padding=W.shape[-1] // 2)


def bias(b: Tensor) -> Tensor:
    return b[None, :, None, None]


def conv_star_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (h,) = state
    k = torch.sigmoid(conv(p["W_x"], x) + conv(p["W_h"], h) + bias(p["b_k"]))
    z = torch.tanh(conv(p["W_z"], x) + bias(p["b_z"]))
    return (torch.tanh(h + k * (z - h)),)  # paper eq. 30


def conv_lstm_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    h, c = state
    pre = {g: conv(p[f"W_x{g}"], x) + conv(p[f"W_h{g}"], h) + bias(p[f"b_{g}"]) for g in "ifoz"}
    c_new = torch.sigmoid(pre["f"]) * c + torch.sigmoid(pre["i"]) * torch.tanh(pre["z"])
    return torch.sigmoid(pre["o"]) * torch.tanh(c_new), c_new


def conv_lstm_wf_step(p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    (h,) = state
    f = torch.sigmoid(conv(p["W_xf"], x) + conv(p["W_hf"], h) + bias(p["b_f"]))
    z = torch.tanh(conv(p["W_xz"], x) + conv(p["W_hz"], h) + bias(p["b_z"]))
    return (torch.tanh(f * h + (1 - f) * z),)


STEPS = {"conv_star": conv_star_step, "conv_lstm": conv_lstm_step, "conv_lstm_wf": conv_lstm_wf_step}


def reference_run(name: str, p: dict[str, Tensor], x: Tensor, state: tuple[Tensor, ...]):
    outputs = []
    for t in range(x.shape[1]):
        state = STEPS[name](p, x[:, t], state)
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


def random_state(name: str, b: int = B, h: int = H, hw: tuple[int, int] = (S, S)) -> tuple[Tensor, ...]:
    return tuple(0.5 * torch.randn(b, h, *hw, dtype=F64) for _ in range(CELLS[name].num_states))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("name", CONV_NAMES)
def test_run_equals_per_gate_convolution_reference(name: str, k: int) -> None:
    cell = make_cell(name, k)
    x = torch.randn(B, T, C, S, 4, dtype=F64)  # non-square images catch h/w mix-ups
    state = random_state(name, hw=(S, 4))
    out, final = cell.run(x, state)
    params = {n: p.detach() for n, p in cell.named_parameters()}
    ref_out, ref_final = reference_run(name, params, x, state)
    assert out.shape == (B, T, H, S, 4)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    for got, want in zip(final, ref_final, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


# ---- 3. parameter sets ---------------------------------------------------------------------------
def expected_parameters(name: str, c: int, h: int, k: int) -> dict[str, tuple[int, ...]]:
    def gates(letters: str) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for g in letters:
            out |= {f"W_x{g}": (h, c, k, k), f"W_h{g}": (h, h, k, k), f"b_{g}": (h,)}
        return out

    return {
        "conv_star": {
            "W_z": (h, c, k, k),
            "b_z": (h,),
            "W_x": (h, c, k, k),
            "W_h": (h, h, k, k),
            "b_k": (h,),
        },
        "conv_lstm": gates("ifoz"),
        "conv_lstm_wf": gates("fz"),
    }[name]


def expected_count(name: str, c: int, h: int, k: int) -> int:
    kk = k * k
    return {
        "conv_star": 2 * h * c * kk + h * h * kk + 2 * h,
        "conv_lstm": 4 * (h * c * kk + h * h * kk + h),
        "conv_lstm_wf": 2 * (h * c * kk + h * h * kk + h),
    }[name]


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("name", CONV_NAMES)
def test_parameter_names_oihw_shapes_and_count(name: str, k: int) -> None:
    cell = CELLS[name](2, 4, kernel_size=k)
    assert {n: tuple(p.shape) for n, p in cell.named_parameters()} == expected_parameters(name, 2, 4, k)
    assert sum(p.numel() for p in cell.parameters()) == expected_count(name, 2, 4, k)
    assert cell.kernel_size == k


def test_default_kernel_size_is_3() -> None:
    assert ConvSTARCell(2, 3).W_h.shape == (3, 3, 3, 3)
    assert ConvLSTMCell(2, 3).kernel_size == 3
    assert ConvLSTMwfCell(2, 3).kernel_size == 3
    assert set(CONV_CELLS) == set(CONV_NAMES)


@pytest.mark.parametrize("k", [0, -1, 2.0, None])
@pytest.mark.parametrize("name", CONV_NAMES)
def test_bad_kernel_size_rejected(name: str, k: object) -> None:
    with pytest.raises(InputError, match="kernel_size"):
        CELLS[name](2, 3, kernel_size=k)  # type: ignore[arg-type]


# ---- 7. conv / dense consistency and "same" padding -----------------------------------------------
@pytest.mark.parametrize("name", CONV_NAMES)
def test_kernel_1_on_1x1_images_equals_dense_cell(name: str) -> None:
    conv_cell = make_cell(name, k=1)
    dense = CELLS[DENSE_OF[name]](C, H).to(F64)
    with torch.no_grad():
        for pname, param in dense.named_parameters():
            source = getattr(conv_cell, pname)
            param.copy_(source.reshape(param.shape) if source.dim() == 4 else source)
            if source.dim() == 4:
                assert torch.equal(source[:, :, 0, 0], param)
    x = torch.randn(B, T, C, dtype=F64)
    state = tuple(0.5 * torch.randn(B, H, dtype=F64) for _ in range(dense.num_states))
    mask = torch.tensor([[True, False, True], [True, True, False]])
    out_d, final_d = dense.run(x, state, mask)
    out_c, final_c = conv_cell.run(x[..., None, None], tuple(s[..., None, None] for s in state), mask)
    assert out_c.shape == (B, T, H, 1, 1)
    torch.testing.assert_close(out_c[..., 0, 0], out_d, atol=1e-12, rtol=0)
    for got, want in zip(final_c, final_d, strict=True):
        torch.testing.assert_close(got[..., 0, 0], want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("name", CONV_NAMES)
def test_same_padding_keeps_spatial_size(name: str, k: int) -> None:
    cell = CELLS[name](C, H, kernel_size=k)
    x = torch.randn(B, T, C, 5, 4)
    out, final = cell.run(x)
    assert out.shape == (B, T, H, 5, 4)
    assert all(s.shape == (B, H, 5, 4) for s in final)
    single = cell(x[:, 0])
    single_h = single[0] if isinstance(single, tuple) else single
    assert single_h.shape == (B, H, 5, 4)


@pytest.mark.parametrize("name", CONV_NAMES)
def test_one_step_is_local_and_centred(name: str) -> None:
    """After one step of a 3x3 cell from the zero state, pixel (i, j) sees only x at |di|, |dj| <= 1."""
    cell = make_cell(name, k=3)
    x = torch.randn(1, 1, C, S, S, dtype=F64)
    x2 = x.clone()
    x2[..., 4, 4] += 1.0
    a, _ = cell.run(x)
    b, _ = cell.run(x2)
    diff = (a - b).abs()[0, 0].amax(dim=0)  # (S, S)
    changed = diff > 0
    expected = torch.zeros(S, S, dtype=torch.bool)
    expected[3:, 3:] = True
    assert torch.equal(changed, expected)


# ---- 4. gradcheck --------------------------------------------------------------------------------
class _Runner(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, state: tuple[Tensor, ...], mask: Tensor | None) -> tuple[Tensor, ...]:
        out, final = self.cell.run(x, state, mask)
        return (out, *final)


@pytest.mark.parametrize("name", CONV_NAMES)
def test_gradcheck_inputs_state_and_parameters(name: str) -> None:
    b, t, side = 2, 2, 3
    runner = _Runner(make_cell(name, k=3, c=2, h=2))
    names = [n for n, _ in runner.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in runner.parameters()]
    x = torch.randn(b, t, 2, side, side, dtype=F64, requires_grad=True)
    state = tuple(s.requires_grad_(True) for s in random_state(name, b=b, h=2, hw=(side, side)))
    mask = torch.tensor([[True, False], [True, True]])
    n_state = len(state)

    def f(x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        return functional_call(runner, dict(zip(names, rest[n_state:])), (x, rest[:n_state], mask))

    assert torch.autograd.gradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-7)


# ---- 11. the single-step API ---------------------------------------------------------------------
@pytest.mark.parametrize("name", CONV_NAMES)
def test_single_step_equals_run(name: str) -> None:
    cell = make_cell(name)
    x = torch.randn(B, T, C, S, S, dtype=F64)
    state = random_state(name)
    out, final = cell.run(x, state)
    two = cell.num_states == 2
    step: Tensor | tuple[Tensor, ...] = state if two else state[0]
    for t in range(T):
        step = cell(x[:, t], step)
        assert isinstance(step, tuple if two else Tensor)
        h = step[0] if two else step
        assert h.shape == (B, H, S, S)
        torch.testing.assert_close(h, out[:, t], atol=1e-14, rtol=0)
    for got, want in zip(step if two else (step,), final, strict=True):
        torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    first = cell(x[:, 0])  # default: the zero state
    zero = tuple(torch.zeros(B, H, S, S, dtype=F64) for _ in range(cell.num_states))
    for got, want in zip(
        first if two else (first,), STEPS[name](dict(cell.named_parameters()), x[:, 0], zero)
    ):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
