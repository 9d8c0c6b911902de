"""``/v1/sources`` and the class maps the map page shows: the data sources, each source's class map
(made once per model from the whole source, for sources held in memory) and the map of each finished
``classify-raster`` job — described as JSON (bounds in longitude / latitude, legend) and drawn as PNG
pictures (:mod:`service.map_images`) — and the sample fields that come with a source (the demo's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParameter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from service.errors import NoMap, NotFound, problem_responses
from service.jobs import Jobs
from service.jobs.processes import COG_TYPE
from service.map_images import MAX_PICTURE_SIDE, describe_map, map_png
from service.routers.fields import ModelQuery
from service.schemas import GEOJSON
from service.security import read_dependencies
from service.settings import DEFAULT_MODEL_ID, Settings
from service.state import AppState

PNG = "image/png"
SizeQuery = Annotated[
    int, Query(ge=16, le=MAX_PICTURE_SIDE, description="The picture's longer side at most (pixels).")
]
SourceName = Annotated[
    str, PathParameter(description="A data source name of the service's settings (GET /v1/sources).", max_length=200)
]
JobId = Annotated[str, PathParameter(description="A job id (GET /v1/jobs).", max_length=200)]


class LegendEntry(BaseModel):
    id: int = Field(description="The class id (the value in the map's class band).")
    code: str
    name: str
    colour: str | None = Field(description="#rrggbb, the map's colour for the class.")


class MapDescription(BaseModel):
    bounds: list[float] = Field(description="[west, south, east, north] in longitude / latitude (EPSG:4326).")
    crs: str | None = Field(description="The map's own coordinate system.")
    width: int
    height: int
    legend: list[LegendEntry]
    model: str = Field(description="The model that made the map: name and version.")
    dates: list[str] | None = Field(None, description="The first and last date of the model's time grid.")
    picture: str = Field(description="The map as a PNG in longitude / latitude (GET; query size).")
    download: str | None = Field(None, description="The map itself, a Cloud-Optimized GeoTIFF (jobs' maps).")


class SourceSummary(BaseModel):
    name: str
    default: bool = Field(description="The source requests use when they name none.")
    map: str = Field(description="Its class map's description (GET; query model).")
    fields: str | None = Field(None, description="Sample fields that come with the source (the demo's).")


class SourceList(BaseModel):
    sources: list[SourceSummary]


def make_router(settings: Settings, state: AppState, jobs: Jobs) -> APIRouter:
    """The class-map routes; reads open (or keyed by ``read_requires_key``)."""
    router = APIRouter(prefix="/v1", tags=["maps"])
    reads = read_dependencies(settings)

    def sample_fields(name: str) -> Path | None:
        """The fields.geojson beside the source's cube (the demo scene has one), else None."""
        path = state.source(name).path
        candidate = None if path is None else path.parent / "fields.geojson"
        return candidate if candidate is not None and candidate.is_file() else None

    def job_map(job_id: str) -> Path:
        job = jobs.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        output = (job.outputs or {}).get("map")
        if job.status != "successful" or not isinstance(output, dict) or output.get("type") != COG_TYPE:
            raise NoMap(f"job {job_id!r} has no class map ({job.process}, {job.status})")
        folder = jobs.processes.job_dir(job.id).resolve()
        path = (folder / output["file"]).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise NoMap(f"the class map of job {job_id!r} is gone")
        return path

    @router.get(
        "/sources", operation_id="list_sources", summary="The data sources", response_model=SourceList,
        response_model_exclude_none=True, dependencies=reads, responses=problem_responses(401, 403),
    )  # fmt: skip
    def list_sources(request: Request) -> dict[str, Any]:
        """The data sources requests may name, with links to their class maps."""
        sources = []
        for name in state.sources:
            summary = {"name": name, "default": name == settings.source_name,
                       "map": str(request.url_for("describe_source_map", source=name))}  # fmt: skip
            if state.sources[name].path is not None and sample_fields(name) is not None:
                summary["fields"] = str(request.url_for("source_fields", source=name))
            sources.append(summary)
        return {"sources": sources}

    @router.get(
        "/sources/{source}/map", operation_id="describe_source_map", summary="A source's class map",
        response_model=MapDescription, response_model_exclude_none=True, dependencies=reads,
        responses=problem_responses(401, 403, 404, 503),
    )  # fmt: skip
    async def describe_source_map(request: Request, source: SourceName, model: ModelQuery = DEFAULT_MODEL_ID) -> dict[str, Any]:
        """The class map of the whole source by the model, made on first use (sources held in memory only:
        404 ``no-map`` for larger ones, which a classify-raster job maps)."""
        path = await run_in_threadpool(state.class_map, model, source)
        description = await run_in_threadpool(describe_map, path)
        picture = request.url_for("source_map_picture", source=source).include_query_params(model=model)
        return {**description, "picture": str(picture)}

    @router.get(
        "/sources/{source}/map.png", operation_id="source_map_picture", summary="A source's class map as a picture",
        dependencies=reads, response_class=Response,
        responses={200: {"content": {PNG: {}}, "description": "PNG"}, **problem_responses(401, 403, 404, 422, 503)},
    )  # fmt: skip
    async def source_map_picture(
        source: SourceName, model: ModelQuery = DEFAULT_MODEL_ID, size: SizeQuery = 1024
    ) -> Response:
        """The class band in the map's colours, in longitude / latitude, no-data transparent."""
        path = await run_in_threadpool(state.class_map, model, source)
        return Response(await run_in_threadpool(map_png, path, size), media_type=PNG)

    @router.get(
        "/sources/{source}/fields", operation_id="source_fields", summary="A source's sample fields",
        dependencies=reads, response_class=Response,
        responses={200: {"content": {GEOJSON: {}}, "description": "GeoJSON"}, **problem_responses(401, 403, 404)},
    )  # fmt: skip
    def source_fields(source: SourceName) -> Response:
        """The fields that come with the source, as RFC 7946 GeoJSON (the demo scene's 84 fields)."""
        path = sample_fields(source)
        if path is None:
            raise NotFound(f"data source {source!r} comes with no sample fields")
        return Response(json.dumps(json.loads(path.read_text())), media_type=GEOJSON)

    @router.get(
        "/jobs/{job_id}/map", operation_id="describe_job_map", summary="A classify-raster job's class map",
        response_model=MapDescription, response_model_exclude_none=True, dependencies=reads, tags=["jobs"],
        responses=problem_responses(401, 403, 404),
    )  # fmt: skip
    async def describe_job_map(request: Request, job_id: JobId) -> dict[str, Any]:
        """The map a successful classify-raster job wrote: bounds, legend, links to the picture and the COG."""
        path = job_map(job_id)
        description = await run_in_threadpool(describe_map, path)
        return {**description, "picture": str(request.url_for("job_map_picture", job_id=job_id)),
                "download": str(request.url_for("get_job_output", job_id=job_id, output_id="map"))}  # fmt: skip

    @router.get(
        "/jobs/{job_id}/map.png", operation_id="job_map_picture", summary="A classify-raster job's map as a picture",
        dependencies=reads, response_class=Response, tags=["jobs"],
        responses={200: {"content": {PNG: {}}, "description": "PNG"}, **problem_responses(401, 403, 404, 422)},
    )  # fmt: skip
    async def job_map_picture(job_id: JobId, size: SizeQuery = 1024) -> Response:
        return Response(await run_in_threadpool(map_png, job_map(job_id), size), media_type=PNG)

    return router
