"""The gesture classifier: conv RNN → mean over valid steps → CNN head → logits; shapes for every
conv cell, the mask in the time average, gradients to every layer, and overfitting a few clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cropstar.errors import InputError
from cropstar.nn import make_rnn
from cropstar.nn.gesture_classifier import GestureClassifier, make_gesture_classifier, masked_time_mean
from cropstar.validate.gestures import moving_digits

B, T, C, S, K = 2, 4, 1, 12, 5
SMALL = {"filters": 4, "head_filters": (4, 4, 6, 6)}


@pytest.mark.parametrize("cell", ["conv_star", "conv_lstm", "conv_lstm_wf"])
def test_logits_shape_for_every_conv_cell(cell: str) -> None:
    model = make_gesture_classifier(cell, C, layers=2, num_classes=K, **SMALL)
    assert model.rnn.cell == cell and model.rnn.num_layers == 2 and model.rnn.hidden_size == 4
    assert model(torch.rand(B, T, C, S, S)).shape == (B, K)
    assert model.features(torch.rand(B, T, C, S, S)).shape == (B, 4, S, S)
    # tiny frames: the pools keep a 1×1 map
    assert model(torch.rand(B, T, C, 3, 3)).shape == (B, K)


def test_head_has_the_papers_layers() -> None:
    model = make_gesture_classifier("conv_star", 3, layers=1, num_classes=27)
    convs = [m for m in model.head if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs) and convs[0].in_channels == 64
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.head) == 4
    assert model.head[-1].out_features == 27 and model.rnn.layers[0].kernel_size == 3


def test_the_time_average_reads_only_valid_steps() -> None:
    model = make_gesture_classifier("conv_star", C, layers=2, num_classes=K, **SMALL).eval()
    x = torch.rand(B, T, C, S, S)
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    with torch.no_grad():
        outputs, _ = model.rnn(x, mask=mask)
        expected = torch.stack([outputs[b, mask[b]].mean(dim=0) for b in range(B)])
        torch.testing.assert_close(model.features(x, mask), expected, atol=1e-6, rtol=0)
        logits = model(x, mask)
        torch.testing.assert_close(logits, model.head(expected), atol=1e-6, rtol=0)
        poisoned = x.clone()
        poisoned[~mask] = 50.0  # masked frames do not matter
        torch.testing.assert_close(model(poisoned, mask), logits, atol=1e-6, rtol=0)
        assert not torch.allclose(model(x), logits)  # ... while without the mask they do
        torch.testing.assert_close(model(x, torch.ones(B, T, dtype=torch.bool)), model(x), atol=1e-6, rtol=0)
        none_valid = torch.zeros(B, T, dtype=torch.bool)
        torch.testing.assert_close(model.features(x, none_valid), torch.zeros(B, 4, S, S))
    plain = torch.randn(B, T, 3, 2, 2)
    torch.testing.assert_close(masked_time_mean(plain), plain.mean(dim=1))


@pytest.mark.parametrize("cell", ["conv_star", "conv_lstm", "conv_lstm_wf"])
def test_gradients_reach_every_layer_and_the_head(cell: str) -> None:
    model = make_gesture_classifier(cell, C, layers=3, num_classes=K, t_max=T, **SMALL)
    loss = nn.functional.cross_entropy(model(torch.rand(B, T, C, S, S)), torch.tensor([0, 3]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, name
    assert {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("rnn.")} == {"0", "1", "2"}


def test_chrono_initialisation_and_errors() -> None:
    chrono = make_gesture_classifier("conv_star", C, layers=1, num_classes=K, t_max=32, **SMALL)
    assert float(chrono.rnn.layers[0].b_k.detach().max()) < 0  # keeps memory
    zero = make_gesture_classifier("conv_star", C, layers=1, num_classes=K, **SMALL)
    assert float(zero.rnn.layers[0].b_k.detach().abs().max()) == 0
    with pytest.raises(InputError, match="conv cell"):
        make_gesture_classifier("star", C, layers=1, num_classes=K)
    with pytest.raises(InputError, match="conv RNN"):
        GestureClassifier(make_rnn("lstm", 3, 4, 1), K)
    with pytest.raises(InputError, match="head_filters"):
        make_gesture_classifier("conv_lstm", C, layers=1, num_classes=K, head_filters=())
    with pytest.raises(InputError, match="num_classes"):
        make_gesture_classifier("conv_lstm", C, layers=1, num_classes=1)


def test_a_tiny_model_overfits_sixteen_moving_digit_clips() -> None:
    rng = np.random.default_rng(0)
    digits = np.zeros((8, 28, 28), dtype=np.uint8)
    for image in digits:  # an L-shaped stroke per "digit": turns and zooms are visible
        r, c = rng.integers(6, 12, size=2)
        image[r : r + 12, c : c + 3] = 255
        image[r + 9 : r + 12, c : c + 9] = 255
    clips = moving_digits(digits, n_clips=16, frames=6, size=16, seed=0)
    x, y = clips.tensors()
    model = make_gesture_classifier(
        "conv_star",
        1,
        filters=8,
        layers=2,
        num_classes=len(clips.classes),
        head_filters=(8, 8, 16, 16),
        t_max=6,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        logits = model(x)
    assert float(nn.functional.cross_entropy(logits, y)) < 0.1 * first
    assert (logits.argmax(dim=1) == y).all()
