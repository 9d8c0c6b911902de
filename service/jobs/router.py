"""The REST door of the jobs (OGC API – Processes – Part 1: Core, asynchronous execution):

    GET    /processes                      the process list
    GET    /processes/{id}                 a process description
    POST   /processes/{id}/execution       a new job: 201, Location /jobs/{jobId}, its statusInfo
    GET    /jobs                           the jobs (filters processID, status; limit / offset)
    GET    /jobs/{id}                      a job's statusInfo
    GET    /jobs/{id}/results              its results document (404 result-not-ready until successful)
    GET    /jobs/{id}/results/{output}     one output: a file (the class map, a run's log …) or a value
    DELETE /jobs/{id}                      dismiss: stops a running job, removes its files

Endpoints parse, call :class:`~service.jobs.Jobs` and format; errors are problem details
(:mod:`service.errors`), with the OGC exception types for unknown processes and jobs and for results
that are not ready.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Depends, Query, Request, Response, params
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidParameters, NotFound, problem_responses
from service.jobs import Jobs
from service.jobs.processes import OUTPUT_FILE_TYPES
from service.jobs.store import Job
from service.json_body import body_schema, json_body
from service.paths import without_server_paths

OGC_EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
OGC_RESULTS_REL = "http://www.opengis.net/def/rel/ogc/1.0/results"
OGC_EXECUTE_REL = "http://www.opengis.net/def/rel/ogc/1.0/execute"
OGC_JOB_LIST_REL = "http://www.opengis.net/def/rel/ogc/1.0/job-list"
JSON = "application/json"
YAML = "application/yaml"
#: OGC's statusCode.
StatusCode = Literal["accepted", "running", "successful", "failed", "dismissed"]


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
class NoSuchProcess(NotFound):
    slug, title = "no-such-process", "No such process"

    def __init__(self, process_id: str, known: Sequence[str]) -> None:
        super().__init__(
            f"no process {process_id!r} (processes: {', '.join(known)})",
            type=OGC_EXCEPTIONS + "no-such-process",
        )


class NoSuchJob(NotFound):
    slug, title = "no-such-job", "No such job"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}", type=OGC_EXCEPTIONS + "no-such-job")


class ResultNotReady(NotFound):
    slug, title = "result-not-ready", "The job has no results"

    def __init__(self, job: Job) -> None:
        why = {
            "accepted": "it is queued",
            "running": f"it is running ({job.progress}%)",
            "failed": f"it failed: {job.message}",
            "dismissed": "it was dismissed",
        }[job.status]
        super().__init__(
            f"job {job.id!r} has no results: {why}",
            type=OGC_EXCEPTIONS + "result-not-ready",
            jobStatus=job.status,
        )


class NoSuchOutput(NotFound):
    slug, title = "no-such-output", "No such output"


# ---------------------------------------------------------------------------------------------
# documents (OpenAPI; the OGC schemas' required members, others allowed)
# ---------------------------------------------------------------------------------------------
class _Document(BaseModel):
    model_config = ConfigDict(extra="allow")


class Link(_Document):
    href: str
    rel: str | None = None
    type: str | None = None
    title: str | None = None


class ProcessSummary(_Document):
    id: str
    version: str
    title: str | None = None
    description: str | None = None
    jobControlOptions: list[str] = Field(default_factory=list)
    outputTransmission: list[str] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)


class ProcessList(_Document):
    processes: list[ProcessSummary]
    links: list[Link]


class ProcessDescription(ProcessSummary):
    inputs: dict[str, Any]
    outputs: dict[str, Any]


class StatusInfo(_Document):
    """An OGC statusInfo document (extra: the job's checked ``inputs`` and ``attempts``)."""

    jobID: str
    type: Literal["process"] = "process"
    processID: str | None = None
    status: StatusCode
    message: str | None = None
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    updated: str | None = None
    progress: int | None = Field(None, ge=0, le=100)
    inputs: dict[str, Any] | None = None
    attempts: int | None = None
    links: list[Link] = Field(default_factory=list)


class JobList(_Document):
    jobs: list[StatusInfo]
    links: list[Link]


class Execute(BaseModel):
    """An OGC execute request: the process's ``inputs`` (see its description); ``outputs`` and
    ``response`` are accepted, and every output is returned in a results document."""

    model_config = ConfigDict(extra="allow")

    inputs: dict[str, Any] = Field(default_factory=dict, description="The inputs by id.")
    outputs: dict[str, Any] | None = Field(None, description="Ignored: every output is returned.")
    response: Literal["document", "raw"] = Field("document", description="Ignored: results are a document.")


#: The problems each kind of route may answer (reads: 401 / 403 when reads need a key).
_READ = problem_responses(401, 403, 404, 422)
_WRITE = problem_responses(400, 401, 403, 404, 413, 415, 422)


# ---------------------------------------------------------------------------------------------
# the router
# ---------------------------------------------------------------------------------------------
def make_router(
    jobs: Jobs,
    *,
    write_dependencies: Sequence[params.Depends],
    read_dependencies: Sequence[params.Depends] = (),
    tags: Sequence[str] = ("jobs",),
    prefix: str = "/v1",
) -> APIRouter:
    """The jobs' routes (module docstring) under ``prefix`` (the API's, ``/v1``).

    ``write_dependencies`` guard submitting and dismissing jobs (the API key check),
    ``read_dependencies`` the rest (empty: open).
    """
    router = APIRouter(prefix=prefix, tags=list(tags))
    reads, writes = list(read_dependencies), list(write_dependencies)
    known = list(jobs.processes.ids())
    # the schema lists the process ids; an unknown one in the path is OGC's 404 no-such-process, in
    # the jobs filter a 422
    process_path = PathParam(description="A process id.", json_schema_extra={"enum": known})

    def process_or_404(process_id: str) -> Any:
        process = jobs.processes.get(process_id)
        if process is None:
            raise NoSuchProcess(process_id, jobs.processes.ids())
        return process

    def job_or_404(job_id: str) -> Job:
        job = jobs.store.get(job_id)
        if job is None:
            raise NoSuchJob(job_id)
        return job

    def status_info(request: Request, job: Job) -> dict[str, Any]:
        url = str(request.url_for("get_job", job_id=job.id))
        links = [
            {"href": url, "rel": "self", "type": JSON, "title": "this job's status"},
            {"href": str(request.url_for("list_jobs")), "rel": "up", "type": JSON, "title": "the jobs"},
        ]
        if job.status == "successful":
            results = str(request.url_for("get_job_results", job_id=job.id))
            links.append({"href": results, "rel": OGC_RESULTS_REL, "type": JSON, "title": "results"})
        info = {
            "jobID": job.id, "type": "process", "processID": job.process, "status": job.status,
            "message": without_server_paths(job.message), "created": job.created, "started": job.started, "finished": job.finished,
            "updated": job.updated, "progress": job.progress, "inputs": job.inputs, "attempts": job.attempts,
            "links": links,
        }  # fmt: skip
        return {key: value for key, value in info.items() if value is not None}

    def process_links(request: Request, process_id: str) -> list[dict[str, Any]]:
        url = str(request.url_for("describe_process", process_id=process_id))
        execute = str(request.url_for("execute_process", process_id=process_id))
        return [
            {"href": url, "rel": "self", "type": JSON, "title": "process description"},
            {"href": execute, "rel": OGC_EXECUTE_REL, "title": "execute (POST)"},
        ]

    @router.get(
        "/processes", name="list_processes", response_model=ProcessList, response_model_exclude_none=True,
        dependencies=reads, responses=problem_responses(401, 403), summary="The processes",
    )  # fmt: skip
    def list_processes(request: Request) -> dict[str, Any]:
        """The processes this service runs as jobs: ``classify-raster`` and ``retrain``."""
        processes = [{**p.summary(), "links": process_links(request, p.id)} for p in jobs.processes]
        self_link = {"href": str(request.url), "rel": "self", "type": JSON}
        return {"processes": processes, "links": [self_link]}

    @router.get(
        "/processes/{process_id}", name="describe_process", response_model=ProcessDescription,
        response_model_exclude_none=True, dependencies=reads, responses=_READ,
        summary="A process description",
    )  # fmt: skip
    def describe_process(request: Request, process_id: str = process_path) -> dict[str, Any]:
        """The process's inputs and outputs (JSON Schema); data source and dataset names list this
        service's."""
        process = process_or_404(process_id)
        return {**process.describe(jobs.processes.config), "links": process_links(request, process_id)}

    @router.post(
        "/processes/{process_id}/execution", name="execute_process", status_code=201,
        response_model=StatusInfo, response_model_exclude_none=True, dependencies=writes,
        responses=_WRITE, openapi_extra=body_schema("Execute"),
        summary="Execute a process: a new job",
    )  # fmt: skip
    def execute(
        body: Annotated[Execute, Depends(json_body(Execute))], request: Request, response: Response,
        process_id: str = process_path,
    ) -> dict[str, Any]:
        """Queue a job (asynchronous execution): 201 with the job's statusInfo and its URL in
        ``Location``. Inputs are checked now: an unknown data source, dataset or model, or a bad option,
        is a 422 naming it."""
        process_or_404(process_id)
        job = jobs.submit(process_id, body.inputs)
        response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
        if "respond-async" in request.headers.get("prefer", ""):
            response.headers["Preference-Applied"] = "respond-async"
        return status_info(request, job)

    @router.get(
        "/jobs", name="list_jobs", response_model=JobList, response_model_exclude_none=True,
        dependencies=reads, responses=problem_responses(401, 403, 422), summary="The jobs",
    )  # fmt: skip
    def list_jobs(
        request: Request,
        processID: list[str] = Query(  # noqa: B008 (FastAPI's way)
            [], description="Only jobs of these processes.",
            json_schema_extra={"items": {"type": "string", "enum": known}},
        ),
        status: Annotated[list[StatusCode] | None, Query(description="Only jobs in these states.")] = None,
        limit: Annotated[
            int, Query(ge=1, le=1000, description="At most this many jobs, newest first.")
        ] = 100,
        offset: Annotated[int, Query(ge=0, le=2**62, description="Skip this many jobs.")] = 0,
    ) -> dict[str, Any]:
        """The jobs, newest first; a ``next`` link when there are more."""
        unknown = sorted(set(processID or ()) - set(known))
        if unknown:
            raise InvalidParameters(f"query.processID: no process {', '.join(map(repr, unknown))}; the processes are "
                                    f"{', '.join(known)}")  # fmt: skip
        found = jobs.store.list(process=processID or None, status=status, limit=limit + 1, offset=offset)
        links = [{"href": str(request.url), "rel": "self", "type": JSON}]
        if len(found) > limit:
            links.append({"href": str(request.url.include_query_params(offset=offset + limit)), "rel": "next",
                          "type": JSON})  # fmt: skip
        return {"jobs": [status_info(request, job) for job in found[:limit]], "links": links}

    @router.get(
        "/jobs/{job_id}", name="get_job", response_model=StatusInfo, response_model_exclude_none=True,
        dependencies=reads, responses=_READ, summary="A job's status",
    )  # fmt: skip
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        """The job's statusInfo: status, progress (0–100), message, times, links."""
        return status_info(request, job_or_404(job_id))

    @router.get(
        "/jobs/{job_id}/results", name="get_job_results", dependencies=reads, responses=_READ,
        summary="A job's results",
    )  # fmt: skip
    def get_results(job_id: str, request: Request) -> dict[str, Any]:
        """The results document of a successful job: each output a link (``href``, ``type``) to a file
        or a value (``value``, ``mediaType``). 404 ``result-not-ready`` before, and for failed or
        dismissed jobs (the detail says which)."""
        job = job_or_404(job_id)
        if job.status != "successful":
            raise ResultNotReady(job)
        results = {}
        for name, output in (job.outputs or {}).items():
            if isinstance(output, dict) and "file" in output:
                href = str(request.url_for("get_job_output", job_id=job.id, output_id=name))
                results[name] = {"href": href, "type": output.get("type", "application/octet-stream")}
            else:
                results[name] = without_server_paths(output)
        return results

    @router.get(
        "/jobs/{job_id}/results/{output_id}", name="get_job_output", dependencies=reads,
        responses={200: {"content": {media: {} for media in (*OUTPUT_FILE_TYPES, JSON)}}, **_READ},
        summary="One output of a job",
    )  # fmt: skip
    def get_output(job_id: str, output_id: str) -> Any:
        """One output: a file (the class map as a Cloud-Optimized GeoTIFF, with range requests; a run's
        log, settings or model) or a value document."""
        job = job_or_404(job_id)
        if job.status != "successful":
            raise ResultNotReady(job)
        outputs = job.outputs or {}
        if output_id not in outputs:
            raise NoSuchOutput(f"job {job_id!r} has no output {output_id!r} (outputs: {', '.join(outputs)})")
        output = outputs[output_id]
        if not (isinstance(output, dict) and "file" in output):
            return without_server_paths(output)
        folder = jobs.processes.job_dir(job.id).resolve()
        path = (folder / output["file"]).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise NoSuchOutput(f"the file of output {output_id!r} of job {job_id!r} is gone")
        media, name = output.get("type"), _download_name(job, path)
        disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
        if media == JSON:  # a run's model card: its training record names the server's folders
            document = without_server_paths(json.loads(path.read_text()))
            return Response(json.dumps(document, indent=2, ensure_ascii=False), media_type=media, headers=disposition)
        if media == YAML:  # a run's settings, likewise
            settings = without_server_paths(yaml.safe_load(path.read_text()))
            return Response(yaml.safe_dump(settings, sort_keys=False), media_type=media, headers=disposition)
        return FileResponse(path, media_type=media, filename=name)

    @router.delete(
        "/jobs/{job_id}", name="dismiss_job", response_model=StatusInfo, response_model_exclude_none=True,
        dependencies=writes, responses=_WRITE, summary="Dismiss a job",
    )  # fmt: skip
    def dismiss_job(job_id: str, request: Request) -> dict[str, Any]:
        """Dismiss the job: a queued job never runs, a running one stops at its next progress step; its
        files (results and unfinished work) are removed. A model it registered stays registered."""
        job = jobs.dismiss(job_id)
        if job is None:
            raise NoSuchJob(job_id)
        return status_info(request, job)

    return router


def _download_name(job: Job, path: Path) -> str:
    return f"{job.process}-{job.id[:8]}-{path.name}"
