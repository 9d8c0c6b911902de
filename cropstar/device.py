"""Which torch device a run uses: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``, checked with one error that names the option at fault, and described for provenance."""

from __future__ import annotations

import torch

from cropstar.errors import InputError

#: What a device option accepts, for help texts and messages.
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device(name: str, option: str = "device") -> str:
    """``name`` resolved without side effects: ``auto`` → ``cuda`` where CUDA is available, else ``cpu``.

    InputError naming ``option`` (e.g. ``--device``) for an unknown name, and for CUDA asked for where
    torch sees none (a CPU build of torch, or no GPU visible), or a ``cuda:N`` beyond the GPUs seen.
    """
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"{option} must be {DEVICE_CHOICES}, got {name!r}")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        build = "a CPU build of torch" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU seen"
        raise InputError(
            f"{option} {name} asked for, but CUDA is not available (torch {torch.__version__}: {build}); "
            f"use {option} cpu or auto"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def resolve_device(name: str, option: str = "device", local_rank: int = 0) -> torch.device:
    """The torch device ``name`` means (:func:`check_device`); plain ``cuda`` is GPU ``local_rank`` (the
    process's GPU under torchrun), made the current CUDA device."""
    checked = check_device(name, option)
    if checked == "cpu":
        return torch.device("cpu")
    device = torch.device(checked if ":" in checked else f"cuda:{local_rank}")
    torch.cuda.set_device(device)
    return device


def describe_device(device: torch.device | str) -> str:
    """``cpu``, or e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``: the device and the card's name."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
