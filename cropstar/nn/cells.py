"""The dense recurrent cells of the paper: STAR (eq. 10–12), vRNN (eq. 15), LSTM (eq. 16–21),
LSTM with only a forget gate (eq. 22–24), GRU (eq. 25–27) and RHN (Zilly et al. 2017).

Exactly the equations of DESIGN.md, one bias per gate; weights are stored (out, in).
Memory gates (``bias_init``): the gate weighing the NEW input gets the drawn bias b (chrono:
−log U(1, T_max−1); constant: ``gate_bias``), a gate weighing the OLD state −b: STAR b_k = b; LSTM
b_i = b, b_f = −b; LSTM w/f b_f = −b; GRU b_z = b; RHN b_T[d] = b for every micro-step d.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from cropstar.errors import InputError
from cropstar.nn.cell import RecurrentCell, State


class STARCell(RecurrentCell):
    """STAR: z = tanh(W_z x + b_z); k = σ(W_x x + W_h h + b_k); h' = tanh((1−k)∘h + k∘z)."""

    name = "star"
    input_gates = (("W_z", "b_z"), ("W_x", "b_k"))
    recurrent_weights = ("W_h",)

    def __init__(self, input_size: int, hidden_size: int, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        n, m = hidden_size, input_size
        self.W_z, self.b_z = self._weight(n, m), self._bias(n)
        self.W_x, self.W_h, self.b_k = self._weight(n, m), self._weight(n, n), self._bias(n)
        self.reset_parameters()

    def _memory_gate_init_(self, new_input_bias: Callable[[], Tensor]) -> None:
        self.b_k.copy_(new_input_bias())  # k weighs the new input

    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        (h_prev,) = state
        a_z, a_k = self.split(u_t, 2)
        z = torch.tanh(a_z)  # eq. 10
        k = torch.sigmoid(a_k + self._op(h_prev, fused["W_rec"]))  # eq. 11
        return (torch.tanh(h_prev + k * (z - h_prev)),)  # eq. 12


class VRNNCell(RecurrentCell):
    """Vanilla RNN: h' = tanh(W_x x + W_h h + b) (eq. 5/15)."""

    name = "vrnn"
    input_gates = (("W_x", "b"),)
    recurrent_weights = ("W_h",)

    def __init__(self, input_size: int, hidden_size: int, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        n, m = hidden_size, input_size
        self.W_x, self.W_h, self.b = self._weight(n, m), self._weight(n, n), self._bias(n)
        self.reset_parameters()

    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        (h_prev,) = state
        return (torch.tanh(u_t + self._op(h_prev, fused["W_rec"])),)


class LSTMCell(RecurrentCell):
    """LSTM (eq. 16–21): gates i, f, o, candidate z; c' = f∘c + i∘z; h' = o∘tanh(c')."""

    name = "lstm"
    num_states = 2
    input_gates = (("W_xi", "b_i"), ("W_xf", "b_f"), ("W_xo", "b_o"), ("W_xz", "b_z"))
    recurrent_weights = ("W_hi", "W_hf", "W_ho", "W_hz")

    def __init__(self, input_size: int, hidden_size: int, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        n, m = hidden_size, input_size
        for gate in "ifoz":
            setattr(self, f"W_x{gate}", self._weight(n, m))
            setattr(self, f"W_h{gate}", self._weight(n, n))
            setattr(self, f"b_{gate}", self._bias(n))
        self.reset_parameters()

    def _memory_gate_init_(self, new_input_bias: Callable[[], Tensor]) -> None:
        b = new_input_bias()
        self.b_i.copy_(b)  # i weighs the new candidate
        self.b_f.copy_(-b)  # f weighs the old cell state

    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        h_prev, c_prev = state
        a_i, a_f, a_o, a_z = self.split(u_t + self._op(h_prev, fused["W_rec"]), 4)
        c = torch.sigmoid(a_f) * c_prev + torch.sigmoid(a_i) * torch.tanh(a_z)  # eq. 20
        return torch.sigmoid(a_o) * torch.tanh(c), c  # eq. 21


class LSTMwfCell(RecurrentCell):
    """LSTM with only a forget gate (eq. 22–24): h' = tanh(f∘h + (1−f)∘z)."""

    name = "lstm_wf"
    input_gates = (("W_xf", "b_f"), ("W_xz", "b_z"))
    recurrent_weights = ("W_hf", "W_hz")

    def __init__(self, input_size: int, hidden_size: int, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        n, m = hidden_size, input_size
        for gate in "fz":
            setattr(self, f"W_x{gate}", self._weight(n, m))
            setattr(self, f"W_h{gate}", self._weight(n, n))
            setattr(self, f"b_{gate}", self._bias(n))
        self.reset_parameters()

    def _memory_gate_init_(self, new_input_bias: Callable[[], Tensor]) -> None:
        self.b_f.copy_(-new_input_bias())  # f weighs the old state

    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        (h_prev,) = state
        a_f, a_z = self.split(u_t + self._op(h_prev, fused["W_rec"]), 2)
        f = torch.sigmoid(a_f)
        return (torch.tanh(f * h_prev + (1 - f) * torch.tanh(a_z)),)


class GRUCell(RecurrentCell):
    """GRU (eq. 25–27): h' = (1−z)∘h + z∘tanh(W_xh x + W_hh (r∘h) + b_h)."""

    name = "gru"
    input_gates = (("W_xz", "b_z"), ("W_xr", "b_r"), ("W_xh", "b_h"))
    recurrent_weights = ("W_hz", "W_hr")

    def __init__(self, input_size: int, hidden_size: int, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        n, m = hidden_size, input_size
        for gate in "zrh":
            setattr(self, f"W_x{gate}", self._weight(n, m))
            setattr(self, f"W_h{gate}", self._weight(n, n))
            setattr(self, f"b_{gate}", self._bias(n))
        self.reset_parameters()

    def _memory_gate_init_(self, new_input_bias: Callable[[], Tensor]) -> None:
        self.b_z.copy_(new_input_bias())  # z weighs the new candidate

    def fused(self, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        out = super().fused(params)
        out["W_hh"] = self.parameter_map(params)["W_hh"]
        return out

    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        (h_prev,) = state
        a_z, a_r, a_h = self.split(u_t, 3)
        r_z, r_r = self.split(self._op(h_prev, fused["W_rec"]), 2)
        z = torch.sigmoid(a_z + r_z)
        r = torch.sigmoid(a_r + r_r)
        candidate = torch.tanh(a_h + self._op(r * h_prev, fused["W_hh"]))
        return (h_prev + z * (candidate - h_prev),)


class RHNCell(RecurrentCell):
    """Recurrent highway cell with coupled carry gate, recurrence depth D (Zilly et al. 2017).

    For d = 1..D, s_0 = h_{t-1}:
    h_d = tanh(W_H x·[d=1] + R_H[d] s + b_H[d]); t_d = σ(W_T x·[d=1] + R_T[d] s + b_T[d]);
    s_d = h_d∘t_d + s_{d−1}∘(1−t_d); h_t = s_D. R_H, R_T are (D, H, H); b_H, b_T are (D, H).
    """

    name = "rhn"
    input_gates = (("W_H", None), ("W_T", None))
    recurrent_weights = ()

    def __init__(self, input_size: int, hidden_size: int, *, recurrence_depth: int = 1, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        if not isinstance(recurrence_depth, int) or recurrence_depth < 1:
            raise InputError(f"rhn: recurrence_depth must be a positive integer, got {recurrence_depth!r}")
        n, m, d = hidden_size, input_size, recurrence_depth
        self.recurrence_depth = d
        self.W_H, self.W_T = self._weight(n, m), self._weight(n, m)
        self.R_H = torch.nn.Parameter(torch.empty(d, n, n))
        self.R_T = torch.nn.Parameter(torch.empty(d, n, n))
        self.b_H, self.b_T = self._bias(d, n), self._bias(d, n)
        self.reset_parameters()

    def _memory_gate_init_(self, new_input_bias: Callable[[], Tensor]) -> None:
        for d in range(self.recurrence_depth):  # t weighs the new candidate
            self.b_T[d].copy_(new_input_bias())

    def fused(self, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        out = super().fused(params)
        p = self.parameter_map(params)
        out["R"] = torch.cat([p["R_H"], p["R_T"]], dim=-2)  # (D, 2H, H)
        out["b"] = torch.cat([p["b_H"], p["b_T"]], dim=-1)  # (D, 2H)
        return out

    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        (s,) = state
        for d in range(self.recurrence_depth):
            a = self._op(s, fused["R"][d], fused["b"][d])
            if d == 0:
                a = a + u_t
            a_h, a_t = self.split(a, 2)
            t = torch.sigmoid(a_t)
            s = torch.tanh(a_h) * t + s * (1 - t)
        return (s,)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", recurrence_depth={self.recurrence_depth}"


DENSE_CELLS: dict[str, type[RecurrentCell]] = {
    cls.name: cls for cls in (STARCell, VRNNCell, LSTMCell, LSTMwfCell, GRUCell, RHNCell)
}
