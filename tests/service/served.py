"""``cropstar serve`` as users run it, for the tests that talk to a real server
(:func:`service.launch.serve_in_background`), configured only through the environment and importing
this checkout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.launch import serve_in_background

START_TIMEOUT_S = 120
#: The checkout under test: subprocesses import it, whatever else is installed.
REPO = Path(__file__).resolve().parents[2]


def environment() -> dict[str, str]:
    """This environment without CROPSTAR_ settings, importing this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPSTAR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def serve(cache_dir: Path, work: Path) -> Iterator[str]:
    """The base URL of ``cropstar serve`` running with no settings but ``cache_dir`` and a work folder
    in ``work`` (its log in ``work/server.log``), ready; stopped on exit."""
    env = environment()
    env.update(CROPSTAR_CACHE_DIR=str(cache_dir), CROPSTAR_WORK_DIR=str(work / "work"), CROPSTAR_TORCH_THREADS="1")
    with serve_in_background(env, work / "server.log", timeout=START_TIMEOUT_S, cwd=work) as url:
        yield url
