"""Per-layer gradient norms of a real model during its first training steps (paper §5.1, Fig. 3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cropstar.analysis import LayerGradientTrace, layer_gradient_norms, track_layer_gradients
from cropstar.analysis.training_gradients import cross_entropy_ignoring_missing
from cropstar.errors import InputError
from cropstar.nn import PerSequenceHead, PerTimestepHead, SequenceClassifier, make_rnn

B, T, I, HID, C, L = 5, 6, 3, 8, 4, 4


def _model(head: type[nn.Module] = PerSequenceHead) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(make_rnn("star", I, HID, L), head(HID, C))


def _batches(n: int, per_step: bool = False, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = (B, T) if per_step else (B,)
    return [(torch.randn(B, T, I, generator=g), torch.randint(0, C, shape, generator=g)) for _ in range(n)]


def _hand_norms(
    model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, mask=None
) -> tuple[np.ndarray, float]:
    model.zero_grad()
    logits = model(x, mask)
    loss = nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1), ignore_index=-1)
    loss.backward()
    norms = []
    for layer in model.rnn.layers:
        flat = torch.cat([p.grad.reshape(-1) for p in layer.parameters()])
        norms.append(float(flat.norm()))
    return np.asarray(norms), float(loss.detach())


def test_first_row_equals_one_hand_backward() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    batches = _batches(3)
    trace = track_layer_gradients(model, batches, steps=3)
    assert isinstance(trace, LayerGradientTrace)
    assert trace.norms.shape == (3, L) and trace.loss.shape == (3,)
    expected, loss = _hand_norms(reference, *batches[0])
    np.testing.assert_allclose(trace.norms[0], expected, rtol=1e-5)
    np.testing.assert_allclose(trace.at_init, expected, rtol=1e-5)
    assert trace.loss[0] == pytest.approx(loss, rel=1e-6)
    assert (trace.norms > 0).all() and np.isfinite(trace.norms).all()


def test_second_row_is_after_one_adam_step() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    batches = _batches(2)
    trace = track_layer_gradients(model, batches, steps=2)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.9, 0.999))
    _hand_norms(reference, *batches[0])
    optimizer.step()
    expected, loss = _hand_norms(reference, *batches[1])
    np.testing.assert_allclose(trace.norms[1], expected, rtol=1e-5)
    assert trace.loss[1] == pytest.approx(loss, rel=1e-6)
    # the model passed in was trained in place: two Adam steps, like the reference after its second
    optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), _model().parameters()))


def test_custom_optimizer_and_steps_limit() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    x, y = _batches(1)[0]
    batches = [(x, y)] * 5
    calls: list[tuple[int, int]] = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trace = track_layer_gradients(model, batches, steps=3, optimizer=optimizer,
                                  progress=lambda d, t: calls.append((d, t)))
    assert trace.norms.shape == (3, L)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    # lr 0: nothing changes, so the same batch gives the same norms every step (no stale .grad)
    np.testing.assert_allclose(trace.norms[1], trace.norms[0], rtol=1e-6)
    np.testing.assert_allclose(trace.norms[2], trace.norms[0], rtol=1e-6)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_fewer_batches_than_steps() -> None:
    trace = track_layer_gradients(_model(), _batches(2), steps=10)
    assert trace.norms.shape == (2, L)


def test_no_batches_rejected() -> None:
    with pytest.raises(InputError, match="no batches"):
        track_layer_gradients(_model(), [], steps=3)


def test_mask_is_passed_to_the_model() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    x, y = _batches(1)[0]
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, -2:] = False
    trace = track_layer_gradients(model, [(x, y, mask)], steps=1)
    expected, loss = _hand_norms(reference, x, y, mask)
    np.testing.assert_allclose(trace.norms[0], expected, rtol=1e-5)
    assert trace.loss[0] == pytest.approx(loss, rel=1e-6)
    unmasked, _ = _hand_norms(copy.deepcopy(reference), x, y)
    assert not np.allclose(unmasked, expected)


def test_ignored_labels_contribute_nothing() -> None:
    """A batch whose labels are all −1 but one gives that one sample's loss and gradients."""
    model = _model()
    twin = copy.deepcopy(model)
    x, y = _batches(1)[0]
    y_missing = torch.full_like(y, -1)
    y_missing[2] = y[2]
    full = track_layer_gradients(model, [(x, y_missing)], steps=1)
    single = track_layer_gradients(twin, [(x[2:3], y[2:3])], steps=1)
    assert full.loss[0] == pytest.approx(single.loss[0], rel=1e-5)
    np.testing.assert_allclose(full.norms[0], single.norms[0], rtol=1e-4)


def test_per_timestep_labels_with_missing_steps() -> None:
    model = _model(PerTimestepHead)
    reference = copy.deepcopy(model)
    x, y = _batches(1, per_step=True)[0]
    y = y.clone()
    y[:, :2] = -1
    trace = track_layer_gradients(model, [(x, y)], steps=1)
    with torch.no_grad():
        logits = reference(x)[:, 2:]
    expected = nn.functional.cross_entropy(logits.reshape(-1, C), y[:, 2:].reshape(-1))
    assert trace.loss[0] == pytest.approx(float(expected), rel=1e-5)


def test_cross_entropy_ignoring_missing() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, C, generator=g)
    labels = torch.tensor([0, -1, 2, -1, 3, 1])
    keep = labels >= 0
    expected = nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(cross_entropy_ignoring_missing(logits, labels), expected)


def test_layer_gradient_norms_on_deep_rnn_and_model() -> None:
    model = _model()
    x, y = _batches(1)[0]
    expected, _ = _hand_norms(model, x, y)
    np.testing.assert_allclose(layer_gradient_norms(model), expected, rtol=1e-6)
    np.testing.assert_allclose(layer_gradient_norms(model.rnn), expected, rtol=1e-6)
    model.zero_grad(set_to_none=True)
    np.testing.assert_array_equal(layer_gradient_norms(model), np.zeros(L))


def test_layer_gradient_norms_ignore_frozen_layers() -> None:
    model = _model()
    for p in model.rnn.layers[0].parameters():
        p.requires_grad_(False)
    x, y = _batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    norms = layer_gradient_norms(model)
    assert norms[0] == 0.0 and (norms[1:] > 0).all()


@pytest.mark.parametrize("model", [nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2))])
def test_model_without_rnn_rejected(model: nn.Module) -> None:
    with pytest.raises(InputError, match="DeepRNN"):
        layer_gradient_norms(model)


def test_plot_layer_gradients_writes_png(tmp_path) -> None:
    from cropstar.analysis.plots import plot_layer_gradients

    trace = track_layer_gradients(_model(), _batches(2), steps=2)
    path = plot_layer_gradients({"star": trace}, tmp_path / "fig" / "fig3.png")
    assert path == tmp_path / "fig" / "fig3.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
