"""The API docs pages work offline: Swagger UI (/docs) and ReDoc (/redoc) reference only URLs of the app
itself (scripts, styles, favicon, the OpenAPI document, the OAuth2 redirect page), and each of them
answers from the app with the right content type — also behind a proxy prefix (``root_path``)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import fastapi_offline
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.docs import install_docs
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]

PAGES = ("/docs", "/redoc")
ROOT_PATH = "/cropstar"
#: The content type each kind of reference must be answered with, and the least body it must have.
EXPECTED = {
    "script": (("text/javascript", "application/javascript"), 100_000),
    "stylesheet": (("text/css",), 10_000),
    "icon": (("image/",), 100),
    "openapi": (("application/json",), 1_000),
    "oauth2-redirect": (("text/html",), 500),
}
#: URLs in a page's inline script: Swagger UI's OpenAPI document and its OAuth2 redirect page.
_SCRIPT_URLS = (
    ("openapi", re.compile(r"""\burl:\s*['"]([^'"]+)['"]""")),
    ("oauth2-redirect", re.compile(r"""oauth2RedirectUrl:\s*window\.location\.origin\s*\+\s*['"]([^'"]+)""")),
)
_ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s'"<>)]+""")


class _References(HTMLParser):
    """The (kind, URL) pairs an HTML page loads: script src, link href, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and values.get("src"):
            self.found.append(("script", values["src"]))
        elif tag == "link" and values.get("href"):
            kind = "stylesheet" if "stylesheet" in values.get("rel", "") else "icon"
            self.found.append((kind, values["href"]))
        elif tag == "redoc" and values.get("spec-url"):
            self.found.append(("openapi", values["spec-url"]))


def references(html: str) -> list[tuple[str, str]]:
    """Every (kind, URL) the page loads, from its tags and its inline script."""
    parser = _References()
    parser.feed(html)
    found = parser.found + [(kind, url) for kind, pattern in _SCRIPT_URLS for url in pattern.findall(html)]
    return sorted(set(found))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The default app, never started (the docs need neither a model nor data)."""
    folder = tmp_path_factory.mktemp("docs")
    return create_app(Settings(cache_dir=folder / "cache", work_dir=folder / "work", preload=False))


def check_offline(client: TestClient, page: str, prefix: str = "") -> list[tuple[str, str]]:
    """Load ``page`` and every URL it references from ``client``; assert each is the app's own (under
    ``prefix``) and answers 200 with the expected content type and a real body. The references."""
    response = client.get(prefix + page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    external = [url for url in _ABSOLUTE_URL.findall(html) if urlsplit(url).netloc != "testserver"]
    assert not external, f"{page} references other hosts: {external}"
    found = references(html)
    for kind, url in found:
        own = url.startswith(prefix + "/") and not url.startswith("//")
        assert own, f"{page}: {kind} {url} is not the app's"
        answer = client.get(url)
        assert answer.status_code == 200, f"{page}: {kind} {url} answered {answer.status_code}"
        types, least = EXPECTED[kind]
        assert answer.headers["content-type"].startswith(types), (
            f"{page}: {kind} {url} is {answer.headers['content-type']}, expected {types}"
        )
        assert len(answer.content) >= least, f"{page}: {kind} {url} has only {len(answer.content)} bytes"
    return found


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_load_only_the_apps_own_assets(app: FastAPI, page: str) -> None:
    found = check_offline(TestClient(app), page)
    kinds = {kind for kind, _ in found}
    assert {"script", "icon", "openapi"} <= kinds
    if page == "/docs":
        assert {"stylesheet", "oauth2-redirect"} <= kinds
        assert ("openapi", "/openapi.json") in found


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_work_behind_a_proxy_prefix(app: FastAPI, page: str) -> None:
    found = check_offline(TestClient(app, root_path=ROOT_PATH), page, prefix=ROOT_PATH)
    assert ("openapi", f"{ROOT_PATH}/openapi.json") in found


def test_docs_pages_are_not_in_the_openapi_document(app: FastAPI) -> None:
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


def test_install_docs_refuses_an_app_with_fastapis_cdn_pages() -> None:
    with pytest.raises(ValueError, match="docs_url=None and redoc_url=None, got '/docs' and '/redoc'"):
        install_docs(FastAPI())


def test_an_unknown_asset_is_a_problem_404(app: FastAPI) -> None:
    response = TestClient(app).get("/docs/assets/nothing.js")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_the_assets_are_the_installed_packages_files(app: FastAPI) -> None:
    static = Path(fastapi_offline.__file__).parent / "static"
    served = TestClient(app).get("/docs/assets/swagger-ui.css").content
    assert served == (static / "swagger-ui.css").read_bytes()


def test_the_error_table_of_the_docs_is_the_code_s() -> None:
    """Every problem type the code can answer is in docs/rest-api.md's table under its status, and
    every type the table names is one the code answers."""
    from service.errors import (  # service.app, imported above, loads every router
        CROPSTAR_ERRORS,
        ServiceError,
    )

    def subclasses(kind: type) -> list[type]:
        return [kind, *(sub for direct in kind.__subclasses__() for sub in subclasses(direct))]

    coded = {(cls.status, cls.slug) for cls in subclasses(ServiceError)}
    coded |= {(status, slug) for status, slug, _ in CROPSTAR_ERRORS.values()}
    coded |= {(500, "bug"), (503, "not-ready")}  # made by the handlers and the health route
    text = (REPO_ROOT / "docs" / "rest-api.md").read_text()
    table = text[text.index("| status | `type` (`urn:cropstar:problem:…`) | when |"):].split("\n\n")[0]
    documented = set()
    for row in table.splitlines()[2:]:
        status, types = row.split("|")[1:3]
        documented |= {(int(status), slug) for slug in re.findall(r"`([a-z-]+)`", types) if slug != "about"}
    documented -= {(404, "about:blank"), (405, "about:blank")}
    assert coded - documented == set(), "answered but not documented"
    assert documented - coded == set(), "documented but never answered"
