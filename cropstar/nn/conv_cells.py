"""Convolutional cells: convSTAR (paper eq. 28–30), convLSTM and convLSTM w/f (Xingjian et al. 2015).

The same step equations as the dense cells with every matrix product replaced by a "same"-padded
convolution; kernels are stored OIHW and initialised orthogonally on their flattened (O, I·kh·kw) form.
Inputs are (B, T, C, h, w); states (B, H, h, w) with H the number of filters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn.cell import RecurrentCell, State
from cropstar.nn.cells import LSTMCell, LSTMwfCell, STARCell


class ConvolutionMixin:
    """Turns a dense cell into its convolutional form: OIHW kernels, conv2d, channels at dim -3."""

    feature_dim = -3
    kernel_size: int | None
    hidden_size: int

    def __init__(self, input_size: int, hidden_size: int, *, kernel_size: int = 3, **options) -> None:
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise InputError(f"conv cells need a positive integer kernel_size, got {kernel_size!r}")
        super().__init__(input_size, hidden_size, kernel_size=kernel_size, **options)  # type: ignore[call-arg]

    def _weight(self, rows: int, cols: int) -> nn.Parameter:
        assert self.kernel_size is not None
        return nn.Parameter(torch.empty(rows, cols, self.kernel_size, self.kernel_size))

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x (..., C, h, w) convolved with weight (O, C, k, k), "same" padding → (..., O, h, w)."""
        leading = x.shape[:-3]
        y = F.conv2d(x.reshape(-1, *x.shape[-3:]), weight, bias, padding="same")
        return y.reshape(*leading, *y.shape[-3:])

    def zero_state(self, x_t: Tensor) -> State:
        h = x_t.new_zeros(*x_t.shape[:-3], self.hidden_size, *x_t.shape[-2:])
        return tuple(h for _ in range(self.num_states))  # type: ignore[attr-defined]


class ConvSTARCell(ConvolutionMixin, STARCell):
    """convSTAR: K = σ(W_x*X + W_h*H + B_K); Z = tanh(W_z*X + B_z); H' = tanh(H + K∘(Z − H))."""

    name = "conv_star"


class ConvLSTMCell(ConvolutionMixin, LSTMCell):
    """convLSTM: the LSTM equations with convolutions; state (H, C)."""

    name = "conv_lstm"


class ConvLSTMwfCell(ConvolutionMixin, LSTMwfCell):
    """convLSTM w/f: the forget-gate-only LSTM equations with convolutions."""

    name = "conv_lstm_wf"


CONV_CELLS: dict[str, type[RecurrentCell]] = {
    cls.name: cls for cls in (ConvSTARCell, ConvLSTMCell, ConvLSTMwfCell)
}
