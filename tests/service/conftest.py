"""Fixtures of the service tests: one demo cache per test session (the demo scene is synthesised once),
settings that never touch ~/.cache, and a ready TestClient of the default app."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.demo import ensure_demo_scene
from service.settings import Settings

READY_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def service_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder for the session, the demo scene already in it."""
    folder = tmp_path_factory.mktemp("cropstar-cache")
    ensure_demo_scene(folder)
    return folder


@pytest.fixture(scope="session")
def demo_fields(service_cache_dir: Path) -> dict[str, Any]:
    """The demo scene's fields (RFC 7946 FeatureCollection, with their true crops)."""
    return json.loads((ensure_demo_scene(service_cache_dir) / "fields.geojson").read_text())


@pytest.fixture
def service_settings(service_cache_dir: Path, tmp_path: Path) -> Any:
    """``make(**values)``: settings on the session's cache and a fresh work folder."""

    def make(**values: Any) -> Settings:
        return Settings(**{"cache_dir": service_cache_dir, "work_dir": tmp_path / "work", **values})

    return make


def wait_ready(client: Any, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll /ready until 200 (AssertionError with its last answer after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/ready")
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, f"not ready after {timeout} s: {response.text}"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def service_client(tmp_path_factory: pytest.TempPathFactory, service_cache_dir: Path) -> Iterator[TestClient]:
    """A TestClient of the default app (packaged model over the demo scene), ready."""
    settings = Settings(cache_dir=service_cache_dir, work_dir=tmp_path_factory.mktemp("work"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the start-up precomputation, robust to a busy machine (and restored)
    try:
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            torch.set_num_threads(threads)
            yield client
    finally:
        torch.set_num_threads(threads)
