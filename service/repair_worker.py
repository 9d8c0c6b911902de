"""Geometry repair with a time budget: a request's invalid field polygons are repaired in a worker
process, all of them within ``limits.repair_seconds``. Repair cost grows much faster than a ring's
vertices where it crosses itself often (a ring of a few hundred random vertices takes seconds), so a small
body could otherwise hold a CPU for minutes; past the budget the worker is stopped (and started again
for the next request) and the features not yet repaired come back ``invalid_geometry``, saying why.
The worker runs at a lower CPU priority than the service: a burst of costly repairs slows repairs (which
then meet their budget sooner), not the requests that need none.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import shapely

#: Seconds to wait for a killed worker process to be gone.
_STOP_SECONDS = 2.0
#: How much nicer (lower CPU priority) the worker is than the service process.
NICENESS = 10
#: What a worker sends once it can repair (until then a batch sent to it would block the sender).
READY = "ready"


def _serve(connection: Connection) -> None:
    """The worker's loop: for each list of WKB geometries received, one answer per geometry as it is
    done (the repaired geometry's WKB, or None)."""
    from cropstar.data.polygon_repair import repair_polygon

    if hasattr(os, "nice"):  # POSIX
        os.nice(NICENESS)
    connection.send(READY)  # the imports are done: a batch sent now is read at once
    while True:
        try:
            batch = connection.recv()
        except EOFError:
            return
        for wkb in batch:
            repaired = repair_polygon(shapely.from_wkb(wkb))
            connection.send(None if repaired is None else shapely.to_wkb(repaired))


class RepairWorker:
    """Repairs invalid polygons in a worker process (:data:`cropstar.data.fields.Repair`), each call's
    within ``seconds``; one call at a time (a call waiting for another spends its own budget)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._ready = False

    def start(self, wait: float = 0.0) -> None:
        """Start the worker process now (else at the first repair) and wait up to ``wait`` seconds for
        it to be ready (its imports take a moment; a repair meanwhile waits within its budget)."""
        with self._lock:
            connection = self._ensure_started()
            if not self._ready and connection.poll(wait):
                self._ready = connection.recv() == READY

    def _ensure_started(self) -> Connection:
        if self._process is None or not self._process.is_alive() or self._connection is None:
            context = multiprocessing.get_context("spawn")
            ours, theirs = context.Pipe()
            self._process = context.Process(target=_serve, args=(theirs,), name="cropstar-repair", daemon=True)
            self._process.start()
            theirs.close()
            self._connection, self._ready = ours, False
        return self._connection

    def stop(self) -> None:
        """Stop the worker process (a later repair starts another)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is not None:
            process.kill()
            process.join(_STOP_SECONDS)

    def __call__(self, geometries: list[shapely.Geometry]) -> list[shapely.Geometry | str | None]:
        deadline = time.monotonic() + self.seconds
        out: list[shapely.Geometry | str | None] = []
        late = f"was not repaired: one request's repairs may take {self.seconds:g} s (limits.repair_seconds)"
        if not self._lock.acquire(timeout=self.seconds):
            return [late] * len(geometries)
        try:
            connection = self._ensure_started()
            if not self._ready:  # still starting (its imports): waited for within the budget
                if not connection.poll(max(0.0, deadline - time.monotonic())):
                    return [late] * len(geometries)
                self._ready = connection.recv() == READY
            connection.send([shapely.to_wkb(g) for g in geometries])
            for _ in geometries:
                if not connection.poll(max(0.0, deadline - time.monotonic())):
                    self._stop()  # still at work on a costly ring: stopped, not waited for
                    self._ensure_started()  # the next request need not wait for a new one to start
                    break
                answer = connection.recv()
                out.append(None if answer is None else shapely.from_wkb(answer))
        except (OSError, EOFError):  # the worker died (killed from outside, out of memory)
            self._stop()
            late = "was not repaired: the repair worker stopped (the service log may say why)"
        finally:
            self._lock.release()
        return out + [late] * (len(geometries) - len(out))
