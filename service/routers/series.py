"""``POST /v1/series:classify``: time series posted as JSON arrays → labels and probabilities, for
clients with their own extraction (the door of :func:`service.series.classify_series`)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends

from cropstar.errors import InputError
from service.errors import LimitExceeded, problem_responses
from service.json_body import body_schema, json_body
from service.routers.fields import ModelQuery
from service.schemas import SeriesRequest, SeriesResponse
from service.security import read_dependencies
from service.series import SeriesSample, classify_series
from service.settings import DEFAULT_MODEL_ID, Settings
from service.state import AppState

DESCRIPTION = """\
The crop of each posted time series. `bands` and `dates` name the axes of every sample's `values`:
`[date][band]` for a pixel (read as a uniform patch of the model's size) or `[date][band][row][col]`
for a patch; `null` marks a missing value and the optional `mask` (one boolean per date) clear
observations. The series are composited onto the model's time grid and gap-filled exactly as a scene
is, so the dates need not be the model's; the model's bands must be among `bands` (any order, provider
aliases such as `blue` or `B2` allowed).

Each result has `status` (`ok` or `no_valid_observations`), `crop`, `crop_code`, `crop_id`,
`confidence`, `probabilities` and `n_valid_obs`. A model that cannot read the series (missing bands,
another patch size, a season that does not fit its time grid) is a 422 problem naming the mismatch.
"""


def _array(values: list, index: int) -> np.ndarray:
    """A sample's values as float32 (null → NaN); InputError for ragged arrays and for values beyond
    float32's range (no sensor gives them; as infinities they would reach the model)."""
    try:
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=np.float32)
    except ValueError:
        raise InputError(
            f"series[{index}].values is ragged: every date needs the same bands (and every band the same pixels)"
        ) from None
    if np.isinf(array).any():
        raise InputError(f"series[{index}].values holds a value beyond ±3.4e38 (float32): reflectance is 0–1")
    return array


def make_router(settings: Settings, state: AppState) -> APIRouter:
    """The series route (read scope when ``read_requires_key``)."""
    router = APIRouter(prefix="/v1", tags=["series"], dependencies=read_dependencies(settings))

    @router.post(
        "/series:classify",
        operation_id="classify_series",
        summary="Classify time series (JSON arrays)",
        description=DESCRIPTION,
        response_model=SeriesResponse,
        responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 500),
        openapi_extra=body_schema("SeriesRequest"),
    )
    def classify_series_route(
        request: Annotated[SeriesRequest, Depends(json_body(SeriesRequest))], model: ModelQuery = DEFAULT_MODEL_ID
    ) -> dict[str, Any]:
        if len(request.series) > settings.limits.max_series:
            raise LimitExceeded(
                f"{len(request.series):,} series in one request; at most {settings.limits.max_series:,} "
                "(limits.max_series): split the request"
            )
        entry, loaded = state.model(model)
        samples = [
            SeriesSample(_array(s.values, i), None if s.mask is None else np.array(s.mask, dtype=bool), s.id)
            for i, s in enumerate(request.series)
        ]
        answer = state.timed(entry, "series", lambda: classify_series(loaded, request.bands, request.dates, samples))
        state.metrics.series.inc(len(samples))
        return {"model": entry.id, **answer}

    return router
