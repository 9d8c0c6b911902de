"""Running the jobs of a :class:`~service.jobs.store.JobStore` in background threads (OGC API –
Processes asynchronous execution), with progress, cooperative cancellation and graceful stops.

A worker thread claims the oldest accepted job and calls ``execute(job, control)``, which returns the
job's outputs (JSON). The work reports through ``control.report(percent, message)`` — the processes
turn the library's progress callbacks into it — and that is where it is stopped: ``report`` raises

- :class:`Cancelled` once the job was dismissed (``DELETE /jobs/{id}``, in this process or another);
  the runner then removes the job's files (``cleanup``), as it does once a job has failed (nothing
  resumes a failed job, so its unfinished work is kept only while a retry is possible);
- :class:`Interrupted` once the runner is stopping; the job goes back to the queue (accepted) and the
  next start resumes it from what it finished;
- :class:`Lost` when the store gave the job to another runner (this one had stalled past the lease).

A heartbeat thread marks the running jobs alive; at start and then every ``recover_every`` seconds
the runner hands back jobs of dead runners (:meth:`JobStore.recover`), so a job interrupted by a crash
of one service process is resumed by a live one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cropstar.errors import CropstarError
from service.jobs.store import MAX_ATTEMPTS, Job, JobStore, new_owner

log = logging.getLogger(__name__)

#: The message of a successful job.
FINISHED_MESSAGE = "finished"
#: The message of a job handed back to the queue by a graceful stop.
STOPPED = "interrupted by a service stop; resumes at the next start"


class JobStopped(Exception):
    """Raised inside a job's work (from its progress report) to stop it; never a failure of the job."""


class Cancelled(JobStopped):
    """The job was dismissed: stop and drop its files."""


class Interrupted(JobStopped):
    """The runner is stopping: leave the job to be resumed."""


class Lost(JobStopped):
    """Another runner holds the job now: stop without touching it."""


@dataclass
class JobControl:
    """What a job's work sees of its runner: the job, and :meth:`report` for progress (which stops
    the work by raising a :class:`JobStopped`). Writes to the store are throttled to one per
    ``min_interval`` seconds unless the percentage changes."""

    job: Job
    store: JobStore
    owner: str
    stopping: threading.Event
    cancelled: threading.Event = field(default_factory=threading.Event)
    min_interval: float = 1.0
    _last: tuple[int, float] = (-1, 0.0)

    def check(self) -> None:
        """Raise :class:`Cancelled` or :class:`Interrupted` when the job must stop."""
        if self.cancelled.is_set():
            raise Cancelled(self.job.id)
        if self.stopping.is_set():
            raise Interrupted(self.job.id)

    def report(self, percent: float, message: str | None = None) -> None:
        """Record progress (0–100) and a message; raises :class:`JobStopped` when the job must stop."""
        self.check()
        percent = max(0, min(100, int(percent)))
        if percent == self._last[0] and time.monotonic() - self._last[1] < self.min_interval:
            return
        self._last = (percent, time.monotonic())
        if not self.store.update_progress(self.job.id, self.owner, percent, message):
            now = self.store.get(self.job.id)
            if now is None or now.status == "dismissed":
                raise Cancelled(self.job.id)
            raise Lost(self.job.id)


#: ``execute(job, control) -> outputs``: the work of one job (see :mod:`service.jobs.processes`).
Execute = Callable[[Job, JobControl], dict[str, Any]]
#: ``cleanup(job)``: remove what a dismissed or failed job left behind.
Cleanup = Callable[[Job], None]


class JobRunner:
    """``workers`` threads running the jobs of ``store`` with ``execute`` (module docstring).

    ``poll``: seconds between looks at the queue when idle (:meth:`wake` looks at once);
    ``heartbeat`` / ``stale_after``: how often running jobs are marked alive, and after how long
    without a mark another runner takes them over; ``max_attempts``: starts of a crashed job before it
    fails; ``cleanup``: called with a job that was dismissed while it ran, or that failed.
    """

    def __init__(
        self,
        store: JobStore,
        execute: Execute,
        workers: int = 1,
        *,
        processes: list[str] | None = None,
        cleanup: Cleanup | None = None,
        poll: float = 2.0,
        heartbeat: float = 5.0,
        stale_after: float = 60.0,
        recover_every: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a job runner needs at least one worker, got {workers}")
        self.store, self.execute, self.workers = store, execute, workers
        self.processes, self.cleanup = processes, cleanup
        self.poll, self.heartbeat, self.stale_after = poll, heartbeat, stale_after
        self.recover_every, self.max_attempts = recover_every, max_attempts
        self.owner = new_owner()
        self._stopping = threading.Event()
        self._wakeup = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, JobControl] = {}
        self._lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        """Hand back the jobs of dead runners, then start the worker and heartbeat threads."""
        if self.started:
            return
        self._stopping.clear()
        self.recover()
        self._threads = [
            threading.Thread(target=self._work, name=f"cropstar-job-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        self._threads.append(threading.Thread(target=self._beat, name="cropstar-job-heartbeat", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop gracefully: running jobs stop at their next progress report and go back to the queue.
        Waits up to ``timeout`` seconds in all (not for the calling thread, when a job stops its own
        runner); True when every thread ended."""
        self._stopping.set()
        self.wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads if t is not threading.current_thread())

    def wake(self) -> None:
        """Look at the queue now (after a job was created)."""
        with self._wakeup:
            self._wakeup.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Stop the job ``job_id`` at its next report if it runs here (it should be dismissed in the
        store first; other processes' runners learn it from the store)."""
        with self._lock:
            control = self._running.get(job_id)
        if control is not None:
            control.cancelled.set()
        return control is not None

    def running(self) -> list[str]:
        """The ids of the jobs running in this runner."""
        with self._lock:
            return list(self._running)

    def recover(self) -> list[Job]:
        """Hand back the running jobs of dead runners (:meth:`JobStore.recover`)."""
        recovered = self.store.recover(stale_after=self.stale_after, max_attempts=self.max_attempts)
        for job in recovered:
            log.warning("job %s (%s) %s", job.id, job.process, job.message)
            if job.status == "failed":  # started too often: it will not be resumed
                self._cleanup(job)
        return recovered

    # ---- threads ----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim_next(self.owner, self.processes)
            except Exception:  # the store is unreachable for a moment (a locked or full disk)
                log.exception("cannot claim a job")
                job = None
            if job is None:
                with self._wakeup:
                    if not self._stopping.is_set():
                        self._wakeup.wait(self.poll)
                continue
            try:
                self._run(job)
            except Exception:  # the store failed; the job's heartbeat stops, so recover() resumes it later
                log.exception("cannot record the end of job %s", job.id)

    def _run(self, job: Job) -> None:
        control = JobControl(job, self.store, self.owner, self._stopping)
        with self._lock:
            self._running[job.id] = control
        try:
            outputs = self.execute(job, control)
        except Cancelled:
            log.info("job %s was dismissed while running", job.id)
            self._cleanup(job)
        except Interrupted:
            self.store.release(job.id, self.owner, STOPPED)
        except Lost:
            log.warning("job %s was handed to another runner; this one stops it", job.id)
        except CropstarError as error:
            self._end(job, "failed", message=str(error))
        except Exception as error:
            if self._dismissed(job.id):  # its files were removed under it
                self._cleanup(job)
                return
            log.exception("job %s (%s) failed", job.id, job.process)  # a bug: the service stays up
            self._end(job, "failed", message=f"internal error: {type(error).__name__}: {error}")
        else:
            self._end(job, "successful", outputs=outputs, message=FINISHED_MESSAGE)
        finally:
            with self._lock:
                self._running.pop(job.id, None)

    def _end(self, job: Job, status: str, **result: Any) -> None:
        recorded = self.store.finish(job.id, self.owner, status, **result)
        if (recorded and status == "failed") or (not recorded and self._dismissed(job.id)):
            self._cleanup(job)  # failed for good, or dismissed after its last report

    def _dismissed(self, job_id: str) -> bool:
        now = self.store.get(job_id)
        return now is None or now.status == "dismissed"

    def _cleanup(self, job: Job) -> None:
        if self.cleanup is None:
            return
        try:
            self.cleanup(job)
        except Exception:
            log.exception("cannot remove the files of job %s", job.id)

    def _beat(self) -> None:
        last_recovery = time.monotonic()
        while not self._stopping.wait(self.heartbeat):
            try:
                self.store.heartbeat(self.owner, self.running())
                if time.monotonic() - last_recovery >= self.recover_every:
                    last_recovery = time.monotonic()
                    if self.recover():
                        self.wake()
            except Exception:
                log.exception("job heartbeat failed")
