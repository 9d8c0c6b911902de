"""A regular time grid for irregular, cloudy acquisitions (DESIGN.md, "Conventions": Clouds): composites
per period (the median of the valid observations), linear gap filling in time, and the count of
valid observations per pixel (``n_valid_obs``).

Dask-friendly: both steps run per spatial chunk with the whole time axis in one chunk
(``xarray.apply_ufunc(dask="parallelized")``); only the time coordinate is read eagerly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

from cropstar.data.clouds import CONDITION_PRIORITY, Condition
from cropstar.data.cube import Cube
from cropstar.errors import DataError, InputError

#: Names accepted for ``period`` besides pandas offsets ("10D", "MS", "2W" …).
PERIOD_ALIASES = {"monthly": "MS", "month": "MS", "m": "MS", "10-day": "10D", "10day": "10D"}
DEKAD = "dekad"


def time_grid(period: str, start: Any, end: Any) -> pd.DatetimeIndex:
    """Edges of the periods covering ``[start, end]`` (n periods → n + 1 edges, left-closed).

    ``period``: ``"10D"`` (ten-day periods from ``start``), ``"MS"`` / ``"monthly"`` (calendar months),
    ``"dekad"`` (calendar dekads: days 1–10, 11–20, 21–end), or any pandas offset alias. Anchored
    offsets start at the period containing ``start`` (a month's first day, a dekad's first day).
    """
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if end < start:
        raise InputError(f"time grid ends ({end.date()}) before it starts ({start.date()})")
    key = str(period).strip()
    if key.lower() == DEKAD:
        return _dekad_edges(start, end)
    key = PERIOD_ALIASES.get(key.lower(), key)
    try:
        offset = to_offset(key)
    except (ValueError, TypeError):
        raise InputError(
            f"unknown period {period!r}: use '10D', 'MS' (monthly), 'dekad' or a pandas offset"
        ) from None
    if isinstance(offset, Tick):
        first = start
    else:
        first = start.normalize()
        if not offset.is_on_offset(first):
            first = offset.rollback(first).normalize()
    labels = pd.date_range(first, end, freq=offset)
    if len(labels) == 0:
        labels = pd.DatetimeIndex([first])
    edges = labels.append(pd.DatetimeIndex([labels[-1] + offset]))
    return edges.as_unit("ns")


def _dekad_edges(start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    def dekad_start(t: pd.Timestamp) -> pd.Timestamp:
        return pd.Timestamp(t.year, t.month, 1 if t.day < 11 else 11 if t.day < 21 else 21)

    def following(t: pd.Timestamp) -> pd.Timestamp:
        return t.replace(day=t.day + 10) if t.day < 21 else (t + pd.offsets.MonthBegin(1)).normalize()

    edges = [dekad_start(start)]
    while edges[-1] <= end:
        edges.append(following(edges[-1]))
    return pd.DatetimeIndex(edges).as_unit("ns")


def regularise(cube: Cube, period: str = "10D", start: Any = None, end: Any = None) -> Cube:
    """Composite ``cube`` onto a fixed time grid: per period, the median of the valid observations
    (NaN and not valid where a period has none). The time coordinate is each period's start.

    ``start`` / ``end`` default to the first / last acquisition; acquisitions outside the grid are
    dropped. ``valid`` of the result: the period had at least one valid observation (every band).
    """
    times = cube.times
    if len(times) == 0:
        raise DataError("cannot regularise a cube without time steps")
    start = times.min().normalize() if start is None else pd.Timestamp(start)
    end = times.max() if end is None else pd.Timestamp(end)
    edges = time_grid(period, start, end)
    labels = edges[:-1]
    members = edges.searchsorted(times, side="right") - 1
    members[(times < edges[0]) | (times >= edges[-1])] = -1
    n = len(labels)

    data = cube.data.chunk({"time": -1})
    valid = cube.valid.chunk({"time": -1})
    composite = xr.apply_ufunc(
        _period_median,
        data,
        valid,
        input_core_dims=[["time"], ["time"]],
        output_core_dims=[["period"]],
        kwargs={"members": members, "n": n},
        dask="parallelized",
        output_dtypes=[np.float32],
        dask_gufunc_kwargs={"output_sizes": {"period": n}},
    )
    composite = (
        composite.rename(period="time").assign_coords(time=labels).transpose("time", "band", "y", "x")
    ).rename("reflectance")
    composite.attrs = dict(cube.data.attrs)
    composite = _keep_geo(composite, cube.data)
    valid_out = _keep_geo(composite.notnull().all("band").rename("valid"), cube.data)
    counts = np.bincount(members[members >= 0], minlength=n)
    attrs = dict(cube.attrs)
    attrs["regularisation"] = {
        "period": str(period),
        "start": labels[0].isoformat(),
        "end": edges[-1].isoformat(),
        "time_label": "period start",
        "composite": "median of valid observations",
        "acquisitions_per_period": [int(c) for c in counts],
        "acquisitions_dropped": int((members < 0).sum()),
    }
    condition = None
    if cube.condition is not None:
        condition = _period_conditions(cube.condition, members, n).assign_coords(time=labels)
        no_clear = xr.where(condition == Condition.CLEAR, np.uint8(Condition.NO_DATA), condition)
        condition = _keep_geo(
            xr.where(valid_out, np.uint8(Condition.CLEAR), no_clear).astype(np.uint8), cube.data
        )
        attrs["regularisation"]["condition"] = "clear if any acquisition is; else the most frequent reason"
    return Cube(composite.astype("float32"), valid_out, attrs, condition)


def _period_conditions(condition: xr.DataArray, members: np.ndarray, n: int) -> xr.DataArray:
    """(time, y, x) conditions → (period, y, x): CLEAR where any member acquisition is clear, else the
    most frequent condition of the members (ties: :data:`CONDITION_PRIORITY`), NO_DATA without any."""
    out = xr.apply_ufunc(
        _period_condition,
        condition.chunk({"time": -1}),
        input_core_dims=[["time"]],
        output_core_dims=[["period"]],
        kwargs={"members": members, "n": n},
        dask="parallelized",
        output_dtypes=[np.uint8],
        dask_gufunc_kwargs={"output_sizes": {"period": n}},
    )
    return out.rename(period="time").transpose("time", "y", "x").rename("condition")


def _period_condition(values: np.ndarray, members: np.ndarray, n: int) -> np.ndarray:
    out = np.full(values.shape[:-1] + (n,), np.uint8(Condition.NO_DATA), np.uint8)
    ranked = [Condition.CLEAR, *CONDITION_PRIORITY]  # a clear member always wins
    for i in range(n):
        period = values[..., members == i]
        if period.shape[-1] == 0:
            continue
        best_count = np.full(values.shape[:-1], -1)
        for code in ranked:
            count = (period == code).sum(axis=-1)
            if code == Condition.CLEAR:
                count = np.where(count > 0, period.shape[-1] + 1, 0)
            better = count > np.maximum(best_count, 0)
            out[..., i] = np.where(better, np.uint8(code), out[..., i])
            best_count = np.where(better, count, best_count)
    return out


def _period_median(values: np.ndarray, valid: np.ndarray, members: np.ndarray, n: int) -> np.ndarray:
    """values (..., T), valid (..., T) broadcastable → (..., n) median of the valid finite values of each
    period's members (NaN where none; the mean of the two middle values for an even count)."""
    masked = np.where(valid & np.isfinite(values), values, np.nan)
    out = np.full(masked.shape[:-1] + (n,), np.nan, np.float32)
    for i in range(n):
        take = np.flatnonzero(members == i)
        if len(take) == 1:  # the median of one value (a cube already on the grid)
            out[..., i] = masked[..., take[0]]
        elif len(take) == 2:  # of two (5-day revisits on a 10-day grid): their mean, or the one valid
            a, b = masked[..., take[0]], masked[..., take[1]]
            out[..., i] = np.where(np.isnan(a), b, np.where(np.isnan(b), a, (a.astype("float64") + b) / 2))
        elif len(take):
            out[..., i] = _nanmedian_last(masked[..., take])
    return out


def _nanmedian_last(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=-1)`` without its all-NaN warnings (raised from dask worker threads,
    where ``warnings.catch_warnings`` is not safe): sort (NaN last), average the middle of the finite."""
    ordered = np.sort(values, axis=-1)
    count = np.isfinite(ordered).sum(axis=-1)
    low = np.clip((count - 1) // 2, 0, None)[..., None]
    high = np.clip(count // 2, 0, values.shape[-1] - 1)[..., None]
    middle = (
        np.take_along_axis(ordered, low, -1)[..., 0].astype("float64")
        + np.take_along_axis(ordered, high, -1)[..., 0]
    ) / 2
    return np.where(count > 0, middle, np.nan)


def gap_fill(cube: Cube) -> Cube:
    """Fill invalid observations linearly in time between the nearest valid ones (edges: the nearest
    valid value, constant); pixels with no valid observation stay NaN. Valid observations are kept as
    they are and ``valid`` is unchanged (it still says which steps were observed)."""
    if not cube.times.is_monotonic_increasing:
        raise DataError("gap_fill needs the cube's time steps in increasing order")
    t = ((cube.times - cube.times[0]) / pd.Timedelta(days=1)).to_numpy(dtype="float64")
    data = cube.data.chunk({"time": -1})
    valid = cube.valid.chunk({"time": -1})
    filled = xr.apply_ufunc(
        fill_linear,
        data,
        valid,
        input_core_dims=[["time"], ["time"]],
        output_core_dims=[["time"]],
        kwargs={"t": t},
        dask="parallelized",
        output_dtypes=[np.float32],
    ).transpose("time", "band", "y", "x")
    filled = _keep_geo(filled.rename("reflectance"), cube.data)
    filled.attrs = dict(cube.data.attrs)
    attrs = dict(cube.attrs)
    attrs["gap_fill"] = "linear in time between valid observations; edges: nearest valid; none valid: NaN"
    return Cube(filled, cube.valid, attrs, cube.condition)


def fill_linear(values: np.ndarray, valid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """values (..., T), valid (..., T) broadcastable, t (T,) → values with the invalid steps linearly
    interpolated in ``t`` between the previous and next valid step (constant beyond the ends).

    Works one slice of the leading axis (a band) at a time with compact index types, so its
    temporaries stay a small multiple of one band of the chunk.
    """
    valid = np.broadcast_to(valid, values.shape)
    if values.ndim > 2:
        out = np.empty(values.shape, dtype=np.float32)
        for i in range(values.shape[0]):
            out[i] = fill_linear(values[i], valid[i], t)
        return out
    steps = values.shape[-1]
    index_type = np.int16 if steps < np.iinfo(np.int16).max else np.int32
    ok = valid & np.isfinite(values)
    index = np.arange(steps, dtype=index_type)
    prev = np.maximum.accumulate(np.where(ok, index, index_type(-1)), axis=-1)
    nxt = np.minimum.accumulate(np.where(ok, index, index_type(steps))[..., ::-1], axis=-1)[..., ::-1]
    has_prev, has_next = prev >= 0, nxt < steps
    p, q = np.clip(prev, 0, steps - 1), np.clip(nxt, 0, steps - 1)
    vp = np.take_along_axis(values, p, axis=-1).astype(np.float32)
    vq = np.take_along_axis(values, q, axis=-1).astype(np.float32)
    times = np.asarray(t, dtype=np.float64)
    tp, tq = times[p], times[q]
    inside = has_prev & has_next & (tq > tp)
    weight = np.divide(times - tp, tq - tp, out=np.zeros(values.shape), where=inside).astype(np.float32)
    out = np.where(inside, vp + weight * (vq - vp), vp)  # vq may be NaN past the end
    out = np.where(has_prev, out, vq)
    out = np.where(has_prev | has_next, out, np.float32(np.nan))
    return np.where(ok, values, out).astype(np.float32)


def n_valid_obs(cube: Cube) -> xr.DataArray:
    """``(y, x)`` int32: how many valid observations each pixel has (acquisitions on a raw cube, periods
    with at least one valid acquisition on a regularised one). Lazy on a dask cube."""
    count = cube.valid.sum("time").astype("int32").rename("n_valid_obs")
    return _keep_geo(count, cube.data)


def _keep_geo(array: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    crs = like.rio.crs
    if crs is None:
        return array
    return array.rio.write_crs(crs).rio.write_transform(like.rio.transform())
