"""Prometheus metrics of one app (``GET /metrics``): requests and their latency by route template and
status, fields classified by status, and the time spent running models. Each app owns its registry
(no process-wide collectors), so several apps (tests, workers) never share counts."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The route label of requests that match no route (unknown paths would make unbounded labels).
UNMATCHED = "unmatched"


class ServiceMetrics:
    """The collectors of one app, in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cropstar_http_requests", "HTTP requests, by method, route template and status code.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "cropstar_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status code.",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge("cropstar_http_requests_in_flight", "HTTP requests being answered.",
                               registry=self.registry)
        self.fields = Counter(
            "cropstar_fields_classified", "Fields answered by fields:classify, by status (ok, outside_cube, …).",
            ["status"], registry=self.registry,
        )
        self.series = Counter("cropstar_series_classified", "Samples answered by series:classify.",
                              registry=self.registry)
        self.inference = Histogram(
            "cropstar_model_inference_seconds",
            "Time spent running a model: 'map' precomputes a source's pixel probabilities, 'fields' reads "
            "pixels around a request's fields, 'series' classifies posted series.",
            ["model", "kind"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_label(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that answered (or would answer) the request, else :data:`UNMATCHED`."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL and hasattr(candidate, "path"):
            return str(candidate.path)
    return UNMATCHED


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request (errors and refusals included) into ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recorded)
        finally:
            self.metrics.in_flight.dec()
            route, method = route_label(scope, self.routes), scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route, str(status)).observe(time.perf_counter() - started)
