"""The app factory: :func:`create_app` builds a FastAPI app from :class:`Settings` — routers
made by factories with the app's state and settings injected, problem-details errors, the body-size
limit, Prometheus metrics, optional CORS, API docs that work offline (``service.docs``) — and a lifespan
that checks the configuration, then loads the default model and the data sources in the background
(``/ready`` says when) and starts the job runner.

``uvicorn --factory service.app:app_from_environment`` (what ``cropstar serve`` runs) builds it from
the environment and ``CROPSTAR_CONFIG``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cropstar import __version__
from cropstar.errors import InputError
from service.docs import install_docs
from service.errors import NotFound, install_problem_handlers
from service.jobs import Jobs
from service.jobs.router import make_router as make_jobs_router
from service.limits import BodySizeLimit
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.openapi import install_openapi
from service.routers import fields, health, maps, models, series
from service.routers.viewer import install_viewer
from service.security import read_dependencies, require_scope
from service.settings import Settings, load_settings
from service.state import AppState

#: Builds an extra router from the app's settings and state (included as given: give it its prefix).
RouterFactory = Callable[[Settings, AppState], APIRouter]
_log = logging.getLogger("cropstar.service")

DESCRIPTION = """\
Crop classification from Sentinel-2 time series with deep STAR recurrent networks.

Post field polygons (GeoJSON) to `/v1/fields:classify` and get each field's crop back as GeoJSON;
post your own time series to `/v1/series:classify`; list models and their cards under `/v1/models`;
run raster classification and retraining as jobs (OGC API – Processes) under `/v1/processes` and
`/v1/jobs`. Errors are RFC 9457 problem details (`application/problem+json`). Endpoints that change
things need an `X-API-Key`.
"""
TAGS = [
    {"name": "fields", "description": "Field-level crop predictions (GeoJSON)."},
    {"name": "series", "description": "Predictions for posted time series."},
    {"name": "models", "description": "The models requests may name, their cards, promotion."},
    {"name": "maps", "description": "The data sources and their class maps (descriptions, PNG pictures)."},
    {"name": "jobs", "description": "Long-running work after OGC API – Processes."},
    {"name": "health", "description": "Liveness, readiness, Prometheus metrics."},
]


def create_app(settings: Settings | None = None, *, extra_routers: Sequence[RouterFactory] = ()) -> FastAPI:
    """The service app for ``settings`` (default: the defaults — the packaged model over the demo
    scene). ``extra_routers`` are included after the built-in ones."""
    settings = settings if settings is not None else Settings()
    metrics = ServiceMetrics()
    state = AppState(settings, metrics)
    jobs = Jobs.from_settings(settings, resolve_source=state.source_path, resolve_model=_job_model(state))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
        state.check()  # a broken configuration stops the start, naming the problem
        settings.scratch_dir.mkdir(parents=True, exist_ok=True)
        loading = asyncio.create_task(asyncio.to_thread(state.preload)) if settings.preload else None
        if not settings.preload:
            state.ready = True
        jobs.start()
        await asyncio.to_thread(state.repair.start, 30.0)
        try:
            yield
        finally:
            await asyncio.to_thread(jobs.stop)
            state.repair.stop()
            gc.unfreeze()  # what preload froze may be collected again
            if loading is not None and not loading.done():
                await asyncio.shield(loading)

    app = FastAPI(
        title="cropstar", version=__version__, description=DESCRIPTION, openapi_tags=TAGS, lifespan=lifespan,
        docs_url=None, redoc_url=None,  # install_docs serves them from the package, not a CDN
    )
    app.state.settings, app.state.service, app.state.jobs = settings, state, jobs
    install_problem_handlers(app)
    install_openapi(app)
    install_docs(app)
    app.include_router(fields.make_router(settings, state))
    app.include_router(series.make_router(settings, state))
    app.include_router(models.make_router(settings, state))
    app.include_router(
        make_jobs_router(
            jobs, write_dependencies=[Depends(require_scope(settings, "jobs"))],
            read_dependencies=read_dependencies(settings),
        )
    )  # fmt: skip
    app.include_router(maps.make_router(settings, state, jobs))
    for make in extra_routers:
        app.include_router(make(settings, state))
    app.include_router(health.make_router(state))
    install_viewer(app)

    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key"],
        )  # fmt: skip
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def _job_model(state: AppState) -> Callable[[str | None], tuple[str, Any]]:
    """The jobs' model look-up: (canonical id, artifact folder) of a model id (None: the default)."""

    def resolve(model_id: str | None) -> tuple[str, Any]:
        try:
            entry = state.resolve_model(model_id)
        except NotFound as error:  # a job's input, not the request's resource: 422 (docs/rest-api.md)
            raise InputError(f"input model: {error.detail}") from None
        return entry.id, entry.path

    return resolve


def app_from_environment() -> FastAPI:
    """The app configured by ``CROPSTAR_*`` environment variables and ``CROPSTAR_CONFIG``
    (``uvicorn --factory service.app:app_from_environment``)."""
    return create_app(load_settings())
