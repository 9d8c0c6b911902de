"""What one request may ask for ("Security": limits on body size, features per request and
total area): a body-size middleware that answers 413 before a large body is read, and the checks of a
parsed FeatureCollection (features, vertices per geometry, total area) run before any heavy parsing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Busy, LimitExceeded, problem
from service.settings import Limits

#: Seconds a client refused as busy is told to wait.
RETRY_AFTER_SECONDS = 1
#: Lon/lat (WGS 84) to Equal Earth metres.
_EQUAL_EARTH = Transformer.from_crs("EPSG:4326", "EPSG:8857", always_xy=True)
#: Deepest nesting of coordinate arrays (MultiPolygon: 4) and geometry collections walked.
_MAX_DEPTH = 8


class BodyTooLarge(HTTPException):
    """Raised while the body streams in once it passes the limit (FastAPI re-raises HTTPExceptions)."""

    slug = "limit-exceeded"

    def __init__(self, limit: int) -> None:
        super().__init__(413, body_limit_message(limit))


def body_limit_message(limit: int, length: int | None = None) -> str:
    size = f"of {length:,} bytes " if length is not None else ""
    return (
        f"the request body {size}exceeds the limit of {limit:,} bytes (limits.max_body_bytes); "
        "send fewer or simpler fields per request"
    )


class BodySizeLimit:
    """ASGI middleware: 413 problem details for a ``Content-Length`` above ``max_bytes`` (the body is
    never read), and for a streamed body once it passes ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            length = int(declared) if declared.isdigit() else None
            detail = body_limit_message(self.max_bytes, length) if length is not None else (
                f"invalid Content-Length header {declared[:40]!r}"
            )
            status = 413 if length is not None else 400
            response = problem(
                status, "The request exceeds a limit of this service" if status == 413 else "Bad request",
                detail, slug="limit-exceeded" if status == 413 else "bad-request",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except BodyTooLarge as error:  # raised where no handler turned it into a response
            if started:
                raise
            await problem(413, "The request exceeds a limit of this service", str(error.detail),
                          slug="limit-exceeded")(scope, receive, send)


def _positions(coordinates: Any, budget: int, depth: int = 0) -> int:
    """The number of positions in nested GeoJSON ``coordinates``, counting stops past ``budget``;
    malformed parts count nothing (the schema check reports them)."""
    if not isinstance(coordinates, list) or not coordinates or depth > _MAX_DEPTH:
        return 0
    if not isinstance(coordinates[0], list):
        return 1
    if not isinstance(coordinates[0][0] if coordinates[0] else None, list):  # a list of positions
        return len(coordinates)
    count = 0
    for part in coordinates:
        count += _positions(part, budget - count, depth + 1)
        if count > budget:
            break
    return count


def geometry_vertices(geometry: Any, budget: int, depth: int = 0) -> int:
    """The positions of a GeoJSON geometry object (geometry collections included), up to ``budget``."""
    if not isinstance(geometry, dict) or depth > _MAX_DEPTH:
        return 0
    if geometry.get("type") == "GeometryCollection":
        count = 0
        for member in geometry.get("geometries") or []:
            count += geometry_vertices(member, budget - count, depth + 1)
            if count > budget:
                break
        return count
    return _positions(geometry.get("coordinates"), budget)


def check_collection_limits(document: Any, limits: Limits) -> None:
    """LimitExceeded (413) for a FeatureCollection with more than ``max_features`` features or a
    feature whose geometry has more than ``max_vertices`` positions; checked on the raw JSON, before
    any geometry is built. Anything not shaped like a FeatureCollection passes (the schema check
    names it)."""
    if not isinstance(document, dict) or not isinstance(document.get("features"), list):
        return
    features = document["features"]
    if len(features) > limits.max_features:
        raise LimitExceeded(
            f"{len(features):,} features in one request; at most {limits.max_features:,} "
            "(limits.max_features): split the request"
        )
    for index, feature in enumerate(features):
        if not isinstance(feature, dict):
            continue
        count = geometry_vertices(feature.get("geometry"), limits.max_vertices)
        if count > limits.max_vertices:
            name = f" (id {feature['id']!r})" if isinstance(feature.get("id"), (str, int)) else ""
            raise LimitExceeded(
                f"feature {index}{name}: its geometry has more than {limits.max_vertices:,} vertices, the "
                f"vertex limit per geometry (limits.max_vertices); simplify it"
            )


def total_area_ha(geometries: Any) -> float:
    """The summed area, in hectares, of lon/lat polygonal geometries on the WGS 84 ellipsoid, measured
    in the Equal Earth projection (EPSG:8857, equal-area: within a fraction of a percent of the geodesic
    area for fields, and one vectorised call for any number of polygons)."""
    polygons = np.array([g for g in geometries if g is not None and g.geom_type in ("Polygon", "MultiPolygon")])
    if not len(polygons):
        return 0.0
    projected = shapely.transform(polygons, _to_equal_earth)
    return float(np.nansum(shapely.area(projected))) / 1e4


def _to_equal_earth(lonlat: np.ndarray) -> np.ndarray:
    x, y = _EQUAL_EARTH.transform(lonlat[:, 0], lonlat[:, 1])
    return np.column_stack([x, y])


def check_area_limit(geometries: Any, limits: Limits) -> float:
    """The total area (ha) of the fields; LimitExceeded (413) above ``max_area_ha``."""
    area = total_area_ha(geometries)
    if area > limits.max_area_ha:
        raise LimitExceeded(
            f"the fields cover {area:,.0f} ha; at most {limits.max_area_ha:,.0f} ha per request "
            "(limits.max_area_ha): split the request"
        )
    return area


class LargeRequests:
    """At most ``limits.large_requests`` request bodies over ``limits.large_body_bytes`` in work at once
    in this process; one more is refused at once (503 ``busy``, ``Retry-After``) rather than queued: a
    large body costs a tenth of a second or more of parsing with the GIL held, so a few clients posting
    them back to back would otherwise hold every request behind theirs. Used from the event loop only."""

    def __init__(self, limits: Limits) -> None:
        self.threshold = limits.large_body_bytes
        self.slots = limits.large_requests
        self.in_work = 0

    @contextmanager
    def admit(self, size: int) -> Iterator[None]:
        """Hold a slot for a body of ``size`` bytes while the block runs (none for a small body)."""
        if size <= self.threshold:
            yield
            return
        if self.in_work >= self.slots:
            raise Busy(
                f"this server process is already working on {self.in_work} request(s) over "
                f"{self.threshold:,} bytes (limits.large_body_bytes; at most limits.large_requests = "
                f"{self.slots} at once): retry in a second, or send fewer fields per request",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.in_work += 1
        try:
            yield
        finally:
            self.in_work -= 1

