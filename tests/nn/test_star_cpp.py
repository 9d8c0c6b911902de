"""STAR's C++ step loops (cropstar.nn.star_steps, csrc/star_steps.cpp) against the Python loops of
cropstar.nn.fused_star (the reference): the same outputs and gradients with and without masks, float64
gradchecks through them, the Python loops when forced or when the build fails (saying so once), the
build lock, and the reusable buffers (never handed out while anything holds them)."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor

from cropstar.nn import fused_star, make_rnn, star_steps
from cropstar.nn.fused_star import STARLayer

#: (T, B, I, H): several steps and sequences, one step, one sequence, both, and a crop-like width.
SHAPES = [(7, 4, 5, 6), (1, 5, 2, 3), (6, 1, 4, 8), (1, 1, 3, 4), (26, 16, 54, 32)]
MASKS = ["none", "random", "all_observed", "none_observed"]
#: float32: the C++ loops do each step's element-wise work in one pass, rounding in another order; the
#: gradients are sums over T × B terms of values up to ~20.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture
def compiled(star_steps_module: ModuleType | None) -> ModuleType:
    if star_steps_module is None:
        pytest.skip("STAR's C++ step loops did not build here (no compiler or ninja, or CROPSTAR_NO_CPP set)")
    return star_steps_module


@pytest.fixture
def fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the reasons already logged, so this test sees its own."""
    monkeypatch.setattr(star_steps, "_announced", set())


def _mask(kind: str, steps: int, batch: int) -> Tensor | None:
    if kind == "none":
        return None
    if kind in ("all_observed", "none_observed"):
        return torch.full((steps, batch), kind == "all_observed")
    mask = torch.rand(steps, batch, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, 0] = False  # a sequence never observed
    mask[0, -1] = True  # and one observed at least once
    return mask


def _inputs(shape: tuple[int, int, int, int], dtype: torch.dtype) -> tuple[Tensor, ...]:
    """x (T, B, I), W_in (2H, I), b_in (2H,), W_h (H, H), h0 (B, H), all requiring gradients."""
    steps, batch, inputs, hidden = shape
    generator = torch.Generator().manual_seed(sum(shape))
    sizes = [(steps, batch, inputs), (2 * hidden, inputs), (2 * hidden,), (hidden, hidden), (batch, hidden)]
    scales = [1.0, 0.5, 1.0, 0.5, 0.5]
    return tuple(
        (scale * torch.randn(size, generator=generator, dtype=dtype)).requires_grad_(True)
        for size, scale in zip(sizes, scales)
    )


def _run_layer(inputs: tuple[Tensor, ...], mask: Tensor | None) -> list[Tensor]:
    """Outputs and the gradients of every input for a loss reading every output with random weights."""
    for tensor in inputs:
        tensor.grad = None
    outputs = STARLayer.apply(*inputs, mask, None)
    weights = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(2), dtype=outputs.dtype)
    (outputs * weights).sum().backward()
    return [outputs.detach().clone(), *(tensor.grad for tensor in inputs)]


def _must_not_run(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the Python step loop ran where the C++ one should")


def _counting(calls: list[str], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return function(*args, **kwargs)

    return counted


# ---- the same numbers as the Python loops -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
def test_the_cpp_loops_give_the_outputs_and_gradients_of_the_python_loops(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int, int], mask_kind: str,
    dtype: torch.dtype,
) -> None:  # fmt: skip
    inputs = _inputs(shape, dtype)
    mask = _mask(mask_kind, shape[0], shape[1])
    monkeypatch.setattr(star_steps, "USE_CPP", False)
    want = _run_layer(inputs, mask)
    monkeypatch.setattr(star_steps, "USE_CPP", True)
    monkeypatch.setattr(fused_star, "_forward_steps", _must_not_run)
    monkeypatch.setattr(fused_star, "_backward_steps", _must_not_run)
    got = _run_layer(inputs, mask)
    names = ["outputs", "grad_x", "grad_W_in", "grad_b_in", "grad_W_h", "grad_h0"]
    for name, value, expected in zip(names, got, want, strict=True):
        torch.testing.assert_close(value, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype], msg=name)


@pytest.mark.parametrize("loss", ["mean", "transposed"])
def test_the_float32_backward_reads_gradients_of_any_layout(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    """The gradient of a mean (expanded: every stride 0) and of a batch-major loss (transposed) reach the
    C++ backward as they are; it reads them a step at a time."""
    inputs = _inputs((6, 5, 4, 8), torch.float32)
    mask = _mask("random", 6, 5)
    weights = torch.randn(5, 6, 8, generator=torch.Generator().manual_seed(3))

    def gradients() -> list[Tensor]:
        for tensor in inputs:
            tensor.grad = None
        outputs = STARLayer.apply(*inputs, mask, None)
        if loss == "mean":
            outputs.mean().backward()
        else:
            (outputs.transpose(0, 1) * weights).sum().backward()
        return [tensor.grad for tensor in inputs]

    monkeypatch.setattr(star_steps, "USE_CPP", False)
    want = gradients()
    monkeypatch.setattr(star_steps, "USE_CPP", True)
    monkeypatch.setattr(fused_star, "_backward_steps", _must_not_run)
    for value, expected in zip(gradients(), want, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize(
    "shape", [(5, 3, 2, 4), (1, 1, 2, 3), (4, 1, 3, 2)], ids=lambda s: "T{}-B{}-I{}-H{}".format(*s)
)
def test_gradcheck_through_the_cpp_loops(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int, int], mask_kind: str
) -> None:  # fmt: skip
    monkeypatch.setattr(fused_star, "_forward_steps", _must_not_run)
    monkeypatch.setattr(fused_star, "_backward_steps", _must_not_run)
    mask = _mask(mask_kind, shape[0], shape[1])
    inputs = _inputs(shape, torch.float64)
    assert torch.autograd.gradcheck(lambda *args: STARLayer.apply(*args, mask, None), inputs)


def test_a_deep_stack_trains_on_the_cpp_loops_with_the_numbers_of_the_python_loops(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    rnn = make_rnn("star", 5, 6, 3, t_max=7).double()
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    mask = torch.rand(4, 7) < 0.7

    def step() -> list[Tensor]:
        rnn.zero_grad()
        out, states = rnn(x, mask=mask)
        (out.sin().sum() + states.cos().sum()).backward()
        return [out.detach(), states.detach(), *(p.grad.clone() for p in rnn.parameters())]

    got = step()
    monkeypatch.setattr(star_steps, "USE_CPP", False)
    want = step()
    for value, expected in zip(got, want, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_outputs_held_from_earlier_steps_keep_their_values(compiled: ModuleType) -> None:
    """The reusable buffers are never handed out again while an output, a view of it or the graph
    holds them: a second and third training step leave the first one's outputs and gradients as they were."""
    torch.manual_seed(0)
    rnn = make_rnn("star", 5, 6, 2, t_max=7)
    x, mask = torch.randn(3, 7, 5), torch.rand(3, 7) < 0.7
    first, _ = rnn(x, mask=mask)
    first_values = first.detach().clone()
    view = first[:, 2:].detach()  # shares the buffer
    first.sum().backward()
    grads = [p.grad.clone() for p in rnn.parameters()]
    for _ in range(2):
        rnn.zero_grad()
        out, _ = rnn(2 * x, mask=mask)
        out.sum().backward()
    assert torch.equal(first.detach(), first_values) and torch.equal(view, first_values[:, 2:])
    rnn.zero_grad()
    again, _ = rnn(x, mask=mask)
    again.sum().backward()
    assert torch.equal(again.detach(), first_values)
    assert all(torch.equal(p.grad, g) for p, g in zip(rnn.parameters(), grads))


# ---- the Python loops: forced, or when the build fails ----------------------------------------------
def _python_loops_ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(fused_star, "_forward_steps", _counting(calls, "forward", fused_star._forward_steps))
    monkeypatch.setattr(
        fused_star, "_backward_steps", _counting(calls, "backward", fused_star._backward_steps)
    )
    inputs = _inputs((3, 2, 4, 5), torch.float32)
    for _ in range(2):
        _run_layer(inputs, _mask("random", 3, 2))
    return calls


def test_the_environment_variable_forces_the_python_loops_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_announcements: None
) -> None:
    monkeypatch.setenv("CROPSTAR_NO_CPP", "1")
    with caplog.at_level(logging.WARNING, logger="cropstar.nn.star_steps"):
        assert star_steps.compiled_steps() is None and star_steps.step_implementation() == "python"
        assert _python_loops_ran(monkeypatch) == ["forward", "backward"] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "CROPSTAR_NO_CPP is set: STAR's step loops run in Python"
    ]


def test_the_module_flag_forces_the_python_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(star_steps, "USE_CPP", False)
    assert star_steps.step_implementation() == "python"
    assert _python_loops_ran(monkeypatch) == ["forward", "backward"] * 2


def test_cpp_loops_run_on_cpu_only() -> None:
    x = torch.empty(3, 2, 4, device="meta")  # any device but the CPU
    assert fused_star._compiled_steps(x, None) is None and star_steps.step_implementation("meta") == "python"
    assert star_steps.reusable_empty((2, 3), x).device.type == "meta"
    assert fused_star._compiled_steps(torch.empty(3, 2, 4, 5, 5), 1) is None  # convSTAR: Python loops


def test_no_toolchain_means_the_python_loops_with_one_line_saying_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_announcements: None
) -> None:
    import torch.utils.cpp_extension

    def no_ninja(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Ninja is required to load C++ extensions (pip install ninja to get it)")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_ninja)
    monkeypatch.setattr(star_steps, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="cropstar.nn.star_steps"):
        assert star_steps.compiled_steps() is None and star_steps.compiled_steps() is None
        assert _python_loops_ran(monkeypatch) == ["forward", "backward"] * 2
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "STAR's step loops run in Python: their C++ build failed (RuntimeError: Ninja is required to load C++ "
        "extensions (pip install ninja to get it))"
    )


def test_a_failed_compile_names_the_compiler_error(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
    fresh_announcements: None,
) -> None:  # fmt: skip
    broken = tmp_path / "star_steps.cpp"
    broken.write_text("#error this source fails on purpose\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setattr(star_steps, "SOURCE", broken)
    monkeypatch.setattr(star_steps, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="cropstar.nn.star_steps"):
        assert star_steps.compiled_steps() is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("STAR's step loops run in Python: their C++ build failed (RuntimeError: ")
    assert "error" in message and "this source fails on purpose" in message


# ---- the build lock ---------------------------------------------------------------------------------
def test_the_build_lock_serialises_builds_and_removes_a_dead_builds_lock(tmp_path: Path) -> None:
    build = tmp_path / "cropstar_star_steps_0123"
    build.mkdir()
    (build / "lock").touch()  # torch's lock file, left by a build that was killed
    with star_steps._build_lock(build):
        assert not (build / "lock").exists()
        with open(tmp_path / f"{build.name}.lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process would wait here
    with open(tmp_path / f"{build.name}.lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


@pytest.mark.slow
def test_processes_building_at_once_all_get_the_cpp_loops(compiled: ModuleType, tmp_path: Path) -> None:
    """Three processes start the first build in an empty extensions folder together (tens of seconds)."""
    environment = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CROPSTAR_NO_CPP": ""}
    code = "from cropstar.nn.star_steps import step_implementation; print(step_implementation())"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    assert [p.communicate(timeout=600)[0].strip() for p in processes] == ["cpp"] * 3


# ---- reusable buffers ---------------------------------------------------------------------------------
def _in_a_new_thread(function: Callable[[], None]) -> None:
    """Run ``function`` in a thread of its own: an empty pool of buffers (they are per thread)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def test_a_buffer_is_handed_out_again_only_once_nothing_holds_it(compiled: ModuleType) -> None:
    like = torch.empty(0)

    def check() -> None:
        first = star_steps.reusable_empty((10, 20), like)
        address = first.data_ptr()
        view = first[3:]
        del first
        second = star_steps.reusable_empty((10, 20), like)
        assert second.data_ptr() != address  # a view still holds the first
        del view
        third = star_steps.reusable_empty((5, 20), like)  # fits in the first
        assert third.data_ptr() == address and third.shape == (5, 20)
        assert star_steps.reusable_empty((10, 20), like.double()).data_ptr() not in (
            address,
            second.data_ptr(),
        )

    _in_a_new_thread(check)


def test_buffers_over_the_limit_are_not_kept(compiled: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(star_steps, "WORKSPACE_MAX_BYTES", 1000)
    like = torch.empty(0)

    def check() -> None:
        small = star_steps.reusable_empty((250,), like)  # 1000 bytes: kept
        address = small.data_ptr()
        del small
        assert star_steps.reusable_empty((250,), like).data_ptr() == address
        large = star_steps.reusable_empty((251,), like)
        assert large.shape == (251,) and large._base is None  # a tensor of its own, not a pool view

    _in_a_new_thread(check)
