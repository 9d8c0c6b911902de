"""Export a trained classifier to run without cropstar: an ONNX model or a torch.export program
(``.pt2``), each carrying the model card, so that its outputs can be mapped to classes.

The exported graph is the cells' reference recurrence (:meth:`cropstar.nn.RecurrentCell.run`, paper
eq. 1–2, one step after the other, masked steps keeping the state), not the fast in-place inference
layer of ``cropstar/nn/fast_star.py``. Tracing unrolls its loop over time: the graph has the model's
fixed number of time steps (the card's time grid); the batch axis stays dynamic.

Inputs: ``x`` (batch, T, C·P·P) float32, the normalised patch sequences that
:func:`cropstar.infer.predict.model_input` makes; ``mask`` (batch, T) bool, False on a step without a
valid observation. Output: ``logits`` (batch, K), or (batch, T, K) for per-time-step models.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import torch

from cropstar.errors import InputError
from cropstar.model.artifact import LoadedModel, ModelCard, parameter_count
from cropstar.nn import DeepRNN, SequenceClassifier

#: Export formats and the file suffix each is written with.
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
#: ONNX opset of :func:`export_onnx`: 18 runs on onnxruntime ≥ 1.14 and most other runtimes.
DEFAULT_OPSET = 18
INPUT_NAMES = ("x", "mask")
OUTPUT_NAME = "logits"
#: Key of the full model card (``model.json``) in the ONNX metadata and in the ``.pt2`` extra files.
CARD_KEY = "model.json"
#: Sequences in the example batch that is traced (torch.export specialises batches of 0 and 1).
_EXAMPLE_BATCH = 2


def reference_model(model: SequenceClassifier) -> SequenceClassifier:
    """A copy of ``model`` on the CPU, in eval mode, that runs the cells' per-step reference loop when
    called under ``torch.enable_grad()`` (with gradients off, a STAR stack takes its fast path)."""
    reference = copy.deepcopy(model).cpu().eval()
    for module in reference.modules():
        if isinstance(module, DeepRNN) and hasattr(module, "fused"):
            module.fused = False
    return reference


def export_metadata(card: ModelCard, model: torch.nn.Module | None = None) -> dict[str, str]:
    """String metadata of an exported model: name, version, task, classes (JSON records id, code,
    name, in logit order), bands, patch size, time steps and dates, normalisation (per-band mean and
    std), how to build the inputs, and the whole card under ``model.json`` (absolute paths in its
    training record cut to their last part)."""
    document = card.to_dict(total_parameters=None if model is None else parameter_count(model))
    training = document.get("training") or {}
    for key in ("dataset", "init_from"):
        value = training.get(key)
        if isinstance(value, str) and PurePath(value).is_absolute():
            training[key] = PurePath(value).name
    steps, k = card.time_grid.steps, len(card.class_table)
    features = card.architecture.input_size
    per_step = card.task == "per_timestep"
    return {
        "name": card.name,
        "version": "" if card.version is None else str(card.version),
        "task": card.task,
        "classes": json.dumps(card.class_table.to_records(), ensure_ascii=False),
        "bands": json.dumps(list(card.bands)),
        "patch_size": str(card.patch_size),
        "time_steps": str(steps),
        "dates": json.dumps(list(card.time_grid.dates)),
        "period": card.time_grid.period or "",
        "normalisation": json.dumps(card.normalisation.to_dict()),
        "input": (
            f"x: (batch, {steps}, {features}) float32: per step, {card.patch_size}×{card.patch_size}-pixel "
            f"patches of the bands {','.join(card.bands)} (reflectance 0–1), z-scored per band with "
            "'normalisation' (a std of 0 counts as 1), NaN set to 0, flattened in C-order of (band, y, x); "
            f"mask: (batch, {steps}) bool, False on a step without a valid observation"
        ),
        "output": (f"logits: (batch, {steps}, {k})" if per_step else f"logits: (batch, {k})")
        + " float32, in the order of 'classes' (softmax gives probabilities)",
        CARD_KEY: json.dumps(document, ensure_ascii=False),
    }


def export_onnx(
    loaded: LoadedModel, path: Path | str, *, opset: int = DEFAULT_OPSET, steps: int | None = None
) -> Path:
    """Write ``loaded``'s classifier as an ONNX model to ``path`` (atomically) and return the path.

    Uses torch.onnx's torch.export-based exporter (needs the ``onnx`` and ``onnxscript`` packages:
    ``pip install 'cropstar[export]'``) on the reference path (see the module docstring). Inputs
    ``x`` (batch, T, I) float32 and ``mask`` (batch, T) bool, output ``logits`` (batch, K) or
    (batch, T, K); the batch axis is dynamic, T is fixed: ``steps``, default the card's time grid.
    The card is in the model's ``metadata_props`` (:func:`export_metadata`; onnxruntime:
    ``session.get_modelmeta().custom_metadata_map``).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise InputError(
            f"ONNX export needs the packages onnx and onnxscript ({error}): pip install 'cropstar[export]'"
        ) from None
    path = _target(path)
    model, args, dynamic_shapes = _traceable(loaded, steps)
    with _quiet_exporter(), torch.enable_grad():
        program = torch.onnx.export(
            model, args, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's debugging notes: stack traces with this machine's paths
        del node.metadata_props[:]
    proto.doc_string = f"{loaded.card.name}: {loaded.card.description}".rstrip(": ")
    if loaded.card.version is not None and str(loaded.card.version).isdigit():
        proto.model_version = int(loaded.card.version)
    for key, value in export_metadata(loaded.card, model).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    return _write_atomic(path, lambda tmp: onnx.save_model(proto, str(tmp)))


def export_pt2(loaded: LoadedModel, path: Path | str, *, steps: int | None = None) -> Path:
    """Write ``loaded``'s classifier as a torch.export program to ``path`` (atomically; ``.pt2``) and
    return the path: ``torch.export.load(path).module()(x, mask)`` runs it with torch alone. Inputs,
    output and axes as in :func:`export_onnx`; the card is the extra file ``model.json``."""
    path = _target(path)
    model, args, dynamic_shapes = _traceable(loaded, steps)
    with _quiet_exporter(), torch.enable_grad():
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
    extra = {CARD_KEY: export_metadata(loaded.card, model)[CARD_KEY]}
    return _write_atomic(path, lambda tmp: torch.export.save(program, tmp, extra_files=extra))


def export_model(
    loaded: LoadedModel, path: Path | str, format: str = "onnx", *, opset: int = DEFAULT_OPSET
) -> Path:
    """Export ``loaded`` to ``path`` in ``format`` (``onnx``: :func:`export_onnx` with ``opset``;
    ``torch-export``: :func:`export_pt2`)."""
    if format == "onnx":
        return export_onnx(loaded, path, opset=opset)
    if format == "torch-export":
        return export_pt2(loaded, path)
    raise InputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# tracing and writing
# ---------------------------------------------------------------------------------------------
def _traceable(
    loaded: LoadedModel, steps: int | None
) -> tuple[SequenceClassifier, tuple[torch.Tensor, torch.Tensor], dict[str, dict[int, Any]]]:
    """The reference copy of the model, example inputs (x, mask) and their dynamic (batch) axes."""
    steps = loaded.card.time_grid.steps if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise InputError(
            f"model {loaded.card.name!r}: the number of time steps to export must be a positive integer, "
            f"got {steps!r} (a card without a time grid needs steps=)"
        )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(_EXAMPLE_BATCH, steps, loaded.card.architecture.input_size, generator=generator)
    mask = torch.rand(_EXAMPLE_BATCH, steps, generator=generator) > 0.3
    batch = torch.export.Dim("batch")
    return reference_model(loaded.model), (x, mask), {"x": {0: batch}, "mask": {0: batch}}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters' chatter silenced: torch.onnx's log lines about optional torchvision operators
    and torch.export's deprecation and renaming notes."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings(
                "ignore", message=r".*axis name.*will not be used.*", category=UserWarning
            )
            yield
    finally:
        logger.setLevel(level)


def _target(path: Path | str) -> Path:
    """``path`` checked before any work: not a folder, its parent a folder that exists or can be made."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write the exported model to {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot write the exported model to {path}: {error.strerror or error}") from None
    return path


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed onto it: readers see the old
    file or the whole new one."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as error:
        raise InputError(f"cannot write the exported model to {path}: {error.strerror or error}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; exported models are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
