"""The map page (``/viewer/``; ``/`` leads there): one HTML page, its script and style sheet, served
from the package (``service/viewer/``) — no CDN, no map tiles from elsewhere: everything it shows comes
from this service's REST API (the class map pictures of ``service.routers.maps``, the fields'
predictions, the jobs, the model card)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parent.parent / "viewer"


def install_viewer(app: FastAPI) -> None:
    """Serve the map page at ``/viewer/`` and its files at ``/viewer/static/``, and send ``/`` there."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/viewer/")

    @router.get("/viewer/")
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    app.include_router(router)
    app.mount("/viewer/static", StaticFiles(directory=PAGE_DIR), name="viewer-static")
