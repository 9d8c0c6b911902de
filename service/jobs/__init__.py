"""Long-running service work as OGC API – Processes jobs (DESIGN.md "Conventions of the field"):
a SQLite job store (:mod:`.store`), background runners (:mod:`.runner`), the processes
``classify-raster`` and ``retrain`` (:mod:`.processes`) and their REST door (:mod:`.router`).

:class:`Jobs` ties them together for one service process::

    jobs = Jobs.from_settings(settings)
    app.include_router(make_router(jobs, write_dependencies=[...]))   # the API key check
    jobs.start()   # in the app's lifespan; jobs.stop() at shutdown (running jobs resume at the next start)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.jobs.processes import PROCESSES, JobsConfig, Process, Processes
from service.jobs.runner import Cancelled, Interrupted, JobControl, JobRunner
from service.jobs.store import FINISHED, STATUSES, Job, JobStore

__all__ = [
    "FINISHED",
    "PROCESSES",
    "STATUSES",
    "Cancelled",
    "Interrupted",
    "Job",
    "JobControl",
    "JobRunner",
    "JobStore",
    "Jobs",
    "JobsConfig",
    "Process",
    "Processes",
]

#: The job store's file name in the service's work folder.
STORE_FILE = "jobs.sqlite"


class Jobs:
    """The jobs of one service process: the store, the processes and a runner of ``workers`` threads
    (``runner_options``: see :class:`JobRunner`)."""

    def __init__(
        self, store: JobStore, processes: Processes, workers: int = 1, **runner_options: Any
    ) -> None:
        self.store, self.processes = store, processes
        self.runner = JobRunner(
            store, processes.execute, workers, processes=processes.ids(), cleanup=processes.remove,
            **runner_options,
        )  # fmt: skip

    @classmethod
    def from_settings(cls, settings: Any, **config: Any) -> Jobs:
        """Jobs configured from the service's settings (:meth:`JobsConfig.from_settings`; ``config``
        overrides its fields): the store ``<work folder>/jobs.sqlite`` (or ``settings.jobs_db``), the
        job folders beside it in ``jobs/``, ``settings.jobs_workers`` threads (default 1)."""
        jobs_config = JobsConfig.from_settings(settings, **config)
        db = getattr(settings, "jobs_db", None) or jobs_config.work_dir.parent / STORE_FILE
        workers = getattr(settings, "jobs_workers", None) or 1
        return cls(JobStore(Path(db)), Processes(jobs_config), workers)

    def start(self) -> None:
        """Resume interrupted jobs and start running queued ones."""
        self.runner.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop running jobs; those still running go back to the queue, to resume at the next start."""
        return self.runner.stop(timeout)

    def submit(self, process_id: str, inputs: dict[str, Any]) -> Job:
        """Queue a job of ``process_id`` (InputError for bad inputs, KeyError for an unknown process)."""
        checked = self.processes.check(process_id, inputs)
        job = self.store.create(process_id, checked)
        self.runner.wake()
        return job

    def dismiss(self, job_id: str) -> Job | None:
        """Dismiss the job: stop it if it runs, remove its files; None when there is no such job."""
        dismissed = self.store.dismiss(job_id)
        if dismissed is None:
            return None
        job, _ = dismissed
        self.runner.cancel(job_id)
        self.processes.remove(job)
        return job
