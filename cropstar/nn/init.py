"""Initialisers: orthogonal weights (paper §5) and the memory gates' biases: chrono (Tallec & Ollivier
2018), zero, or a constant."""

from __future__ import annotations

import math
from typing import Literal

import torch

WeightInit = Literal["orthogonal", "xavier_uniform", "uniform"]
BiasInit = Literal["chrono", "zero", "constant"]

WEIGHT_INITS: tuple[str, ...] = ("orthogonal", "xavier_uniform", "uniform")
BIAS_INITS: tuple[str, ...] = ("chrono", "zero", "constant")


def describe_bias_init(bias_init: str, t_max: int | None = None, gate_bias: float | None = None) -> str:
    """``chrono (T_max 26)``, ``zero gate bias``, ``gate bias -1``: for titles, tables and model cards."""
    if bias_init == "chrono":
        return f"chrono (T_max {t_max})"
    if bias_init == "constant":
        return f"gate bias {gate_bias:g}"
    return f"{bias_init} gate bias"


def gate_bias_problem(bias_init: str, gate_bias: float | None) -> str | None:
    """What is wrong when ``gate_bias`` and ``bias_init`` do not go together (None: they do): a
    constant needs its value, and no other initialisation takes one."""
    if (bias_init == "constant") == (gate_bias is not None):
        return None
    return (
        f"gate_bias goes with bias_init constant and only with it; got bias_init {bias_init!r} "
        f"and gate_bias {gate_bias!r}"
    )


def orthogonal(
    *batch: int,
    rows: int,
    cols: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random (semi-)orthogonal matrices of shape (*batch, rows, cols), Haar-distributed.

    Rows are orthonormal when rows <= cols, columns otherwise.
    """
    gaussian = torch.randn(*batch, max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    return orthogonalise(gaussian, rows, cols).to(dtype)


def orthogonalise(gaussian: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(…, max(rows, cols), min(rows, cols)) Gaussian → (…, rows, cols) Haar-orthogonal matrices:
    QR with the signs of R's diagonal folded into Q, transposed for wide shapes."""
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q if rows >= cols else q.transpose(-2, -1)


def chrono_bias(
    size: int, t_max: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """log U(1, T_max − 1): the chrono bias of a gate weighting the OLD state (sign as used)."""
    if t_max < 2:
        raise ValueError(f"chrono initialisation needs t_max >= 2, got {t_max}")
    u = torch.rand(size, generator=generator, dtype=torch.float64) * (t_max - 2) + 1.0
    return torch.log(u).to(dtype)


@torch.no_grad()
def init_weight_(weight: torch.Tensor, scheme: str, fan_in_dims: int = 1) -> None:
    """Initialise one weight in place.

    ``weight`` is (*batch, out, in) for dense matrices or (out, in, kh, kw) for kernels; for kernels
    (``fan_in_dims=3``) the orthogonal scheme acts on the flattened (out, in·kh·kw) matrix.
    """
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init {scheme!r}; choose one of {', '.join(WEIGHT_INITS)}")
    if fan_in_dims == 3:
        matrix_shape = (weight.shape[0], math.prod(weight.shape[1:]))
        batch: tuple[int, ...] = ()
    else:
        matrix_shape = (weight.shape[-2], weight.shape[-1])
        batch = tuple(weight.shape[:-2])
    rows, cols = matrix_shape
    if scheme == "orthogonal":
        values = orthogonal(*batch, rows=rows, cols=cols, dtype=weight.dtype)
    elif scheme == "xavier_uniform":
        bound = math.sqrt(6.0 / (rows + cols))
        values = torch.empty(*batch, rows, cols, dtype=weight.dtype).uniform_(-bound, bound)
    else:  # "uniform": PyTorch's RNN default, U(-1/sqrt(H), 1/sqrt(H)) with H the output size
        bound = 1.0 / math.sqrt(rows)
        values = torch.empty(*batch, rows, cols, dtype=weight.dtype).uniform_(-bound, bound)
    weight.copy_(values.reshape(weight.shape))
