"""The Jacobian probe (paper §3.1, eq. 6–9, 13–14): singular values at the representative point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropstar.analysis import JacobianSpectrum, jacobian_singular_values
from cropstar.errors import InputError

H = 6


@pytest.mark.parametrize(
    ("cell", "j", "h"),
    [("vrnn", 1.0, 1.0), ("lstm", 0.25, 0.25), ("star", 0.5, 0.5)],
)
def test_paper_values_at_the_zero_point(cell: str, j: float, h: float) -> None:
    spectrum = jacobian_singular_values(cell, H)
    assert isinstance(spectrum, JacobianSpectrum)
    assert spectrum.J.shape == (H,) and spectrum.H.shape == (H,)
    np.testing.assert_allclose(spectrum.J, j, rtol=0, atol=1e-10)
    np.testing.assert_allclose(spectrum.H, h, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", ["gru", "lstm_wf", "rhn"])
def test_input_jacobian_half_for_gated_cells(cell: str) -> None:
    """J = (1 − gate) W at zero: σ(0) = 0.5 times an orthogonal matrix."""
    spectrum = jacobian_singular_values(cell, H)
    np.testing.assert_allclose(spectrum.J, 0.5, rtol=0, atol=1e-10)
    # H is not a multiple of an orthogonal matrix for these cells (0.5·I + 0.5·W-like terms)
    assert spectrum.H.max() - spectrum.H.min() > 1e-3


def test_singular_values_descending_and_summary() -> None:
    spectrum = jacobian_singular_values("gru", H, seed=3)
    assert np.all(np.diff(spectrum.H) <= 1e-12)
    summary = spectrum.summary()
    assert summary["cell"] == "gru"
    assert summary["H_min"] == pytest.approx(spectrum.H.min())
    assert summary["H_max"] == pytest.approx(spectrum.H.max())
    assert summary["H_mean"] == pytest.approx(spectrum.H.mean())
    assert summary["J_min"] == pytest.approx(0.5) and summary["J_max"] == pytest.approx(0.5)


@pytest.mark.parametrize("cell", ["vrnn", "lstm", "star"])
def test_non_zero_point_changes_the_spectrum(cell: str) -> None:
    at_zero = jacobian_singular_values(cell, H)
    x = torch.linspace(-1.0, 1.0, H)
    h = torch.linspace(0.8, -0.6, H)
    moved = jacobian_singular_values(cell, H, x=x, h_prev=h)
    assert not np.allclose(moved.J, at_zero.J, atol=1e-4)
    assert not np.allclose(moved.H, at_zero.H, atol=1e-4)
    assert np.isfinite(moved.J).all() and np.isfinite(moved.H).all()


def test_vrnn_at_a_point_matches_closed_form() -> None:
    """vRNN: J = diag(1 − tanh²(a)) W_x with a = W_x x + W_h h; check against the formula."""
    x = torch.linspace(-0.5, 0.7, H, dtype=torch.float64)
    h = torch.linspace(0.3, -0.2, H, dtype=torch.float64)
    spectrum = jacobian_singular_values("vrnn", H, x=x, h_prev=h, seed=5)
    from cropstar.nn.stack import make_rnn

    torch.manual_seed(5)
    layer = make_rnn("vrnn", H, H, 1, bias_init="zero").layers[0].double()
    layer.reset_parameters()
    with torch.no_grad():
        d = 1 - torch.tanh(layer.W_x @ x + layer.W_h @ h) ** 2
        expected_j = torch.linalg.svdvals(d[:, None] * layer.W_x).numpy()
        expected_h = torch.linalg.svdvals(d[:, None] * layer.W_h).numpy()
    np.testing.assert_allclose(spectrum.J, expected_j, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(spectrum.H, expected_h, rtol=1e-10, atol=1e-12)


def test_seed_makes_it_deterministic() -> None:
    a = jacobian_singular_values("gru", H, seed=1)
    b = jacobian_singular_values("gru", H, seed=1)
    c = jacobian_singular_values("gru", H, seed=2)
    np.testing.assert_array_equal(a.H, b.H)
    assert not np.allclose(a.H, c.H)


@pytest.mark.parametrize("name", ["x", "h_prev"])
def test_wrong_point_shape_rejected(name: str) -> None:
    with pytest.raises(InputError, match=name):
        jacobian_singular_values("star", H, **{name: torch.zeros(H + 1)})
    with pytest.raises(InputError, match=name):
        jacobian_singular_values("star", H, **{name: torch.zeros(1, H)})


@pytest.mark.parametrize("cell", ["conv_star", "nope"])
def test_non_dense_cell_rejected(cell: str) -> None:
    with pytest.raises(InputError, match=cell):
        jacobian_singular_values(cell, H)


def test_probe_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    jacobian_singular_values("star", 4, seed=9)
    torch.testing.assert_close(torch.rand(3), expected)
