"""The GPU path on CUDA, each test skipped where torch sees no GPU: the fused layers against the cells'
reference loops (values and every gradient, float64, with masks and initial states), float64
gradchecks of their hand-written backward, the fast inference path, training equal to the CPU's, an
AMP step finite, and ``classify`` of a small synthetic scene equal to the CPU's class map.

``CROPSTAR_TEST_DEVICE`` names the device under test (default ``cuda``); ``cpu`` runs the same tests
against the CPU (scripts/gpu_check.sh --dry-run), which checks the tests themselves, not CUDA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from crop_datasets import make_dataset
from sequence_masks import awkward_mask
from torch import Tensor
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import load_artifact
from cropstar.model.default_model import default_model_path
from cropstar.nn import make_rnn
from cropstar.nn.fast_star import star_stack_inference
from cropstar.nn.fused_cells import FUSED_STEPS, FusedRecurrence
from cropstar.nn.fused_gated import GRURecurrence, LSTMRecurrence, RHNRecurrence
from cropstar.nn.fused_star import STARLayer
from cropstar.nn.stack import DeepRNN
from cropstar.train.config import load_config
from cropstar.train.trainer import SplitTensors, loss_terms, train

DEVICE = torch.device(os.environ.get("CROPSTAR_TEST_DEVICE", "cuda"))
needs_device = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="needs CUDA: torch.cuda.is_available() is False (no GPU, or a CPU build of torch)",
)
F64 = torch.float64
B, T, I, H, L = 5, 7, 4, 6, 3
CELLS = ["star", "vrnn", "lstm_wf", "lstm", "gru", "rhn"]


def _stack(cell: str, device: torch.device, dtype: torch.dtype = F64) -> DeepRNN:
    """A deep stack with random biases (not only the initialiser's), the same weights on every device."""
    torch.manual_seed(0)
    options = {"recurrence_depth": 2} if cell == "rhn" else {"kernel_size": 3} if cell == "conv_star" else {}
    rnn = make_rnn(cell, 2 if cell == "conv_star" else I, H, L, t_max=T, **options).to(dtype)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("b"):
                param.copy_(0.5 * torch.randn_like(param))
    return rnn.to(device)



def _run(rnn: DeepRNN, fused: bool, x: Tensor, h0: tuple[Tensor, ...], mask: Tensor | None) -> dict[str, Tensor]:
    """Every layer's outputs, the final states and the gradients of a loss that reads them all, on the
    CPU for comparison. x, h0 and mask are moved to the stack's device here."""
    device = next(rnn.parameters()).device
    rnn.fused = fused
    rnn.zero_grad()
    x = x.to(device).requires_grad_(True)
    starts = tuple(part.to(device).requires_grad_(True) for part in h0)
    layers, states = rnn(x, starts[0] if len(starts) == 1 else starts, None if mask is None else mask.to(device),
                         return_all_layers=True)  # fmt: skip
    parts = states if isinstance(states, tuple) else (states,)
    weights = torch.Generator().manual_seed(2)
    loss = sum((out * torch.randn(out.shape, generator=weights, dtype=out.dtype).to(device)).sum() for out in layers)
    for part in parts:
        loss = loss + (part * torch.randn(part.shape, generator=weights, dtype=part.dtype).to(device)).sum()
    loss.backward()
    found = {f"out{i}": out.detach() for i, out in enumerate(layers)}
    found.update({f"states{i}": part.detach() for i, part in enumerate(parts)})
    found["grad_x"] = x.grad
    found.update({f"grad_h0_{i}": part.grad for i, part in enumerate(starts)})
    found.update({f"grad_{name}": p.grad for name, p in rnn.named_parameters()})
    return {name: value.cpu() for name, value in found.items()}


@needs_device
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cell", [*CELLS, "conv_star"])
def test_fused_layers_equal_the_reference_loops_on_the_device(cell: str, masked: bool) -> None:
    x = torch.randn(B, T, 2, 5, 5, dtype=F64) if cell == "conv_star" else torch.randn(B, T, I, dtype=F64)
    rnn = _stack(cell, DEVICE)
    h0 = tuple(0.5 * torch.randn(L, B, H, *x.shape[3:], dtype=F64) for _ in range(rnn.num_states))
    mask = awkward_mask(B, T) if masked else None
    fused = _run(rnn, True, x, h0, mask)
    reference = _run(rnn, False, x, h0, mask)
    on_cpu = _run(_stack(cell, torch.device("cpu")), False, x, h0, mask)
    assert fused.keys() == reference.keys() == on_cpu.keys()
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], atol=1e-10, rtol=1e-10, msg=name)
        torch.testing.assert_close(fused[name], on_cpu[name], atol=1e-10, rtol=1e-10, msg=name)


def _leaf(*shape: int, scale: float = 0.5) -> Tensor:
    return (scale * torch.randn(*shape, dtype=F64)).to(DEVICE).requires_grad_(True)


@needs_device
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_of_the_star_layers_on_the_device(masked: bool) -> None:
    torch.manual_seed(3)
    mask = (torch.rand(4, 3) < 0.6).to(DEVICE) if masked else None
    dense = (_leaf(4, 3, 2, scale=1), _leaf(8, 2), _leaf(8, scale=1), _leaf(4, 4), _leaf(3, 4))
    assert torch.autograd.gradcheck(lambda *args: STARLayer.apply(*args, mask, None), dense)
    conv = (_leaf(4, 3, 2, 4, 4, scale=1), _leaf(4, 2, 3, 3, scale=0.3), _leaf(4, scale=1),
            _leaf(2, 2, 3, 3, scale=0.3), _leaf(3, 2, 4, 4))  # fmt: skip
    assert torch.autograd.gradcheck(lambda *args: STARLayer.apply(*args, mask, 1), conv)


@needs_device
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_of_the_baselines_recurrences_on_the_device(masked: bool) -> None:
    torch.manual_seed(4)
    mask = (torch.rand(5, 3) < 0.6).to(DEVICE) if masked else None
    for name, step in FUSED_STEPS.items():
        gates = {"vrnn": 1, "lstm_wf": 2}[name]
        inputs = (_leaf(5, 3, gates * 4), _leaf(gates * 4, 4), _leaf(3, 4))
        assert torch.autograd.gradcheck(lambda *args, s=step: FusedRecurrence.apply(*args, mask, s), inputs), name
    shapes = {
        LSTMRecurrence: [(5, 3, 16), (16, 4), (3, 4), (3, 4)],
        GRURecurrence: [(5, 3, 12), (8, 4), (4, 4), (3, 4)],
        RHNRecurrence: [(5, 3, 8), (2, 8, 4), (2, 8), (3, 4)],
    }
    for function, shape in shapes.items():
        inputs = tuple(_leaf(*s) for s in shape)
        assert torch.autograd.gradcheck(lambda *args, f=function: f.apply(*args, mask), inputs), function.__name__


@needs_device
@pytest.mark.parametrize("batch", [7, 1100])  # 1100: more sequences than the CPU's chunk
def test_the_fast_inference_path_equals_the_reference_on_the_device(batch: int) -> None:
    rnn = _stack("star", DEVICE, torch.float32)
    x = torch.randn(batch, T, I, device=DEVICE)
    mask = (torch.rand(batch, T) < 0.7).to(DEVICE)
    with torch.inference_mode():
        outputs, finals = star_stack_inference(list(rnn.layers), x, [None] * L, mask, keep_all=True)
        rnn.fused = False
        reference, states = rnn(x, mask=mask, return_all_layers=True)
    assert outputs[-1].device.type == DEVICE.type
    for got, want in zip(outputs, reference, strict=True):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(torch.stack(finals), states, atol=2e-6, rtol=1e-5)


def _classifier(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier(Architecture("star", 18, 32, 3, 4)).to(device)


def _training_steps(device: torch.device, steps: int = 3, amp: bool = False) -> tuple[list[float], torch.nn.Module]:
    """SGD steps on fixed batches (x (64, 10, 18), 70% valid steps): the losses and the model."""
    model = _classifier(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # linear in the gradient: no
    # sign(g) of Adam's first steps, which turns rounding differences of a near-zero gradient into lr
    generator = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 10, 18, generator=generator).to(device)
        mask = (torch.rand(64, 10, generator=generator) < 0.7).to(device)
        labels = torch.randint(0, 4, (64,), generator=generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x, mask)
        terms = loss_terms(logits, labels, None)
        optimiser.zero_grad(set_to_none=True)
        (terms[0] / terms[1]).float().backward()
        optimiser.step()
        losses.append(float((terms[0] / terms[1]).detach()))
    return losses, model


@needs_device
def test_training_steps_on_the_device_equal_the_cpus() -> None:
    losses, model = _training_steps(DEVICE)
    cpu_losses, cpu_model = _training_steps(torch.device("cpu"))
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-5)
    for (name, got), want in zip(model.state_dict().items(), cpu_model.state_dict().values(), strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-4, msg=name)


@needs_device
def test_an_amp_step_is_finite_with_the_stack_in_float32() -> None:
    model = _classifier(DEVICE)
    x, mask = torch.randn(16, 10, 18, device=DEVICE), torch.rand(16, 10, device=DEVICE) < 0.7
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        outputs, _ = model.rnn(x, mask=mask)
        logits = model.head(outputs, mask)
    assert outputs.dtype == torch.float32 and logits.dtype == torch.bfloat16  # the head ran under autocast
    losses, trained = _training_steps(DEVICE, amp=True)
    assert np.isfinite(losses).all()
    assert all(torch.isfinite(p).all() for p in trained.parameters())


@needs_device
def test_batches_come_the_same_from_a_device_copy_pinned_memory_or_the_cpu() -> None:
    generator = torch.Generator().manual_seed(6)
    split = SplitTensors(torch.randn(50, 4, 3, generator=generator), torch.rand(50, 4, generator=generator) < 0.5,
                         torch.randint(0, 3, (50,), generator=generator))  # fmt: skip
    indices = torch.randperm(50, generator=generator)[:20]
    want = split.batch(indices, torch.device("cpu"))
    for source in (split, split.place(DEVICE)):
        got = source.batch(indices, DEVICE)
        assert all(t.device.type == DEVICE.type for t in got)
        assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want, strict=True))
    assert (split.place(DEVICE).on_device is not None) == (DEVICE.type == "cuda")


@needs_device
def test_a_training_run_on_the_device_equals_the_cpus(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "crops")
    base = ["model.hidden_size=16", "model.num_layers=2", "batch_size=32", "epochs=2", "optimiser.name=sgd",
            "optimiser.lr=0.3", "optimiser.momentum=0.9"]  # fmt: skip
    got, want = (
        train(load_config(None, [*base, f"device={device}"]), data, tmp_path / folder)
        for device, folder in ((str(DEVICE), "on_device"), ("cpu", "on_cpu"))
    )
    for row, cpu_row in zip(got.history, want.history, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert row[key] == pytest.approx(cpu_row[key], rel=1e-4, abs=1e-5), key
    card = json.loads((got.model / "model.json").read_text())
    assert card["training"]["device"].startswith(DEVICE.type)


@needs_device
def test_classify_on_the_device_gives_the_cpus_class_map(tmp_path: Path) -> None:
    """``cropstar classify --device`` on the device and on the CPU: the same class map, except where the
    two most probable classes are within float rounding (ties; none expected on this scene)."""
    write_scene(make_scene(size=48, dates=26, seed=5), tmp_path / "scene")
    maps, tags = {}, {}
    for device in (str(DEVICE), "cpu"):
        out = tmp_path / f"{device.replace(':', '')}.tif"
        result = CliRunner().invoke(app, [
            "classify", "--cube", str(tmp_path / "scene" / "cube"), "--out", str(out), "--device", device,
            "--probabilities", "--per-timestep", "--block-size", "32", "--threads", "2",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as src:
            maps[device], tags[device] = src.read().astype(int), src.tags()
    got, want = maps[str(DEVICE)], maps["cpu"]
    k = len(load_artifact(default_model_path()).card.class_table)
    top_two = np.sort(want[2 : 2 + k], axis=0)[-2:]  # percent
    differ = got[0] != want[0]
    assert not differ[top_two[1] - top_two[0] > 1].any() and differ.mean() <= 0.005  # the class map
    assert np.abs(got[1 : 2 + k] - want[1 : 2 + k]).max() <= 1  # confidence and probabilities, in percent
    assert (got[2 + k :] != want[2 + k :]).mean() <= 0.001  # the class after each date
    assert tags[str(DEVICE)]["device"].startswith(DEVICE.type) and tags["cpu"]["device"] == "cpu"
