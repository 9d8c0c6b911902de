"""The API docs pages, offline: Swagger UI at ``/docs`` and ReDoc at ``/redoc`` load their scripts, styles
and favicon from the app itself (``/docs/assets``, the static files of the installed ``fastapi-offline``
package) instead of FastAPI's default CDN, so they work without internet. Every URL carries the request's
``root_path`` (a service behind a proxy prefix), as FastAPI's own pages do.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
#: Where the pages' assets are served: the package's ``static`` folder.
ASSETS_URL = "/docs/assets"
#: The (package, folder) whose files are served under :data:`ASSETS_URL`.
ASSETS_PACKAGE = ("fastapi_offline", "static")
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = (
    "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png",
)  # fmt: skip


def _root(request: Request) -> str:
    """The prefix the app is served under (the ASGI ``root_path``, without its trailing slash)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def install_docs(app: FastAPI) -> None:
    """Add Swagger UI (with its OAuth2 redirect page), ReDoc and their assets to ``app``, which must be
    built with ``docs_url=None`` and ``redoc_url=None`` (else FastAPI adds its CDN pages first)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError(
            f"build the app with docs_url=None and redoc_url=None, got {app.docs_url!r} and {app.redoc_url!r}"
        )
    if app.openapi_url is None:
        return
    openapi_url, oauth2_redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False, response_class=HTMLResponse)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters,
        )  # fmt: skip

    if oauth2_redirect_url:

        @app.get(oauth2_redirect_url, include_in_schema=False, response_class=HTMLResponse)
        async def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False, response_class=HTMLResponse)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}", redoc_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,
        )  # fmt: skip
