"""The service's OGC API – Processes processes: their descriptions, the checking of a request's
inputs, and the work each does as a job (DESIGN.md "Conventions of the field").

- ``classify-raster``: a whole data source classified block by block into a Cloud-Optimized GeoTIFF
  (:func:`cropstar.infer.raster.classify`); a resumed job reuses the blocks it finished.
- ``retrain``: a model trained on a stored dataset, from scratch or from a model
  (:func:`cropstar.train.trainer.train`), then registered; a resumed job continues its checkpoint.

Requests name things, never paths: a data source or dataset by its name in the settings, a model by
its id. Inputs are checked when the job is submitted (:meth:`Processes.check`, InputError naming the
bad value), and stored normalised — a model id resolved to its version, so a resumed job uses the
model it began with. The work gets a :class:`ProcessContext` (job id, the job's folder, a progress
callback, the configuration), so it runs without HTTP. Outputs are JSON: a file the job wrote is
``{"file": "map.tif", "type": media type}`` relative to the job's folder (the router links it), any
other value ``{"value": …, "mediaType": "application/json"}`` (OGC's qualified value).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cropstar.errors import InputError, ModelMismatchError
from service.errors import ServiceError
from service.jobs.runner import JobControl
from service.jobs.store import Job

#: ``progress(percent, message)`` as a process reports it.
Progress = Callable[[float, str], None]
#: ``resolve_model(model_id) -> (canonical id, artifact folder)``; None asks for the default model.
ResolveModel = Callable[[str | None], tuple[str, Path]]
#: ``resolve_source(name) -> what open_cube reads`` for a data source name of the settings.
ResolveSource = Callable[[str], str | Path]

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
JSON_TYPE = "application/json"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A training run's files a job links as outputs: output id → (path in the job folder, media type).
_RUN_FILES = {
    "log": ("run/log.csv", "text/csv"),
    "config": ("run/config.yaml", "application/yaml"),
    "model_card": ("run/model/model.json", JSON_TYPE),
    "model_weights": ("run/model/model.safetensors", "application/octet-stream"),
}
#: The media types of the files the processes write (the output route documents them).
OUTPUT_FILE_TYPES = (COG_TYPE, *dict.fromkeys(kind for _, kind in _RUN_FILES.values()))


# ---------------------------------------------------------------------------------------------
# configuration and context
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobsConfig:
    """What the processes need from the service's settings.

    ``work_dir``: the jobs' folders (``work_dir/<job id>/``); ``data_sources``: name → cube source
    (band-raster folder, SAFE, STAC JSON, NetCDF, Zarr); ``datasets``: name → stored dataset folder;
    ``registry``: the model registry (None: retrained models are not registered); ``default_model``:
    the model behind the id "default", an artifact folder or registry reference (None: the packaged
    model); ``allowed_models``: registry models requests may name (names or name:vN; None: all);
    ``train_config``: the base training settings (YAML; None: the defaults); ``scheduler``:
    dask.distributed address for raster jobs; ``threads``: torch threads of a local raster job;
    ``max_block_size``. ``resolve_source`` / ``resolve_model``: the service's own look-ups, replacing
    the plain mapping and :func:`resolve_model_id` (e.g. to synthesise the demo scene once).
    """

    work_dir: Path
    data_sources: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)
    registry: Path | None = None
    default_model: str | None = None
    allowed_models: tuple[str, ...] | None = None
    train_config: Path | None = None
    scheduler: str | None = None
    threads: int | None = None
    max_block_size: int = 4096
    resolve_source: ResolveSource | None = None
    resolve_model: ResolveModel | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> JobsConfig:
        """The configuration from the service's settings object, read by attribute (missing ones take
        the defaults): ``scratch_dir`` or ``work_dir`` (jobs go to its ``jobs/``), ``data_sources``,
        ``datasets``, ``registry``, ``default_model``, ``allowed_models``, ``train_config``,
        ``dask_scheduler``, ``jobs_threads``; ``overrides`` replace any field."""

        def get(name: str) -> Any:
            return getattr(settings, name, None)

        base = get("scratch_dir") or get("work_dir") or Path("work")
        values: dict[str, Any] = {
            "work_dir": Path(base) / "jobs",
            "data_sources": dict(get("data_sources") or {}),
            "datasets": {str(k): str(v) for k, v in dict(get("datasets") or {}).items()},
            "registry": None if get("registry") is None else Path(get("registry")),
            "default_model": None if get("default_model") is None else str(get("default_model")),
            "allowed_models": None if get("allowed_models") is None else tuple(get("allowed_models")),
            "train_config": None if get("train_config") is None else Path(get("train_config")),
            "scheduler": get("dask_scheduler"),
            "threads": get("jobs_threads"),
        }
        return cls(**{**values, **overrides})

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / job_id


@dataclass(frozen=True)
class ProcessContext:
    """What a process's work gets: its job id, its own folder, a progress callback, the configuration."""

    job_id: str
    work_dir: Path
    progress: Progress
    config: JobsConfig


# ---------------------------------------------------------------------------------------------
# names from a request
# ---------------------------------------------------------------------------------------------
#: The model id of the configured default model (as the service's model endpoints name it).
DEFAULT_MODEL_ID = "default"


def resolve_model_id(model_id: str | None, config: JobsConfig) -> tuple[str, Path]:
    """The canonical id and artifact folder of ``model_id``: "default" (or None) for the configured
    default model, the packaged model's name, or a registry reference ("name", "name:v3",
    "name:current", "name:latest"), resolved to its version "name:vN" so that a resumed job uses the
    model it began with. Never a path from a request; InputError naming the id."""
    if config.resolve_model is not None:
        return config.resolve_model(model_id)
    from cropstar.model.artifact import CARD
    from cropstar.model.default_model import DEFAULT_MODEL_NAME, default_model_path
    from cropstar.model.registry import ModelRegistry

    if model_id is None or model_id == DEFAULT_MODEL_ID:
        if config.default_model is None:
            return DEFAULT_MODEL_ID, default_model_path()
        if (Path(config.default_model) / CARD).is_file():  # a folder, from the settings
            return DEFAULT_MODEL_ID, Path(config.default_model)
        if config.registry is None:
            raise InputError(f"the default model {config.default_model!r} is not a model artifact folder")
        version = ModelRegistry(config.registry).show(config.default_model)
        return version.ref, version.path
    if model_id == DEFAULT_MODEL_NAME:
        return DEFAULT_MODEL_NAME, default_model_path()
    if not _MODEL_ID.match(model_id):
        raise InputError(f"model id {model_id!r} is not a model id (name or name:version, e.g. crops:v2)")
    registry = ModelRegistry(config.registry) if config.registry is not None else None
    known = [DEFAULT_MODEL_ID, DEFAULT_MODEL_NAME, *(registry.names() if registry else [])]
    try:
        if registry is None:
            raise InputError(model_id)
        version = registry.show(model_id)
    except InputError:
        raise InputError(f"unknown model {model_id!r} (models: {', '.join(known)})") from None
    allowed = config.allowed_models
    if allowed is not None and version.name not in allowed and version.ref not in allowed:
        raise InputError(f"model {model_id!r} is not offered by this service (models: {', '.join(allowed)})")
    return version.ref, version.path


def source_of(name: str, config: JobsConfig) -> str | Path:
    """What :func:`~cropstar.data.cube.open_cube` reads for the data source ``name``; InputError
    listing the names for an unknown one."""
    _named("data source", name, config.data_sources)
    return config.resolve_source(name) if config.resolve_source is not None else config.data_sources[name]


def _named(kind: str, name: str, known: Mapping[str, Any]) -> Any:
    """The entry ``name`` of ``known``; InputError listing the names otherwise."""
    if name not in known:
        listed = ", ".join(sorted(known)) or "none configured"
        raise InputError(f"unknown {kind} {name!r} ({kind}s: {listed})")
    return known[name]


def _qualified(value: Any) -> dict[str, Any]:
    return {"value": value, "mediaType": JSON_TYPE}


# ---------------------------------------------------------------------------------------------
# classify-raster
# ---------------------------------------------------------------------------------------------
class _Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "64" is no block size, "yes" no boolean


class ClassifyRasterInputs(_Inputs):
    """The inputs of ``classify-raster``."""

    data_source: str = Field(
        description="The name of a data source of this service (GET /v1/processes/"
        "classify-raster lists them).",
        min_length=1,
        max_length=200,
    )
    model: str | None = Field(
        None,
        description="A model id (name or name:version); default: the service's default model.",
        max_length=200,
    )
    probabilities: bool = Field(False, description="Add one probability band per class (p_<code>).")
    per_timestep: bool = Field(False, description="Add the class after each date (early-season maps).")
    block_size: int = Field(512, ge=8, description="Block side in pixels (memory follows it).")


def check_classify_raster(inputs: ClassifyRasterInputs, config: JobsConfig) -> dict[str, Any]:
    _named("data source", inputs.data_source, config.data_sources)
    if inputs.block_size > config.max_block_size:
        raise InputError(
            f"block_size {inputs.block_size} is above this service's limit {config.max_block_size}"
        )
    model_id, _ = resolve_model_id(inputs.model, config)
    return {**inputs.model_dump(), "model": model_id}


def run_classify_raster(inputs: ClassifyRasterInputs, ctx: ProcessContext) -> dict[str, Any]:
    """Classify the data source into ``map.tif`` in the job's folder; finished blocks wait in
    ``map.tif.parts/`` and are reused when the job resumes."""
    from cropstar.data.cube import open_cube
    from cropstar.data.features import bands_to_read
    from cropstar.infer.raster import classify
    from cropstar.model.artifact import load_artifact

    source = source_of(inputs.data_source, ctx.config)
    model_id, folder = resolve_model_id(inputs.model, ctx.config)
    ctx.progress(0, "opening the data source")
    loaded = load_artifact(folder)
    cube = open_cube(source, bands=bands_to_read(loaded.card.bands))

    def progress(stage: str, done: int, total: int, **info: Any) -> None:
        if stage == "blocks":
            ctx.progress(
                95 * done / max(total, 1), f"{done} of {total} blocks ({info.get('resumed', 0)} resumed)"
            )
        else:
            ctx.progress(95 + 5 * done / max(total, 1), "writing the map")

    out = ctx.work_dir / "map.tif"
    options = {
        "probabilities": inputs.probabilities,
        "per_timestep": inputs.per_timestep,
        "block_size": inputs.block_size,
        "scheduler": ctx.config.scheduler,
        "threads": ctx.config.threads,
        "progress": progress,
    }
    try:
        report = classify(loaded, cube, out, **options)
    except InputError:
        parts = out.with_name(out.name + ".parts")
        if not parts.exists():
            raise
        # the finished blocks were made of other data (the source changed while the job waited)
        report = classify(loaded, cube, out, restart=True, **options)
    summary = {
        "data_source": inputs.data_source,
        "model": model_id,
        "width": report.width,
        "height": report.height,
        "bands": report.bands,
        "blocks": report.blocks,
        "blocks_computed": report.blocks_computed,
        "blocks_resumed": report.blocks_resumed,
        "seconds": round(report.seconds, 3),
        "pixels_per_second": round(report.pixels_per_second, 1),
    }
    return {"map": {"file": "map.tif", "type": COG_TYPE}, "summary": _qualified(summary)}


# ---------------------------------------------------------------------------------------------
# retrain
# ---------------------------------------------------------------------------------------------
Scalar = str | int | float | bool | None


class RetrainInputs(_Inputs):
    """The inputs of ``retrain``."""

    dataset: str = Field(
        description="The name of a training dataset of this service.", min_length=1, max_length=200
    )
    init_from: str | None = Field(
        None,
        description="A model id to start from (its architecture and normalisation are kept); "
        "default: a new model, set up by `config`.",
        max_length=200,
    )
    config: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description='Training settings as dotted keys, e.g. {"epochs": 10, "optimiser.lr": 0.001} '
        "(those of `cropstar train --set`).",
    )
    register_as: str | None = Field(
        None,
        description="The registry name of the new model (a new version of it); default: the name "
        "of the model started from, else the dataset's name.",
        max_length=100,
    )
    notes: str = Field("", description="Notes recorded with the registered version.", max_length=2000)


def _overrides(config: Mapping[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in config.items()]


def _load_training_config(inputs: RetrainInputs, config: JobsConfig) -> Any:
    from cropstar.train.config import load_config

    return load_config(config.train_config, _overrides(inputs.config))


def _check_dataset_fits(name: str, data: Path | str, model_id: str, model_path: Path) -> None:
    """ModelMismatchError (a 422 at submission, not a failed job) when the stored dataset ``name`` is
    on another grid than the model to start from, naming the fix without the server's paths."""
    from cropstar.data.dataset import open_dataset
    from cropstar.model.artifact import dataset_problems, read_card

    problems, regrid = dataset_problems(read_card(model_path), open_dataset(data))
    if not problems:
        return
    message = f"dataset {name!r} does not fit model {model_id!r}: " + "; ".join(problems)
    if regrid:
        message += (
            f". To fix, the operator cuts the season again onto the model's grid (`cropstar ingest … "
            f"--like {model_id}`) and adds that dataset to the service's settings (datasets)"
        )
    raise ModelMismatchError(message)


def check_retrain(inputs: RetrainInputs, config: JobsConfig) -> dict[str, Any]:
    from cropstar.model.default_model import DEFAULT_MODEL_NAME

    data = _named("dataset", inputs.dataset, config.datasets)
    _load_training_config(inputs, config)
    init_from = None
    if inputs.init_from is not None:
        init_from, model_path = resolve_model_id(inputs.init_from, config)
        _check_dataset_fits(inputs.dataset, data, init_from, model_path)
    name = inputs.register_as
    if name is not None and config.registry is None:
        raise InputError("register_as needs a model registry, and this service has none")
    if name is None:
        base = (init_from or "").partition(":")[0] or inputs.dataset
        name = "cropstar-retrained" if base in (DEFAULT_MODEL_ID, DEFAULT_MODEL_NAME) else base
        name = name if _NAME.match(name) else "cropstar-retrained"
    elif not _NAME.match(name) or name == DEFAULT_MODEL_ID:
        raise InputError(
            f"register_as {name!r} must start with a letter or digit, hold only letters, digits, '.', '_' "
            f"and '-', and not be {DEFAULT_MODEL_ID!r}"
        )
    return {**inputs.model_dump(), "init_from": init_from, "register_as": name}


def run_retrain(inputs: RetrainInputs, ctx: ProcessContext) -> dict[str, Any]:
    """Train into ``run/`` in the job's folder (resuming its checkpoint when there is one), then
    register the model; a resumed job that registered already does not register twice."""
    from cropstar.model.registry import ModelRegistry
    from cropstar.train.trainer import CHECKPOINT, train

    data = _named("dataset", inputs.dataset, ctx.config.datasets)
    settings = _load_training_config(inputs, ctx.config)
    init_from = resolve_model_id(inputs.init_from, ctx.config)[1] if inputs.init_from is not None else None
    run = ctx.work_dir / "run"
    resume = (run / CHECKPOINT).is_file()
    epochs = settings.epochs

    def progress(stage: str, done: int, total: int, **metrics: Any) -> None:
        if stage == "train":
            epoch = metrics.get("epoch", 1)
            ctx.progress(95 * (epoch - 1 + done / max(total, 1)) / epochs, f"epoch {epoch} of {epochs}")
        elif stage == "epoch":
            loss = (
                metrics.get("val_loss") if metrics.get("val_loss") is not None else metrics.get("train_loss")
            )
            ctx.progress(95 * done / epochs, f"epoch {done} of {epochs} done (loss {loss:.4g})")

    ctx.progress(0, "resuming the training run" if resume else "starting the training run")
    if not resume and run.exists():
        shutil.rmtree(run)  # a start that was interrupted before its first checkpoint
    result = train(settings, data, run, init_from=init_from, resume=resume, progress=progress)
    outputs: dict[str, Any] = {
        "training": _qualified(
            {
                "dataset": inputs.dataset,
                "init_from": inputs.init_from,
                "best_epoch": result.best_epoch,
                "best_loss": result.best_loss,
                "epochs_run": len(result.history),
                "best": result.best,
                "stopped_early": result.stopped_early,
                "notes": result.notes,
                "resumed": resume,
            }
        ),
    }
    outputs.update({key: {"file": path, "type": kind} for key, (path, kind) in _RUN_FILES.items()})
    registered = None
    if ctx.config.registry is not None:
        ctx.progress(97, "registering the model")
        record = ctx.work_dir / "registered.json"
        if record.is_file():
            registered = json.loads(record.read_text())
        else:
            notes = inputs.notes or f"retrained by job {ctx.job_id} on dataset {inputs.dataset}"
            version = ModelRegistry(ctx.config.registry).register(result.model, inputs.register_as, notes)
            registered = {
                "id": version.ref,
                "name": version.name,
                "version": version.version,
                "current": version.current,
            }
            record.write_text(json.dumps(registered))
    outputs["model"] = _qualified(registered)
    return outputs


# ---------------------------------------------------------------------------------------------
# the registry of processes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Process:
    """One process: its description, its inputs' model, the check at submission and the work."""

    id: str
    title: str
    description: str
    inputs: type[_Inputs]
    outputs: dict[str, dict[str, Any]]
    check: Callable[[Any, JobsConfig], dict[str, Any]]
    run: Callable[[Any, ProcessContext], dict[str, Any]]
    version: str = "1.0.0"

    def summary(self) -> dict[str, Any]:
        """The OGC process summary (``GET /processes``), without links."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "version": self.version,
            "jobControlOptions": ["async-execute", "dismiss"],
            "outputTransmission": ["value", "reference"],
        }

    def describe(self, config: JobsConfig) -> dict[str, Any]:
        """The OGC process description (``GET /processes/{id}``), without links; name inputs list the
        names this service knows."""
        schema = self.inputs.model_json_schema()
        required = set(schema.get("required", []))
        inputs = {}
        for name, prop in schema["properties"].items():
            prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
            known = {"data_source": config.data_sources, "dataset": config.datasets}.get(name)
            if known is not None:
                prop = {**prop, "enum": sorted(known)}
            field_info = self.inputs.model_fields[name]
            inputs[name] = {
                "title": name.replace("_", " "),
                "description": field_info.description or "",
                "schema": prop,
                "minOccurs": 1 if name in required else 0,
                "maxOccurs": 1,
            }
        return {**self.summary(), "inputs": inputs, "outputs": self.outputs}


def _output(title: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"title": title, "description": description, "schema": schema}


_COG = {"type": "string", "contentMediaType": COG_TYPE}
_OBJECT = {"type": "object", "contentMediaType": JSON_TYPE}

CLASSIFY_RASTER = Process(
    id="classify-raster",
    title="Classify a scene",
    description="Classify every pixel of a data source with a model, block by block, into a class map "
    "(Cloud-Optimized GeoTIFF: class id, confidence, optional probability and per-date bands). An "
    "interrupted job resumes with the blocks it has not finished.",
    inputs=ClassifyRasterInputs,
    outputs={
        "map": _output("class map", "The map as a Cloud-Optimized GeoTIFF (a link).", _COG),
        "summary": _output("summary", "Size, bands, blocks (computed, resumed) and speed.", _OBJECT),
    },
    check=check_classify_raster,
    run=run_classify_raster,
)
RETRAIN = Process(
    id="retrain",
    title="Retrain a model",
    description="Train a crop classifier on a dataset of this service, from a model (its architecture "
    "and normalisation kept, head rows matched by class code) or from scratch, select the epoch with "
    "the lowest validation loss and register it as a new model version. An interrupted job continues "
    "from its last finished epoch.",
    inputs=RetrainInputs,
    outputs={
        "model": _output(
            "registered model", "The new version's id, name and number (null without a registry).", _OBJECT
        ),
        "training": _output("training summary", "Best epoch, its loss and log row, notes.", _OBJECT),
        **{
            key: _output(
                key.replace("_", " "),
                f"The run's {path.rpartition('/')[2]} (a link).",
                {"type": "string", "contentMediaType": kind},
            )
            for key, (path, kind) in _RUN_FILES.items()
        },
    },
    check=check_retrain,
    run=run_retrain,
)
#: The processes this service offers.
PROCESSES = (CLASSIFY_RASTER, RETRAIN)


class Processes:
    """The processes offered with ``config``: look-up, input checks, and the runner's ``execute``."""

    def __init__(self, config: JobsConfig, processes: tuple[Process, ...] = PROCESSES) -> None:
        self.config = config
        self._by_id = {process.id: process for process in processes}

    def ids(self) -> list[str]:
        return list(self._by_id)

    def get(self, process_id: str) -> Process | None:
        return self._by_id.get(process_id)

    def __iter__(self) -> Iterator[Process]:
        return iter(self._by_id.values())

    def check(self, process_id: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs of a request to execute ``process_id``, checked and normalised for the store;
        InputError naming every bad input."""
        process = self._by_id[process_id]
        return process.check(_parse(process, inputs), self.config)

    def job_dir(self, job_id: str) -> Path:
        return self.config.job_dir(job_id)

    def execute(self, job: Job, control: JobControl) -> dict[str, Any]:
        """Run ``job`` (the runner's ``execute``): its process's work in the job's folder."""
        process = self._by_id.get(job.process)
        if process is None:
            raise InputError(f"this service has no process {job.process!r} (any longer)")
        folder = self.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        ctx = ProcessContext(job.id, folder, control.report, self.config)
        try:
            return process.run(_parse(process, job.inputs), ctx)
        except ServiceError as error:  # the service's look-ups refuse (e.g. a model no longer offered)
            raise InputError(error.detail) from None

    def remove(self, job: Job) -> None:
        """Remove the job's folder (its outputs and unfinished work)."""
        shutil.rmtree(self.job_dir(job.id), ignore_errors=True)


def _parse(process: Process, inputs: Mapping[str, Any]) -> Any:
    try:
        return process.inputs.model_validate(dict(inputs))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "inputs"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(
                f"input {where}: {message}"
                if item["type"] != "extra_forbidden"
                else f"unknown input {where!r} (inputs: {', '.join(process.inputs.model_fields)})"
            )
        raise InputError(f"invalid inputs of process {process.id!r}: {'; '.join(problems)}") from None
