"""The documents the API reads and writes (OpenAPI schemas, with examples): GeoJSON fields in and
field predictions out (geojson-pydantic), series, models, health."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from geojson_pydantic import Feature, FeatureCollection
from geojson_pydantic.geometries import Geometry
from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, field_validator

from cropstar.infer.fields import AGGREGATES, STATUSES

GEOJSON = "application/geo+json"
#: Media types fields:classify accepts.
GEOJSON_TYPES = (GEOJSON, "application/json")
FieldStatus = Literal[STATUSES]  # type: ignore[valid-type]
Aggregate = Literal[AGGREGATES]  # type: ignore[valid-type]

#: Two fields of the demo scene (``cropstar demo fields`` prints them all).
FIELDS_EXAMPLE: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature", "id": 1, "properties": {"field_id": 1},
            "geometry": {"type": "Polygon", "coordinates": [[
                [11.5731876, 48.3639012], [11.5731921, 48.3643763], [11.5696437, 48.3644557],
                [11.5700906, 48.3641489], [11.5731876, 48.3639012],
            ]]},
        },
        {
            "type": "Feature", "id": "outside", "properties": {"note": "far from the demo scene"},
            "geometry": {"type": "Polygon", "coordinates": [[
                [2.35, 48.85], [2.36, 48.85], [2.36, 48.86], [2.35, 48.86], [2.35, 48.85],
            ]]},
        },
    ],
}  # fmt: skip


FieldsIn = FeatureCollection[Feature[Geometry, dict[str, Any]]]
FieldsIn.__doc__ = "A GeoJSON FeatureCollection of field polygons (RFC 7946, WGS 84 lon/lat)."


class FieldPrediction(BaseModel):
    """The properties of a predicted field: its input properties (a property named like a result
    column comes back as ``input_<name>``) and the results of ``cropstar fields``."""

    model_config = ConfigDict(extra="allow")

    field_id: Any = Field(None, description="The field's id: its field_id / id / fid / parcel_id property as "
                          "sent (any JSON value), else the feature id, else its position.")
    crop: str | None = Field(description="The predicted class's name (null unless status is ok).")
    crop_code: str | None = Field(description="The predicted class's code.")
    crop_id: int | None = Field(description="The predicted class's id in the model.")
    crop_colour: str | None = Field(
        None, description="The predicted class's colour in the class maps, #rrggbb.", pattern="^#[0-9a-f]{6}$"
    )
    confidence: float | None = Field(description="The predicted class's aggregated probability (or vote share).")
    probabilities: dict[str, float] | None = Field(description="Class code → aggregated probability "
                                                   "(aggregate=mean) or vote share (majority), 4 decimals.")
    n_pixels: int = Field(description="Pixels used: centre inside the field, at least one valid observation.")
    n_valid_obs: float | None = Field(description="Mean number of the model's time steps with a valid "
                                      "observation over those pixels.")
    model: str = Field(description="The model, name:version.")
    season: str = Field(description="The model's time grid in the cube's season, ISO interval.")
    status: FieldStatus = Field(description="ok, or why the field was not classified.")
    message: str | None = Field(description="What was wrong with the field, or what was repaired.")


FieldPredictions = FeatureCollection[Feature[Geometry, FieldPrediction]]
FieldPredictions.__doc__ = "The fields with their predictions, RFC 7946 (lon/lat, ≤ 7 decimals, CCW rings)."


# ---------------------------------------------------------------------------------------------
# series
# ---------------------------------------------------------------------------------------------
#: A value as JSON gives it: a number (an integer too), never a boolean.
Number = Annotated[float, Strict()]
Values = list[list[Number | None]] | list[list[list[list[Number | None]]]]
#: A feature name as :func:`cropstar.data.features.canonical_feature` reads it.
BandName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_.+-]*$")]


class SeriesSampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | int | None = Field(None, description="Your id of the sample, given back.")
    values: Values = Field(
        description="Surface reflectance (0–1): [date][band] for a pixel (read as a uniform patch), or "
        "[date][band][row][col] for a patch of the model's size; null = missing."
    )
    mask: list[bool] | None = Field(None, description="Per date: true = a valid (clear) observation.")


class SeriesRequest(BaseModel):
    """Time series to classify: the dates and bands of the values, and the samples."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "bands": ["B02", "B03", "B04", "B08", "B11", "B12"],
            "dates": ["2026-04-01", "2026-05-01", "2026-06-01", "2026-07-01", "2026-08-01"],
            "series": [{"id": "p1", "values": [
                [0.04, 0.06, 0.05, 0.25, 0.18, 0.10], [0.03, 0.06, 0.04, 0.38, 0.17, 0.08],
                [0.03, 0.07, 0.03, 0.45, 0.16, 0.07], [0.05, 0.08, 0.07, 0.30, 0.22, 0.13],
                [0.07, 0.09, 0.10, 0.22, 0.27, 0.18],
            ], "mask": [True, True, False, True, True]}],
        }]},
    )  # fmt: skip

    bands: list[BandName] = Field(min_length=1, max_length=32, description="Band names (or aliases) of the "
                                  "values' band axis; the model's bands must be among them.")
    dates: list[date | datetime] = Field(
        min_length=1, max_length=1000,
        description="Acquisition dates of the values' time axis (ISO, years 1900–2200); composited onto the "
        "model's time grid.",
        json_schema_extra={"items": {"anyOf": [{"type": "string", "format": "date"},
                                               {"type": "string", "format": "date-time"}],
                                     "pattern": "^(?:19\\d\\d|2[01]\\d\\d|2200)-"}},
    )  # fmt: skip
    series: list[SeriesSampleIn] = Field(min_length=1, description="The samples.")

    @field_validator("dates")
    @classmethod
    def _utc(cls, dates: list[date | datetime]) -> list[date | datetime]:
        """Times with a zone as UTC times without one (the grid is of days)."""
        return [d.astimezone(UTC).replace(tzinfo=None) if isinstance(d, datetime) and d.tzinfo else d for d in dates]


class SeriesPrediction(BaseModel):
    id: str | int | None = None
    status: Literal["ok", "no_valid_observations"]
    message: str | None
    crop: str | None
    crop_code: str | None
    crop_id: int | None
    confidence: float | None
    probabilities: dict[str, float] | None
    n_valid_obs: int = Field(description="Steps of the model's time grid with a valid observation.")


class SeriesResponse(BaseModel):
    model: str = Field(description="The model id used.")
    time_grid: list[str] = Field(description="The model's time steps in the samples' season.")
    results: list[SeriesPrediction]


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
class ModelSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="What requests name: 'default', or a registry version 'name:vN'.")
    name: str
    version: str | int | None
    default: bool = Field(description="The model behind the id 'default'.")
    current: bool | None = Field(None, description="The current version of its name in the registry.")
    created: str | None = None
    task: str | None = None
    bands: list[str] | None = None
    classes: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelCardDocument(BaseModel):
    id: str
    card: dict[str, Any] = Field(description="model.json as stored (architecture, classes, bands, time grid, "
                                 "normalisation, training, metrics, STAC MLM fields).")
    model_card: str | None = Field(description="MODEL_CARD.md, where the artifact has one.")
    registration: dict[str, Any] | None = Field(description="The registry record of a registry version.")


# ---------------------------------------------------------------------------------------------
# health
# ---------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    models_loaded: int
    data_sources: dict[str, dict[str, Any]]
    probability_maps: int
