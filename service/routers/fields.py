"""``POST /v1/fields:classify``: GeoJSON field polygons in, field predictions out (the door of
:func:`cropstar.infer.fields.classify_fields`, the REST twin of ``cropstar fields``)."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any

import geopandas as gpd
import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from cropstar.data.fields import ID_COLUMNS
from cropstar.infer.fields import RESULT_COLUMNS, input_names
from cropstar.infer.geojson import from_feature_collection, to_feature_collection
from service.errors import Unprocessable, problem_responses, validation_detail
from service.json_body import check_media_type, parse_json
from service.limits import check_area_limit, check_collection_limits
from service.schemas import FIELDS_EXAMPLE, GEOJSON, GEOJSON_TYPES, Aggregate, FieldPredictions, FieldsIn
from service.security import read_dependencies
from service.settings import DEFAULT_MODEL_ID, Limits, Settings
from service.state import AppState, Season

_YEAR = r"(?:19\d\d|2[01]\d\d|2200)"
_LEAP_YEAR = r"(?:19(?:0[48]|[2468][048]|[13579][26])|20(?:[02468][048]|[13579][26])|21(?:0[48]|[2468][048]|[13579][26]))"
#: A possible day of 1900–2200 (30 April yes, 31 April no; 29 February in leap years only).
_DAY = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    rf"|02-(?:0[1-9]|1\d|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
#: A year, or an interval of two possible days (that the end is not before the start is checked after).
SEASON_PATTERN = rf"^(?:{_YEAR}|{_DAY}/{_DAY})$"
#: The years a season may name (pandas timestamps reach 1677–2262).
SEASON_YEARS = (1900, 2200)

ModelQuery = Annotated[
    str, Query(description="Model id: 'default' or a registry version (GET /v1/models).", max_length=200)
]
SourceQuery = Annotated[
    str | None,
    Query(description="Data source name from the service's settings (default: its default source).",
          max_length=64),
]
SeasonQuery = Annotated[
    str | None,
    Query(
        description="The acquisitions to use: a year (2026) or an inclusive ISO interval "
        "(2026-03-01/2026-10-31). Default: all of the source's.",
        json_schema_extra={"pattern": SEASON_PATTERN},  # checked by parse_season, whose 422 says it in words
        examples=["2026", "2026-03-01/2026-10-31"],
    ),
]
AggregateQuery = Annotated[
    Aggregate, Query(description="mean: the mean of the pixels' class probabilities; majority: their votes.")
]

DESCRIPTION = """\
The crop of every field: the class probabilities of the pixels whose centres lie in a field,
aggregated per field (`aggregate=mean`: mean probability; `majority`: vote shares).

The body is a GeoJSON FeatureCollection (RFC 7946: WGS 84 lon/lat) of polygons or multipolygons, as
`application/geo+json` or `application/json`. The answer is the same collection (`application/geo+json`,
coordinates rounded to 7 decimals, exterior rings counter-clockwise, repaired geometries where they were
invalid) with each feature's properties plus `crop`, `crop_code`, `crop_id`, `confidence`,
`probabilities`, `n_pixels`, `n_valid_obs`, `model`, `season`, `status` and `message` — the columns of
`cropstar fields`.

A feature that cannot be classified does not fail the request: its `status` says why
(`outside_cube`, `no_pixels`, `no_valid_observations`, `invalid_geometry` — e.g. a Point, or a polygon
that could not be repaired) and `message` explains; a self-intersecting polygon is repaired and
classified, with a message (one request's repairs may take `limits.repair_seconds`; a polygon not
repaired by then is `invalid_geometry`, saying so). Request-level problems are problem details: invalid JSON (400), not a
FeatureCollection or malformed GeoJSON (422), too many features, too many vertices in one geometry, too
large an area or body (413), an unknown model or data source (404), still reading pixels after
`limits.request_seconds` (503 `deadline-exceeded`), or a body over `limits.large_body_bytes` while the
server process is already working on `limits.large_requests` such bodies (503 `busy`, `Retry-After`).
"""


#: The validator of request bodies (built once: building it costs more than most requests).
FIELDS_IN = TypeAdapter(FieldsIn)


class GeoJSONResponse(JSONResponse):
    media_type = GEOJSON


def read_fields(
    body: bytes, content_type: str | None, limits: Limits
) -> tuple[gpd.GeoDataFrame, list[dict[str, Any]]]:
    """The fields of a request body (WGS 84; their ids and geometries) and its features as sent,
    checked in order of cost: media type, JSON, the top-level type, feature and vertex counts (on the
    raw JSON), the GeoJSON schema, the total area."""
    check_media_type(content_type)
    document = parse_json(body)
    found = document.get("type") if isinstance(document, dict) else type(document).__name__
    if found != "FeatureCollection":
        hint = ": wrap it in a FeatureCollection" if found == "Feature" else ""
        raise Unprocessable(f"expected a GeoJSON FeatureCollection, got {found!r}{hint}")
    check_collection_limits(document, limits)
    read = _read_as(document)
    try:
        FIELDS_IN.validate_python(read)
    except ValidationError as error:
        detail, records = validation_detail(list(error.errors()), ("body",))
        raise Unprocessable(f"invalid GeoJSON: {detail}", errors=records) from None
    frame = from_feature_collection(_ids_only(read))
    _check_lonlat(frame)
    check_area_limit(frame.geometry, limits)
    return frame, document["features"]


def _ids_only(document: dict[str, Any]) -> dict[str, Any]:
    """The collection with each feature's properties cut to its id columns: the answer carries the
    properties as sent (:func:`answer_collection`), and no property name (``geometry``, say) may
    meet a column of the frame the model reads."""
    features = []
    for feature in document["features"]:
        properties = feature.get("properties") or {}
        kept = {name: value for name, value in properties.items() if name == "field_id" or name in ID_COLUMNS}
        features.append({**feature, "properties": kept})
    return {**document, "features": features}


def _read_as(member: Any, key: str | None = None) -> Any:
    """The document as the service reads it: without ``bbox`` members (RFC 7946 §5: optional and
    informative; the coordinates are what counts), with every position cut to longitude and latitude
    (an altitude is allowed but unused, and a ring or collection may mix positions with and without
    one, which shapely cannot build), and without the empty parts of multi-geometries."""
    if isinstance(member, dict):
        _check_bbox(member.get("bbox"))
        read = {name: _read_as(value, name) for name, value in member.items() if name != "bbox"}
        if str(read.get("type", "")).startswith("Multi") and isinstance(read.get("coordinates"), list):
            read["coordinates"] = [part for part in read["coordinates"] if part != []]  # shapely fails on []
        return read
    if key == "coordinates" and isinstance(member, list):
        if any(isinstance(v, bool) for v in member):
            raise Unprocessable("invalid GeoJSON: a position holds true or false; positions are numbers")
        if member and all(_number(v) for v in member):
            return member[:2]
        return [_read_as(value, "coordinates") for value in member]
    if isinstance(member, list):
        return [_read_as(value, key) for value in member]
    return member


def _number(value: Any) -> bool:
    """Whether a JSON value is a number (true and false are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_bbox(bbox: Any) -> None:
    """Unprocessable unless ``bbox`` is absent, null, or 4 or 6 numbers (its values are not used)."""
    if bbox is not None and not (isinstance(bbox, list) and len(bbox) in (4, 6) and all(map(_number, bbox))):
        raise Unprocessable(f"invalid GeoJSON: a bbox is 4 or 6 numbers, got {json.dumps(bbox)[:80]}")


def _check_lonlat(frame: gpd.GeoDataFrame) -> None:
    """Unprocessable naming the first feature with a position outside longitude −180…180 / latitude
    −90…90 (most often projected coordinates: RFC 7946 GeoJSON is WGS 84 lon/lat)."""
    bounds = frame.geometry.bounds.to_numpy()
    bad = (bounds[:, 0] < -180) | (bounds[:, 2] > 180) | (bounds[:, 1] < -90) | (bounds[:, 3] > 90)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise Unprocessable(
            f"feature {i}: positions outside longitude -180…180 / latitude -90…90 (bounds "
            f"{', '.join(f'{v:.6g}' for v in bounds[i])}); GeoJSON coordinates are WGS 84 lon/lat (RFC 7946), "
            "not projected"
        )


def answer_collection(result: gpd.GeoDataFrame, features: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer: each request feature with its ``id`` and properties as sent (JSON values untouched;
    those named like a result column renamed by :func:`~cropstar.infer.fields.input_names`, the same
    renames for every feature), its ``field_id``, the result columns and its (repaired) geometry."""
    answer = to_feature_collection(result[["field_id", *RESULT_COLUMNS, result.geometry.name]])
    sent_properties = [feature.get("properties") or {} for feature in features]
    renames = input_names({name for properties in sent_properties for name in properties})
    for feature, sent, given in zip(answer["features"], features, sent_properties, strict=True):
        properties = {renames.get(name, name): value for name, value in given.items()}
        properties.setdefault("field_id", sent.get("id", feature["properties"]["field_id"]))
        properties.update({name: feature["properties"][name] for name in RESULT_COLUMNS})
        feature["properties"] = properties
        if "id" in sent:
            feature["id"] = sent["id"]
    return answer


def parse_season(season: str | None) -> Season:
    """None, a year, or an inclusive (start, end) of ISO dates; Unprocessable for impossible dates and
    years outside :data:`SEASON_YEARS`."""
    if season is None:
        return None
    if not re.fullmatch(r"\d{4}(-\d{2}-\d{2}/\d{4}-\d{2}-\d{2})?", season):  # the form; the days below
        raise Unprocessable(
            f"season {season!r} is neither a year nor an interval of two ISO dates (2026, or 2026-03-01/2026-10-31)"
        )
    try:
        if "/" not in season:
            first = last = date(int(season), 1, 1)
        else:
            start, end = season.split("/")
            first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError as error:
        raise Unprocessable(f"season {season!r}: {error}") from None
    if not (SEASON_YEARS[0] <= first.year and last.year <= SEASON_YEARS[1]):
        raise Unprocessable(f"season {season!r}: years must lie in {SEASON_YEARS[0]}–{SEASON_YEARS[1]}")
    if first > last:
        raise Unprocessable(f"season {season!r} ends before it starts")
    return first.year if "/" not in season else (first.isoformat(), last.isoformat())


def make_router(settings: Settings, state: AppState) -> APIRouter:
    """The fields route (read scope when ``read_requires_key``)."""
    router = APIRouter(prefix="/v1", tags=["fields"], dependencies=read_dependencies(settings))
    body_schema = {"$ref": "#/components/schemas/FieldsIn"}

    @router.post(
        "/fields:classify",
        operation_id="classify_fields",
        summary="Classify fields (GeoJSON in, GeoJSON out)",
        description=DESCRIPTION,
        response_model=FieldPredictions,
        response_class=GeoJSONResponse,
        responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 500, 503),
        openapi_extra={"requestBody": {"required": True, "content": {
            media: {"schema": body_schema, "example": FIELDS_EXAMPLE} for media in GEOJSON_TYPES
        }}},
    )  # fmt: skip
    async def classify_fields(
        request: Request,
        model: ModelQuery = DEFAULT_MODEL_ID,
        source: SourceQuery = None,
        season: SeasonQuery = None,
        aggregate: AggregateQuery = "mean",
    ) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type")

        def answer() -> dict[str, Any]:
            fields, features = read_fields(body, content_type, settings.limits)
            result = state.classify_fields(
                model, source, fields, aggregate=aggregate, season=parse_season(season)
            )
            return answer_collection(result, features)

        with state.large_requests.admit(len(body)):
            return GeoJSONResponse(await run_in_threadpool(answer))

    return router
