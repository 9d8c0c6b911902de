"""Class probabilities of pixels: a cube prepared the way the model was trained (its bands, its time
grid, gaps filled) and patch sequences run through the model in large batches under inference mode."""

from __future__ import annotations

import numpy as np
import torch

from cropstar.data.cube import Cube
from cropstar.data.features import missing_features, select_features
from cropstar.data.regularise import gap_fill
from cropstar.errors import BrokenModelError, ModelMismatchError
from cropstar.model.artifact import LoadedModel, ModelCard, check_cube, on_model_grid

#: Patch sequences per forward pass. On CPU a STAR stack runs fastest when a layer's per-step work
#: (its input terms and state, B × H float32 each) stays in the core's cache: 512 × 64 units is
#: 128 KB per tensor; 512 ran 1.2× faster than 2048 on 2 cores (benchmarks/raster_speed.py and
#: docs/benchmarks.md, "Raster inference"). On a GPU pass a larger ``batch_size``.
DEFAULT_BATCH_SIZE = 512


def prepare_cube(card: ModelCard, cube: Cube) -> Cube:
    """``cube`` as the model reads it: the model's features in its order (spectral indices computed
    from the cube's bands), composited onto the model's time grid in the cube's season
    (:func:`on_model_grid`), gaps filled linearly. Lazy on a dask cube. ModelMismatchError names
    missing features or a time grid that does not fit."""
    missing = missing_features(card.bands, cube.bands)
    if missing:
        raise ModelMismatchError(
            f"model {card.name!r} needs {', '.join(card.bands)}; the cube lacks {', '.join(missing)} "
            f"(it has {', '.join(cube.bands)})"
        )
    cube = select_features(cube, card.bands)
    prepared = gap_fill(on_model_grid(card, cube))
    check_cube(card, prepared)
    return prepared


def check_patches(card: ModelCard, patches: np.ndarray) -> None:
    """ModelMismatchError unless ``patches`` (N, T, C, P, P) have the model's bands and patch size."""
    if patches.shape[2:] != (len(card.bands), card.patch_size, card.patch_size):
        raise ModelMismatchError(
            f"patches of shape {patches.shape[2:]} (C, P, P); model {card.name!r} expects "
            f"({len(card.bands)}, {card.patch_size}, {card.patch_size})"
        )


def model_input(card: ModelCard, patches: np.ndarray) -> np.ndarray:
    """Patches (N, T, C, P, P) reflectance → the model's input (N, T, C·P·P) float32: normalised with
    the model's statistics, NaN (nothing could be filled) → 0, the band mean."""
    n, t = patches.shape[:2]
    return np.nan_to_num(card.normalisation.apply(patches).reshape(n, t, -1), nan=0.0)


@torch.inference_mode()
def class_probabilities(loaded: LoadedModel, logits: torch.Tensor) -> np.ndarray:
    """The float32 softmax of ``loaded``'s logits (classes on the last axis); BrokenModelError where
    any is not finite (a model whose weights overflow gives no answer rather than a wrong one)."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    finite = torch.isfinite(probabilities).flatten(1).all(dim=1)
    if not bool(finite.all()):
        raise BrokenModelError(
            f"model {loaded.card.name!r}{f' version {loaded.card.version}' if loaded.card.version else ''} gave "
            f"non-finite class probabilities for "
            f"{int((~finite).sum())} of {len(finite)} inputs: its weights overflow or are damaged; retrain it"
        )
    return probabilities.cpu().numpy()


@torch.inference_mode()
def predict_inputs(loaded: LoadedModel, x: np.ndarray | torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """Class probabilities of model inputs ``x`` (N, T, I) (:func:`model_input`; an array, or a tensor
    already on the model's device), ``mask`` (N, T) bool, in one forward pass: (N, K), or (N, T, K) for
    per-time-step models (:func:`class_probabilities`). Under inference mode whatever thread calls it
    (grad mode is per thread): the model's inference path, no autograd records."""
    device = model_device(loaded)
    logits = loaded.model(torch.as_tensor(x).to(device), torch.from_numpy(np.asarray(mask)).to(device))
    return class_probabilities(loaded, logits)


def model_device(loaded: LoadedModel) -> torch.device:
    """The device the model's weights are on."""
    return next(loaded.model.parameters()).device


def predict_patches(
    loaded: LoadedModel, patches: np.ndarray, mask: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Class probabilities of patch sequences: patches (N, T, C, P, P) reflectance (NaN where nothing
    could be filled: read as the band mean), mask (N, T) bool → (N, K) or, for per-time-step models,
    (N, T, K) float32, ``batch_size`` sequences per forward pass. Normalised with the model's
    statistics; softmax of the logits."""
    card = loaded.card
    check_patches(card, patches)
    out = [
        predict_inputs(loaded, model_input(card, patches[start : start + batch_size]),
                       mask[start : start + batch_size])
        for start in range(0, len(patches), batch_size)
    ]  # fmt: skip
    if not out:
        k, t = card.architecture.num_classes, patches.shape[1]
        return np.empty((0, k) if card.task == "per_sequence" else (0, t, k), np.float32)
    return np.concatenate(out)
