"""Request bodies read as JSON by the service itself rather than by FastAPI: after the route's key
check (401 comes before any look at the body), with the documented answers — a body that is not
declared JSON 415, one that is empty or not strict JSON (NaN, Infinity) 400, one that does not fit its
schema 422 ``invalid-parameters`` with an ``errors`` list."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from service.errors import InvalidBody, InvalidParameters, UnsupportedMediaType, validation_detail
from service.schemas import GEOJSON_TYPES

T = TypeVar("T")
JSON_TYPES = ("application/json",)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The JSON document of a request body; InvalidBody (400) saying where it breaks."""
    if not body.strip():
        raise InvalidBody("the request body is empty")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidBody(f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except UnicodeDecodeError:
        raise InvalidBody("the body is not UTF-8 text") from None
    except ValueError as error:
        raise InvalidBody(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidBody("the body's JSON is nested too deeply") from None


def check_media_type(content_type: str | None, accepted: tuple[str, ...] = GEOJSON_TYPES) -> None:
    """UnsupportedMediaType (415) unless the body is declared as one of ``accepted``, another
    ``application/…+json`` type, or not declared."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in accepted or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(f"the body is {media!r}; send it as {' or '.join(accepted)}")


def json_body(model: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A route dependency: the request's body as ``model``, read with the checks above."""
    adapter = TypeAdapter(model)

    async def read(request: Request) -> T:
        check_media_type(request.headers.get("content-type"), JSON_TYPES)
        document = parse_json(await request.body())
        try:
            return adapter.validate_python(document)
        except ValidationError as error:
            detail, records = validation_detail(list(error.errors()), ("body",))
            raise InvalidParameters(detail, errors=records) from None

    return read


def body_schema(name: str) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route reading the component schema ``name`` as JSON."""
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"$ref": f"#/components/schemas/{name}"}} for media in JSON_TYPES
    }}}  # fmt: skip
