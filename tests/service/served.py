"""``cropstar serve`` as users run it, for the tests that talk to a real server: a uvicorn process on
a free loopback port, configured only through the environment, importing this checkout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

START_TIMEOUT_S = 120
#: The checkout under test: subprocesses import it, whatever else is installed.
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment() -> dict[str, str]:
    """This environment without CROPSTAR_ settings, importing this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPSTAR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def serve(cache_dir: Path, work: Path) -> Iterator[str]:
    """The base URL of ``cropstar serve`` running with no settings but ``cache_dir`` and a work folder
    in ``work`` (its log in ``work/server.log``), ready; stopped on exit."""
    port = free_port()
    env = environment()
    env.update(CROPSTAR_CACHE_DIR=str(cache_dir), CROPSTAR_WORK_DIR=str(work / "work"), CROPSTAR_TORCH_THREADS="1")
    log = (work / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "cropstar.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            assert process.poll() is None, f"cropstar serve exited: {(work / 'server.log').read_text()}"
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in {START_TIMEOUT_S} s: {(work / 'server.log').read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
