"""Posted time series classified the way a cube is (``POST /v1/series:classify``): the samples become
a small cube (one P×P tile each), which :func:`cropstar.infer.predict.prepare_cube` composites onto the
model's time grid and gap-fills exactly as it does a scene, so clients with their own extraction get
the predictions a scene would give. A pixel series (T, C) is read as a uniform P×P patch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cropstar.data.clouds import Condition
from cropstar.data.cube import Cube
from cropstar.data.features import canonical_feature
from cropstar.data.patches import extract_patches
from cropstar.errors import InputError, ModelMismatchError
from cropstar.infer.fields import PROBABILITY_DIGITS
from cropstar.infer.predict import predict_patches, prepare_cube
from cropstar.model.artifact import LoadedModel

#: The years dates may lie in (pandas timestamps reach 1677–2262; the model's grid moves by whole years).
YEARS = (1900, 2200)


@dataclass(frozen=True)
class SeriesSample:
    """One posted sample: ``values`` (T, C) or (T, C, P, P) reflectance (NaN: missing), an optional
    (T,) validity ``mask`` and the client's ``id``."""

    values: np.ndarray
    mask: np.ndarray | None = None
    id: Any = None


def series_cube(
    loaded: LoadedModel, bands: Sequence[str], dates: Sequence[Any], samples: Sequence[SeriesSample]
) -> Cube:
    """The samples side by side as a cube (T, C, P, N·P) with validity = the mask and every band finite.
    InputError names a sample of the wrong shape, a repeated band or an unreadable date;
    ModelMismatchError a patch size the model does not read."""
    p = loaded.card.patch_size
    names = [canonical_feature(b) for b in bands]
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:
        raise InputError(f"bands are repeated: {', '.join(repeated)}")
    try:
        times = pd.DatetimeIndex([pd.Timestamp(d) for d in dates])
    except (ValueError, TypeError) as error:
        raise InputError(f"dates must be ISO dates or times: {error}") from None
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    if len(times) and not (YEARS[0] <= times.year.min() and times.year.max() <= YEARS[1]):
        raise InputError(f"dates must lie in the years {YEARS[0]}–{YEARS[1]}")
    t, c = len(times), len(names)
    if t == 0 or not samples:
        raise InputError("series:classify needs at least one date and one sample")
    data = np.empty((t, c, p, len(samples) * p), np.float32)
    valid = np.empty((t, p, len(samples) * p), bool)
    for i, sample in enumerate(samples):
        values = sample.values
        if values.shape == (t, c):
            values = np.broadcast_to(values[:, :, None, None], (t, c, p, p))
        elif values.ndim == 4 and values.shape[:2] == (t, c) and values.shape[2] == values.shape[3]:
            if values.shape[2] != p:
                raise ModelMismatchError(
                    f"series[{i}]: patches of {values.shape[2]}×{values.shape[3]} pixels; model "
                    f"{loaded.card.name!r} reads {p}×{p} (or send pixel series [T][C])"
                )
        else:
            raise InputError(
                f"series[{i}].values has shape {list(values.shape)}; expected [{t}][{c}] (dates × bands) "
                f"or [{t}][{c}][{p}][{p}]"
            )
        tile = slice(i * p, (i + 1) * p)
        data[:, :, :, tile] = values
        observed = np.isfinite(values).all(axis=1)
        if sample.mask is not None:
            if sample.mask.shape != (t,):
                raise InputError(f"series[{i}].mask has {sample.mask.size} values for {t} dates")
            observed = observed & sample.mask[:, None, None]
        valid[:, :, tile] = observed
    coords = {"time": times, "band": names, "y": np.arange(p), "x": np.arange(len(samples) * p)}
    return Cube(
        xr.DataArray(data, dims=("time", "band", "y", "x"), coords=coords, name="reflectance"),
        xr.DataArray(valid, dims=("time", "y", "x"), coords={k: coords[k] for k in ("time", "y", "x")}),
        {"source": "series:classify"},
    )


def classify_series(
    loaded: LoadedModel, bands: Sequence[str], dates: Sequence[Any], samples: Sequence[SeriesSample]
) -> dict[str, Any]:
    """The crop of every sample: ``results`` in input order with ``id``, ``status`` ("ok" or
    "no_valid_observations"), ``message``, ``crop`` / ``crop_code`` / ``crop_id``, ``confidence``,
    ``probabilities`` {code: p}, ``n_valid_obs`` (valid steps of the model's time grid); and the
    model's ``time_grid`` dates in the samples' season. Per-time-step models are read at their last step."""
    card = loaded.card
    prepared = prepare_cube(card, series_cube(loaded, bands, dates, samples)).compute()
    p, n = card.patch_size, len(samples)
    rows, cols = np.full(n, p // 2), np.arange(n) * p + p // 2
    clear = np.asarray(prepared.conditions.values)[:, rows, cols].T == Condition.CLEAR  # (N, T)
    seen = clear.any(axis=1)
    probabilities = np.full((n, card.architecture.num_classes), np.nan, np.float32)
    if seen.any():
        patches = extract_patches(np.asarray(prepared.data.values), rows[seen], cols[seen], p)
        predicted = predict_patches(loaded, patches, clear[seen])
        probabilities[seen] = predicted[:, -1] if predicted.ndim == 3 else predicted
    steps = [str(t.date()) for t in prepared.times]
    results = []
    for i, sample in enumerate(samples):
        row: dict[str, Any] = {"id": sample.id, "n_valid_obs": int(clear[i].sum())}
        if not seen[i]:
            row.update(status="no_valid_observations", message=(
                f"no valid observation on the model's time grid {steps[0]}/{steps[-1]}"
            ), crop=None, crop_code=None, crop_id=None, confidence=None, probabilities=None)  # fmt: skip
        else:
            chosen = card.class_table[int(np.argmax(probabilities[i]))]
            shares = {e.code: round(float(probabilities[i, e.id]), PROBABILITY_DIGITS) for e in card.class_table}
            row.update(status="ok", message=None, crop=chosen.name, crop_code=chosen.code, crop_id=chosen.id,
                       confidence=shares[chosen.code], probabilities=shares)
        results.append(row)
    return {"time_grid": steps, "results": results}
