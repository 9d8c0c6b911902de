"""Deep recurrent stacks: L distinct cells, layer l fed by layer l−1's states (paper eq. 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn.cell import RecurrentCell, State
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.conv_cells import CONV_CELLS
from cropstar.nn.fast_star import star_stack_inference
from cropstar.nn.fused_cells import FUSED_LAYERS, fused_stack
from cropstar.nn.fused_star import star_stack_train

CELLS: dict[str, type[RecurrentCell]] = {**DENSE_CELLS, **CONV_CELLS}

States = Tensor | tuple[Tensor, Tensor]


def _tracing() -> bool:
    """Whether the forward pass is being traced, exported or compiled: the fused layers' in-place,
    hand-differentiated loops are then replaced by the cells' plain ones."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class DeepRNN(nn.Module):
    """A deep RNN: ``layers[0]`` at the bottom reads the data, ``layers[-1]`` gives the outputs."""

    #: Dense stacks run fused layers (cropstar/nn/fused_star.py, fast_star.py without gradients for STAR;
    #: fused_cells.py and fused_gated.py for the baselines), as does convSTAR with an odd kernel; False:
    #: the cells' own per-step loop, the reference (also used while tracing or exporting).
    fused: bool = True

    def __init__(self, layers: list[RecurrentCell]) -> None:
        super().__init__()
        if not layers:
            raise InputError("a deep RNN needs at least one layer")
        self.layers = nn.ModuleList(layers)
        self.cell = layers[0].name
        self.input_size = layers[0].input_size
        self.hidden_size = layers[-1].hidden_size
        self.num_states = layers[0].num_states
        self.is_conv = layers[0].kernel_size is not None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        x: Tensor,
        h0: States | None = None,
        mask: Tensor | None = None,
        return_all_layers: bool = False,
    ) -> tuple[Tensor | list[Tensor], States]:
        """Run the stack over a sequence.

        x: (B, T, I) (conv: (B, T, C, h, w)); h0: (L, B, H) (conv: (L, B, H, h, w)), or a tuple
        (h0, c0) for LSTM-type cells; mask: (B, T) bool, False marks a step that leaves every
        layer's state unchanged.

        Returns the top layer's outputs (B, T, H) — or, with ``return_all_layers``, a list of every
        layer's outputs, bottom first — and the final states in the form of ``h0``.

        Under autocast (AMP) the stack runs in its parameters' dtype with autocast off, the inputs cast
        to it: the fused layers' in-place loops and hand-written backward are written for one dtype,
        and a recurrence in bf16 would round its state at every step; the layers after it (the head,
        the loss) still run under autocast.
        """
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = next(self.parameters()).dtype
            with torch.autocast(device_type, enabled=False):
                return self.forward(x.to(dtype), _cast_states(h0, dtype), mask, return_all_layers)
        self._check_input(x, mask)
        initial = self._split_h0(h0, x)
        finals: list[State] = []
        per_layer: list[Tensor] = []
        fused = self._fused_layers() if self.fused and not _tracing() else None
        if fused is fused_stack:
            per_layer, finals = fused_stack(list(self.layers), x, initial, mask)
        elif fused is not None:
            states0 = [None if s is None else s[0] for s in initial]
            if fused is star_stack_inference:  # nothing to record
                per_layer, last = fused(list(self.layers), x, states0, mask, return_all_layers)
            else:
                per_layer, last = fused(list(self.layers), x, states0, mask)
            finals = [(h,) for h in last]
        else:
            out = x
            for layer, state in zip(self.layers, initial):
                out, final = layer.run(out, state, mask)
                finals.append(final)
                per_layer.append(out)
        out = per_layer[-1]
        stacked = tuple(torch.stack([f[i] for f in finals]) for i in range(self.num_states))
        states: States = stacked[0] if self.num_states == 1 else (stacked[0], stacked[1])
        return (per_layer if return_all_layers else out), states

    def _fused_layers(self) -> Callable[..., tuple[list[Tensor], list[Tensor]]] | None:
        """The fused stack function for this stack's cells (None: the cells' own loop)."""
        if self.cell == "star":
            return star_stack_train if torch.is_grad_enabled() else star_stack_inference
        if self.cell == "conv_star" and self.layers[0].kernel_size % 2:
            return star_stack_train
        return fused_stack if self.cell in FUSED_LAYERS else None

    # ---- validation --------------------------------------------------------------------------
    def _check_input(self, x: Tensor, mask: Tensor | None) -> None:
        expected = "(B, T, C, h, w)" if self.is_conv else "(B, T, I)"
        if x.dim() != (5 if self.is_conv else 3):
            raise InputError(f"{self.cell}: x must be {expected}, got shape {tuple(x.shape)}")
        features = x.shape[2]
        if features != self.input_size:
            what = "channels" if self.is_conv else "input features"
            raise InputError(
                f"{self.cell}: expected {self.input_size} {what} per step, got {features} "
                f"(x shape {tuple(x.shape)})"
            )
        if x.shape[1] == 0:
            raise InputError(f"{self.cell}: x has no time steps (shape {tuple(x.shape)})")
        if mask is not None:
            if mask.dtype != torch.bool:
                raise InputError(f"mask must be a bool tensor, got dtype {mask.dtype}")
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise InputError(f"mask must be (B, T) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")

    def _split_h0(self, h0: States | None, x: Tensor) -> list[State | None]:
        if h0 is None:
            return [None] * self.num_layers
        parts = (h0,) if isinstance(h0, Tensor) else tuple(h0)
        if len(parts) != self.num_states:
            form = "a tensor (L, B, H)" if self.num_states == 1 else "a tuple (h0, c0)"
            raise InputError(f"{self.cell}: h0 must be {form}, got {len(parts)} tensor(s)")
        state_shape = (x.shape[0], self.hidden_size, *x.shape[3:])
        for part in parts:
            if tuple(part.shape) != (self.num_layers, *state_shape):
                raise InputError(
                    f"{self.cell}: initial state must be {(self.num_layers, *state_shape)} "
                    f"(L, B, H{', h, w' if self.is_conv else ''}), got {tuple(part.shape)}"
                )
        return [tuple(p[layer] for p in parts) for layer in range(self.num_layers)]

    def extra_repr(self) -> str:
        return f"cell={self.cell}, num_layers={self.num_layers}"


def _cast_states(h0: States | None, dtype: torch.dtype) -> States | None:
    """Initial states (a tensor or an (h, c) tuple) in ``dtype``."""
    if h0 is None or isinstance(h0, Tensor):
        return None if h0 is None else h0.to(dtype)
    h, c = h0
    return h.to(dtype), c.to(dtype)


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, **options: Any) -> DeepRNN:
    """Build a deep stack of ``num_layers`` distinct cells of type ``cell``.

    Cells: star, vrnn, lstm, lstm_wf, gru, rhn; conv_star, conv_lstm, conv_lstm_wf (sizes are
    channels). Options: ``weight_init`` (orthogonal | xavier_uniform | uniform), ``bias_init`` of the
    memory gates (chrono | zero | constant; chrono by default when ``t_max`` is given), ``t_max``
    (chrono's T_max, the sequence length), ``gate_bias`` (constant's value for the gate weighing the
    new input, e.g. STAR's b_k; gates weighing the old state get its negative), ``kernel_size`` (conv
    cells, default 3), ``recurrence_depth`` (rhn, default 1).
    """
    if cell not in CELLS:
        raise InputError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise InputError(f"num_layers must be a positive integer, got {num_layers!r}")
    allowed = {"weight_init", "bias_init", "t_max", "gate_bias"}
    if cell in CONV_CELLS:
        allowed.add("kernel_size")
    if cell == "rhn":
        allowed.add("recurrence_depth")
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"{cell}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    cls = CELLS[cell]
    layers = [
        cls(input_size if layer == 0 else hidden_size, hidden_size, **options) for layer in range(num_layers)
    ]
    return DeepRNN(layers)
