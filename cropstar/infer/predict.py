"""Class probabilities of pixels: a cube prepared the way the model was trained (its bands, its time
grid, gaps filled) and patch sequences run through the model in large batches under inference mode."""

from __future__ import annotations

import numpy as np
import torch

from cropstar.data.cube import Cube
from cropstar.data.regularise import gap_fill
from cropstar.errors import ModelMismatchError
from cropstar.train.artifact import LoadedModel, ModelCard, check_cube, on_model_grid


def prepare_cube(card: ModelCard, cube: Cube) -> Cube:
    """``cube`` as the model reads it: the model's bands in its order, composited onto the model's
    time grid in the cube's season (:func:`on_model_grid`), gaps filled linearly. Lazy on a dask cube.
    ModelMismatchError names missing bands or a time grid that does not fit."""
    missing = [band for band in card.bands if band not in cube.bands]
    if missing:
        raise ModelMismatchError(
            f"model {card.name!r} needs bands {', '.join(card.bands)}; the cube lacks {', '.join(missing)}"
        )
    if list(cube.bands) != list(card.bands):
        cube = cube.isel(band=[cube.bands.index(band) for band in card.bands])
    prepared = gap_fill(on_model_grid(card, cube))
    check_cube(card, prepared)
    return prepared


@torch.inference_mode()
def predict_patches(
    loaded: LoadedModel, patches: np.ndarray, mask: np.ndarray, *, batch_size: int = 8192
) -> np.ndarray:
    """Class probabilities of patch sequences: patches (N, T, C, P, P) reflectance (NaN where nothing
    could be filled: read as the band mean), mask (N, T) bool → (N, K) or, for per-time-step models,
    (N, T, K) float32. Normalised with the model's statistics; softmax of the logits."""
    card = loaded.card
    n, t = patches.shape[:2]
    if patches.shape[2:] != (len(card.bands), card.patch_size, card.patch_size):
        raise ModelMismatchError(
            f"patches of shape {patches.shape[2:]} (C, P, P); model {card.name!r} expects "
            f"({len(card.bands)}, {card.patch_size}, {card.patch_size})"
        )
    device = next(loaded.model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        x = np.nan_to_num(card.normalisation.apply(patches[part]).reshape(-1, t, patches[0, 0].size), nan=0.0)
        logits = loaded.model(
            torch.from_numpy(x).to(device), torch.from_numpy(np.asarray(mask[part])).to(device)
        )
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    if not out:
        shape = (
            (0, card.architecture.num_classes)
            if card.task == "per_sequence"
            else (0, t, card.architecture.num_classes)
        )
        return np.empty(shape, np.float32)
    return np.concatenate(out)
