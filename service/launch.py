"""``cropstar serve`` in a child process on a free loopback port, as users run it, for the tools that
talk to a real server (the load benchmark, the over-the-wire and browser tests): started, waited for
until ``/ready`` answers 200, and stopped (terminated, killed if it lingers) on leaving."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx


class ServerNotReady(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log."""


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_in_background(
    env: Mapping[str, str], log: Path, *, workers: int | None = None, timeout: float = 180.0, cwd: Path | None = None
) -> Iterator[str]:
    """The base URL of ``cropstar serve`` (``--workers`` if given) started with ``env``, its output in
    ``log``, once ready; :class:`ServerNotReady` with the log if it exits or is not ready in ``timeout`` s."""
    port = free_port()
    command = [sys.executable, "-m", "cropstar.cli", "serve", "--port", str(port), "--log-level", "warning"]
    if workers is not None:
        command += ["--workers", str(workers)]
    with log.open("w") as output:
        process = subprocess.Popen(command, env=dict(env), stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise ServerNotReady(f"cropstar serve exited: {log.read_text()}")
                try:
                    if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerNotReady(f"cropstar serve was not ready in {timeout:g} s: {log.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
