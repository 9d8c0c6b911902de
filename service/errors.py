"""Errors as RFC 9457 problem details (``application/problem+json``): cropstar's error hierarchy and the
service's own request errors become 4xx responses whose ``detail`` names the thing at fault; anything
else is a bug and becomes a 500 problem (and a logged traceback). A client that goes away before its
body arrives is no error of the service: it is logged in one line and counted with status 499.

Problem ``type`` URIs are ``urn:cropstar:problem:<slug>``; the slugs are listed in docs/rest-api.md.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cropstar.errors import BrokenModelError, CropstarError, DataError, InputError, ModelMismatchError

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:cropstar:problem:"
#: How many validation errors a problem's ``detail`` spells out (all of them are in ``errors``).
DETAIL_ERRORS = 3
HTTP_METHODS = ("GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE")
#: The status recorded for a request whose client disconnected first (nginx's "client closed request").
CLIENT_CLOSED_REQUEST = 499
_log = logging.getLogger("cropstar.service")


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="URI of the kind of problem (urn:cropstar:problem:…).")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(None, description="What went wrong with this request, naming the culprit.")
    instance: str | None = Field(None, description="The request path.")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


class ServiceError(Exception):
    """A request the service refuses: ``status``, a ``slug`` (the problem type) and a ``detail``."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class BadRequest(ServiceError):
    status, slug, title = 400, "bad-request", "Bad request"


class InvalidBody(ServiceError):
    status, slug, title = 400, "invalid-json", "The request body is not valid JSON"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Missing or unknown API key"


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "The API key may not do this"


class NotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class LimitExceeded(ServiceError):
    status, slug, title = 413, "limit-exceeded", "The request exceeds a limit of this service"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class Unprocessable(ServiceError):
    status, slug, title = 422, "invalid-input", "The request is well-formed but cannot be processed"


class InvalidParameters(ServiceError):
    status, slug, title = 422, "invalid-parameters", "The request's parameters are invalid"


class NoMap(NotFound):
    status, slug, title = 404, "no-map", "No class map to show"


class Unavailable(ServiceError):
    status, slug, title = 503, "unavailable", "A resource of this service is unavailable"


class Busy(ServiceError):
    status, slug, title = 503, "busy", "The service is busy with other large requests"


class DeadlineExceeded(ServiceError):
    status, slug, title = 503, "deadline-exceeded", "The request took longer than this service allows"


#: cropstar's errors: (status, slug, title).
CROPSTAR_ERRORS: dict[type[CropstarError], tuple[int, str, str]] = {
    BrokenModelError: (500, "broken-model", "The model cannot give trustworthy answers"),
    ModelMismatchError: (422, "model-mismatch", "The data does not fit the model"),
    DataError: (422, "data-error", "The data cannot be used"),
    InputError: (422, "invalid-input", "The request is well-formed but cannot be processed"),
}


def problem(
    status: int, title: str, detail: str | None, *, slug: str | None = None, request: Request | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> ProblemResponse:
    """A problem details response."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug if slug else "about:blank", "title": title, "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    """("body", "features", 3, "geometry") → "body.features[3].geometry"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_detail(errors: list[dict[str, Any]], prefix: tuple[Any, ...] = ()) -> tuple[str, list[dict]]:
    """The first :data:`DETAIL_ERRORS` pydantic errors as one sentence, and all as JSON-safe records."""
    records = [
        {"loc": _location((*prefix, *e.get("loc", ()))), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]
    parts = [f"{r['loc']}: {r['msg']}" if r["loc"] else r["msg"] for r in records[:DETAIL_ERRORS]]
    more = len(records) - DETAIL_ERRORS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else ""), records


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the path template that matches the request's path most
    specifically (the most literal characters: ``/v1/models/{id}:promote`` before ``/v1/models/{id}``),
    with all of that template's methods (Starlette's own 405 names only the first matching route's:
    ``/v1/jobs/{id}`` answers GET and DELETE); empty for a path the document leaves out."""
    matching: dict[int, set[str]] = {}
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            literal = len(re.sub(r"\{[^}]+\}", "", template))
            methods = {method.upper() for method in operations if method.upper() in HTTP_METHODS}
            matching.setdefault(literal, set()).update(methods)
    return sorted(matching[max(matching)]) if matching else []


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem details."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> ProblemResponse:
        return problem(
            error.status, error.title, error.detail, slug=error.slug, request=request, headers=error.headers,
            **error.extra,
        )

    @app.exception_handler(CropstarError)
    async def _cropstar_error(request: Request, error: CropstarError) -> ProblemResponse:
        status, slug, title = next(
            (v for kind, v in CROPSTAR_ERRORS.items() if isinstance(error, kind)), CROPSTAR_ERRORS[InputError]
        )
        detail = str(error)
        if status >= 500:  # a fault of the service's own files: the log names them, the answer does not
            _log.error("%s %s: %s", request.method, request.url.path, error)
            detail = ("the model's weights are damaged or give non-finite answers: an operator must retrain "
                      "or restore it (the service's log names the file)")
        return problem(status, title, detail, slug=slug, request=request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> ProblemResponse:
        detail, records = validation_detail(list(error.errors()))
        return problem(
            422, "The request's parameters are invalid", detail, slug="invalid-parameters", request=request,
            errors=records,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> ProblemResponse:
        from http import HTTPStatus

        title = HTTPStatus(error.status_code).phrase if error.status_code in HTTPStatus._value2member_map_ else "Error"
        detail = error.detail if isinstance(error.detail, str) and error.detail != title else None
        if error.status_code == 404 and detail is None:
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        headers = getattr(error, "headers", None)
        if error.status_code == 405 and (allowed := allowed_methods(request)):
            detail = detail or f"{request.method} is not allowed on {request.url.path} (allowed: {', '.join(allowed)})"
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        elif error.status_code == 405 and detail is None:
            detail = f"{request.method} is not allowed on {request.url.path}"
        slug = getattr(error, "slug", None)
        if slug == LimitExceeded.slug:
            title = LimitExceeded.title
        return problem(error.status_code, title, detail, slug=slug, request=request, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, error: ClientDisconnect) -> Response:
        _log.info("client disconnected before sending the whole body: %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # never delivered: recorded in the metrics

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> ProblemResponse:
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500, "Internal server error", "an unexpected error: this is a bug in the service; it has been logged",
            slug="bug", request=request,
        )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: problem details for each status (the ``Problem`` schema is added to
    the components by :func:`service.openapi.install_openapi`)."""
    from http import HTTPStatus

    return {
        status: {
            "description": HTTPStatus(status).phrase + " (problem details)",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
