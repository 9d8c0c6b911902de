"""The OpenAPI document: FastAPI's, plus the schemas of what routes read or answer outside pydantic
parameters (the bodies routes read themselves — fields:classify's GeoJSON, series, job execution — so
that limits and keys come before parsing, and the problem details of every error)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from service.errors import PROBLEM_JSON, Problem
from service.jobs.router import Execute
from service.schemas import FieldsIn, SeriesRequest

REF_TEMPLATE = "#/components/schemas/{model}"


def _components(name: str, model: Any) -> dict[str, Any]:
    """The JSON schema of ``model`` under ``name`` with its definitions, as component schemas."""
    schema = TypeAdapter(model).json_schema(ref_template=REF_TEMPLATE, mode="validation")
    definitions = schema.pop("$defs", {})
    return {**definitions, name: schema}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the schemas of the bodies read by the routes and of Problem (built
    once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes,
                tags=app.openapi_tags, servers=app.servers,
            )  # fmt: skip
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, model in (("FieldsIn", FieldsIn), ("SeriesRequest", SeriesRequest), ("Execute", Execute),
                                ("Problem", Problem)):
                for key, value in _components(name, model).items():
                    schemas.setdefault(key, value)
            _problems_everywhere(document)
            _lon_lat_ranges(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problems_everywhere(document: dict[str, Any]) -> None:
    """Every operation's 422 as what the service sends: problem details (FastAPI documents its own
    validation error as ``application/json``)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer is not None:
                answer["content"] = {PROBLEM_JSON: {"schema": {"$ref": REF_TEMPLATE.format(model="Problem")}}}


def _lon_lat_ranges(schemas: dict[str, Any]) -> None:
    """GeoJSON positions as RFC 7946 has them: longitude −180…180, latitude −90…90 (the service
    refuses others, most often projected coordinates)."""
    for name in ("Position2D", "Position3D"):
        items = schemas.get(name, {}).get("prefixItems", [])
        for item, bound in zip(items, (180, 90), strict=False):
            item.update(minimum=-bound, maximum=bound)
