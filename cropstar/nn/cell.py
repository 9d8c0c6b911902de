"""The recurrent-cell base: parameters by name, fused input projection, the loop over time (eq. 1–2).

A cell is one layer of the deep lattice. Subclasses declare their parameters with the paper's
symbols and implement one step, :meth:`RecurrentCell.recur`; the base runs that step over a
sequence, applies the validity mask and initialises the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn.init import BIAS_INITS, WEIGHT_INITS, chrono_bias, gate_bias_problem, init_weight_

State = tuple[Tensor, ...]


class RecurrentCell(nn.Module):
    """One recurrent layer h_t = f(x_t, h_{t-1}; W) (paper eq. 1).

    Class attributes declare the layout used for fusing at call time:
    ``input_gates`` lists (weight, bias) pairs applied to the layer input, in gate order;
    ``recurrent_weights`` lists the matrices applied to h_{t-1}, fused in the same order.
    Parameters whose name starts with ``b`` are biases; every other parameter is a weight.
    """

    name: ClassVar[str] = ""
    num_states: ClassVar[int] = 1
    feature_dim: ClassVar[int] = -1  # the gate / channel axis: -1 dense, -3 conv
    input_gates: ClassVar[tuple[tuple[str, str | None], ...]] = ()
    recurrent_weights: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        weight_init: str = "orthogonal",
        bias_init: str | None = None,
        t_max: int | None = None,
        gate_bias: float | None = None,
        kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        for label, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{self.name}: {label} must be a positive integer, got {value!r}")
        if weight_init not in WEIGHT_INITS:
            raise InputError(f"unknown weight_init {weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}")
        if bias_init is None:
            bias_init = "chrono" if t_max is not None else "zero"
        if bias_init not in BIAS_INITS:
            raise InputError(f"unknown bias_init {bias_init!r}; choose one of {', '.join(BIAS_INITS)}")
        if bias_init == "chrono" and (t_max is None or t_max < 2):
            raise InputError(f"chrono initialisation needs t_max >= 2 (the sequence length), got {t_max!r}")
        problem = gate_bias_problem(bias_init, gate_bias)
        if problem:
            raise InputError(problem)
        if gate_bias is not None and not math.isfinite(gate_bias):
            raise InputError(f"gate_bias must be a finite number, got {gate_bias!r}")
        if kernel_size is not None and self.feature_dim != -3:
            raise InputError(f"{self.name}: kernel_size applies to conv cells only, got {kernel_size!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_init = weight_init
        self.bias_init = bias_init
        self.t_max = t_max
        self.gate_bias = gate_bias
        self.kernel_size = kernel_size

    # ---- parameter construction --------------------------------------------------------------
    def _weight(self, rows: int, cols: int) -> nn.Parameter:
        """A dense weight (rows, cols) = (out, in); conv cells override to OIHW kernels."""
        return nn.Parameter(torch.empty(rows, cols))

    def _bias(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(*shape))

    # ---- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights by ``weight_init`` (orthogonal by default), biases zero, then the memory gates by
        ``bias_init``: ``chrono`` draws the bias of the gate weighing the NEW input as −log U(1, T_max−1)
        per unit, ``constant`` sets it to ``gate_bias``, ``zero`` leaves it 0; a gate weighing the OLD
        state gets the negative (:meth:`_memory_gate_init_` says which gates each cell has)."""
        for param_name, param in self.named_parameters(recurse=False):
            if param_name.startswith("b"):
                param.zero_()
            else:  # (out, in), a stack (D, out, in) of them, or an OIHW kernel
                init_weight_(param, self.weight_init, fan_in_dims=3 if param.dim() == 4 else 1)
        if self.bias_init == "chrono":
            t_max = self.t_max
            assert t_max is not None
            self._memory_gate_init_(lambda: -chrono_bias(self.hidden_size, t_max))
        elif self.bias_init == "constant":
            assert self.gate_bias is not None
            value = float(self.gate_bias)
            self._memory_gate_init_(lambda: torch.full((self.hidden_size,), value))

    def _memory_gate_init_(self, new_input_bias: Callable[[], Tensor]) -> None:
        """Set the memory gates' biases: ``new_input_bias()`` draws (H,) values for a gate weighing the
        new input, a gate weighing the old state gets their negative; cells without one keep zeros."""

    # ---- call-time fusing and the operator ---------------------------------------------------
    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The cell's linear map: a matrix product (dense) or a "same" convolution (conv)."""
        return F.linear(x, weight, bias)

    def parameter_map(self, params: Mapping[str, Tensor] | None = None) -> Mapping[str, Tensor]:
        """``params`` if given, else this cell's own parameters by name."""
        return dict(self.named_parameters(recurse=False)) if params is None else params

    def fused(self, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Gate weights concatenated for one product per operand; computed once per sequence.

        ``params`` replaces the cell's own parameters (by name), e.g. weights drawn per run in the
        lattice simulation; :meth:`recur` reads parameters only through this dictionary.
        """
        p = self.parameter_map(params)
        weights = [p[w] for w, _ in self.input_gates]
        out: dict[str, Tensor] = {"W_in": torch.cat(weights, dim=0)}
        if any(b is not None for _, b in self.input_gates):
            out["b_in"] = torch.cat(
                [p[b] if b is not None else w.new_zeros(w.shape[0]) for w, (_, b) in zip(weights, self.input_gates)]
            )
        if self.recurrent_weights:
            out["W_rec"] = torch.cat([p[w] for w in self.recurrent_weights], dim=0)
        return out

    def project_input(self, x: Tensor, fused: dict[str, Tensor]) -> Tensor:
        """All input terms W·x + b at once: x (..., I) → (..., G) (conv: channels at -3)."""
        return self._op(x, fused["W_in"], fused.get("b_in"))

    def split(self, gates: Tensor, n: int) -> tuple[Tensor, ...]:
        return gates.chunk(n, dim=self.feature_dim)

    # ---- the recurrence ----------------------------------------------------------------------
    def recur(self, u_t: Tensor, state: State, fused: dict[str, Tensor]) -> State:
        """One step from the projected input u_t and the previous state; returns the new state."""
        raise NotImplementedError

    def zero_state(self, x_t: Tensor) -> State:
        """Zero state(s) for a batch of one-step inputs x_t (B, I) (conv: (B, C, h, w))."""
        h = x_t.new_zeros(*x_t.shape[:-1], self.hidden_size)
        return tuple(h for _ in range(self.num_states))

    def _as_state(self, state: Tensor | State) -> State:
        """A state given as h or (h, c) as a tuple; a wrong number of tensors is an InputError."""
        parts = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(parts) != self.num_states:
            form = "a tensor h" if self.num_states == 1 else "a tuple (h, c)"
            raise InputError(f"{self.name}: state must be {form}, got {len(parts)} tensor(s)")
        return parts

    def forward(self, x_t: Tensor, state: Tensor | State | None = None) -> Tensor | State:
        """One time step. x_t (B, I) (conv: (B, C, h, w)); state h, or (h, c) for LSTM-type cells.

        Returns the new state in the same form.
        """
        state_tuple = self.zero_state(x_t) if state is None else self._as_state(state)
        fused = self.fused()
        new = self.recur(self.project_input(x_t, fused), state_tuple, fused)
        return new[0] if self.num_states == 1 else new

    def run(
        self, x: Tensor, state: Tensor | State | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """The layer over a sequence. x (B, T, I) (conv: (B, T, C, h, w)); mask (B, T) bool.

        A masked step leaves the state unchanged and repeats it as that step's output.
        Returns the outputs h_1..h_T (B, T, H) (conv: (B, T, H, h, w)) and the final state.
        """
        fused = self.fused()
        u = self.project_input(x, fused)
        state = self.zero_state(x[:, 0]) if state is None else self._as_state(state)
        outputs = []
        for t in range(x.shape[1]):
            new = self.recur(u[:, t], state, fused)
            if mask is not None:
                keep = mask[:, t].view((-1,) + (1,) * (new[0].dim() - 1))
                new = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
            state = new
            outputs.append(state[0])
        return torch.stack(outputs, dim=1), state

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.kernel_size is not None:
            text += f", kernel_size={self.kernel_size}"
        text += f", weight_init={self.weight_init}, bias_init={self.bias_init}"
        return text + (f", gate_bias={self.gate_bias:g}" if self.gate_bias is not None else "")
