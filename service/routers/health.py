"""``/health`` (the process answers), ``/ready`` (models and data sources loaded) and ``/metrics``
(Prometheus text format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from cropstar import __version__
from service.errors import problem, problem_responses
from service.schemas import Health, Ready
from service.state import AppState


def make_router(state: AppState) -> APIRouter:
    """The health routes (never keyed: probes and scrapers carry no key)."""
    router = APIRouter(tags=["health"])

    @router.get("/health", operation_id="health", summary="Liveness", response_model=Health,
                description="200 while the process answers requests.")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @router.get(
        "/ready", operation_id="ready", summary="Readiness", response_model=Ready,
        description="200 once the default model and every data source are loaded (and the default model's "
        "pixel probabilities precomputed over the in-memory sources); 503 problem details before, or when "
        "loading failed (naming why).",
        responses=problem_responses(503),
    )  # fmt: skip
    def ready() -> Any:
        status = state.status()
        if not state.ready:
            detail = f"loading failed: {state.problem}" if state.problem else "still loading models and data sources"
            return problem(503, "Not ready", detail, slug="not-ready", **{k: v for k, v in status.items() if k != "ready"})
        return {"status": "ready", **{k: status[k] for k in ("models_loaded", "data_sources", "probability_maps")}}

    @router.get(
        "/metrics", operation_id="metrics", summary="Prometheus metrics",
        description="Requests and latency by route and status, fields classified by status, model "
        "inference seconds (Prometheus text exposition format).",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )  # fmt: skip
    def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=state.metrics.content_type)

    return router
