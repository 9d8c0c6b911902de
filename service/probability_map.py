"""Field predictions over precomputed pixel probabilities: for a source small enough to hold in memory,
the class probabilities of every pixel of the prepared cube are computed once per (model, season), and
a request only rasterises its fields and aggregates (milliseconds instead of a model run per request).

:func:`classify_fields_on_map` returns exactly what :func:`cropstar.infer.fields.classify_fields`
returns for the same model, cube, season and fields (tests/service/test_service_probability_map.py
holds them equal); it reuses that module's field checks, aggregation and output table, and differs only
in where the pixel probabilities come from. It belongs beside ``classify_fields`` in the library; it
lives here until the library grows a precomputed-probabilities path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from cropstar.data.clouds import Condition
from cropstar.data.cube import Cube
from cropstar.data.fields import Fields, field_pixels, fields_outside
from cropstar.data.harmonise import Grid
from cropstar.data.patches import extract_patches
from cropstar.errors import InputError
from cropstar.infer.fields import (
    AGGREGATES,
    PROBABILITY_DIGITS,
    RESULT_COLUMNS,
    _aggregate,
    _checked,
    _joined,
    _season,
)
from cropstar.infer.predict import predict_patches
from cropstar.train.artifact import LoadedModel

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ProbabilityMap:
    """The class probabilities of every pixel of a prepared cube, as the model reads it (its last
    step for per-time-step models): ``probabilities`` (H·W, K) float32 in row-major pixel order, NaN
    where a pixel has no valid observation; ``n_valid`` (H·W,) its valid time steps; the cube's
    ``grid`` and ``season`` (ISO interval of the model's time grid in the cube's season)."""

    grid: Grid
    probabilities: np.ndarray
    n_valid: np.ndarray
    season: str

    @property
    def nbytes(self) -> int:
        return int(self.probabilities.nbytes + self.n_valid.nbytes)


def probability_map(
    model: LoadedModel, prepared: Cube, *, batch_size: int = 4096, progress: Progress | None = None
) -> ProbabilityMap:
    """The :class:`ProbabilityMap` of ``prepared`` (a cube from :func:`cropstar.infer.predict.prepare_cube`,
    in memory or lazy: it is read once), patches cut ``batch_size`` pixels at a time."""
    data = np.asarray(prepared.data.values)
    clear = np.asarray(prepared.conditions.values) == Condition.CLEAR  # (T, H, W): the model's mask
    height, width = data.shape[-2:]
    k = model.card.architecture.num_classes
    probabilities = np.full((height * width, k), np.nan, np.float32)
    n_valid = clear.sum(axis=0).reshape(-1).astype(np.int64)
    rows, cols = np.divmod(np.arange(height * width), width)
    for start in range(0, height * width, batch_size):
        part = slice(start, start + batch_size)
        r, c = rows[part], cols[part]
        mask = clear[:, r, c].T
        seen = mask.any(axis=1)
        if seen.any():
            patches = extract_patches(data, r[seen], c[seen], model.card.patch_size)
            predicted = predict_patches(model, patches, mask[seen], batch_size=batch_size)
            probabilities[np.flatnonzero(seen) + start] = predicted[:, -1] if predicted.ndim == 3 else predicted
        if progress is not None:
            progress("classifying pixels", min(start + batch_size, height * width), height * width)
    return ProbabilityMap(prepared.grid, probabilities, n_valid, _season(prepared))


def classify_fields_on_map(
    model: LoadedModel, pixels: ProbabilityMap, fields: Fields | gpd.GeoDataFrame, *, aggregate: str = "mean"
) -> gpd.GeoDataFrame:
    """The crop of every field from precomputed pixel probabilities: the same table, statuses and
    messages as :func:`cropstar.infer.fields.classify_fields` (see there) for the cube and season the
    map was computed from."""
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    frame, usable, messages = _checked(fields)
    n = len(frame)
    status = np.where(usable, "ok", "invalid_geometry").astype(object)
    grid = pixels.grid
    candidates = np.flatnonzero(usable)
    outside = fields_outside(frame.iloc[candidates], grid.bounds, grid.crs)
    status[candidates[outside]] = "outside_cube"
    inside = candidates[~outside]
    rows, cols, which = field_pixels(frame.iloc[inside], grid.transform, grid.shape, grid.crs)
    owner = inside[which]
    index = rows * grid.width + cols
    probabilities, n_valid = pixels.probabilities[index], pixels.n_valid[index]

    used = n_valid > 0
    n_total = np.bincount(owner, minlength=n)
    n_pixels = np.bincount(owner[used], minlength=n)
    status[(status == "ok") & (n_total == 0)] = "no_pixels"
    status[(status == "ok") & (n_pixels == 0)] = "no_valid_observations"
    scores, chosen = _aggregate(probabilities[used], owner[used], n, aggregate)
    mean_obs = np.bincount(owner[used], weights=n_valid[used], minlength=n) / np.maximum(n_pixels, 1)

    reasons = {
        "outside_cube": "the field lies outside the cube",
        "no_pixels": f"no pixel centre lies inside the field ({grid.resolution[0]:g} m pixels): too small "
        "or too thin",
        "no_valid_observations": f"none of the field's pixels has a valid observation in {pixels.season}",
    }
    card = model.card
    label = f"{card.name}:{card.version}" if card.version else str(model.path)
    results = []
    for i in range(n):
        row: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS)
        row.update(
            n_pixels=int(n_pixels[i]), model=label, season=pixels.season, status=status[i],
            message=reasons.get(status[i], messages[i]),
        )
        if status[i] == "ok":
            entry = card.class_table[int(chosen[i])]
            shares = {e.code: round(float(scores[i, e.id]), PROBABILITY_DIGITS) for e in card.class_table}
            row.update(
                crop=entry.name, crop_code=entry.code, crop_id=entry.id, confidence=shares[entry.code],
                probabilities=shares, n_valid_obs=round(float(mean_obs[i]), 2),
            )
        results.append(row)
    return _joined(frame, pd.DataFrame(results, columns=list(RESULT_COLUMNS)))
