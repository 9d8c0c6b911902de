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

import geopandas as gpd
import numpy as np

from cropstar.data.clouds import Condition
from cropstar.data.cube import Cube
from cropstar.data.fields import Fields, Repair, repair_polygons
from cropstar.data.harmonise import Grid
from cropstar.data.patches import extract_patches
from cropstar.infer.fields import (
    check_aggregate,
    checked_fields,
    field_table,
    locate_fields,
    season_interval,
)
from cropstar.infer.predict import predict_patches
from cropstar.model.artifact import LoadedModel

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
    return ProbabilityMap(prepared.grid, probabilities, n_valid, season_interval(prepared))


def classify_fields_on_map(
    model: LoadedModel, pixels: ProbabilityMap, fields: Fields | gpd.GeoDataFrame, *, aggregate: str = "mean",
    repair: Repair = repair_polygons,
) -> gpd.GeoDataFrame:
    """The crop of every field from precomputed pixel probabilities: the same table, statuses and
    messages as :func:`cropstar.infer.fields.classify_fields` (see there) for the cube and season the
    map was computed from."""
    check_aggregate(aggregate)
    frame, usable, messages = checked_fields(fields, repair)
    located = locate_fields(frame, usable, pixels.grid, pixels.grid.crs)
    index = located.rows * pixels.grid.width + located.cols
    return field_table(model, frame, messages, located, pixels.probabilities[index], pixels.n_valid[index],
                       pixels.season, aggregate)  # fmt: skip
