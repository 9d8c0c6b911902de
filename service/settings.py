"""The service's settings: pydantic-settings read from ``CROPSTAR_*`` environment variables
and an optional YAML file (``cropstar serve --config`` or ``CROPSTAR_CONFIG``); with nothing set, the
packaged default model over the packaged demo scene. :func:`load_settings` is the only place that
reads the environment; everything else is handed a :class:`Settings`.

Precedence: keyword arguments > environment > YAML file > defaults. Nested values from the
environment use ``__`` (``CROPSTAR_LIMITS__MAX_FEATURES=200``); lists and mappings are JSON
(``CROPSTAR_DATA_SOURCES='{"munich": "/data/munich"}'``). See ``configs/service.yaml``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cropstar.errors import InputError

#: The environment variable naming the YAML settings file.
CONFIG_ENV = "CROPSTAR_CONFIG"
#: A data source value that means "the packaged demo scene, synthesised into the cache folder".
DEMO_SOURCE = "builtin:demo"
#: The model id of the configured default model.
DEFAULT_MODEL_ID = "default"
#: What an API key may do: read (when ``read_requires_key``), submit / cancel jobs, administer models.
SCOPES = ("read", "jobs", "admin")
Scope = Literal["read", "jobs", "admin"]
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cropstar``, else ``~/.cache/cropstar``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "cropstar"


class Limits(BaseModel):
    """What one request may ask for; beyond these it gets 413 with a problem naming the limit."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: PositiveInt = Field(8 * 1024 * 1024, description="Largest request body (bytes).")
    max_features: PositiveInt = Field(1000, description="Most features in one fields:classify request.")
    max_vertices: PositiveInt = Field(
        20_000, description="Most vertices (positions, all rings) of one feature's geometry."
    )
    max_area_ha: PositiveFloat = Field(
        100_000.0, description="Largest total area (ellipsoidal, equal-area) of the fields of one request, hectares."
    )
    max_series: PositiveInt = Field(10_000, description="Most samples in one series:classify request.")
    request_seconds: PositiveFloat = Field(
        30.0, description="Time one fields:classify request may spend reading and classifying pixels (503 "
        "beyond it)."
    )
    large_body_bytes: PositiveInt = Field(
        256 * 1024, description="A fields:classify body larger than this is a large request (bytes)."
    )
    large_requests: PositiveInt = Field(
        1, description="Large requests in work at once per server process; one more gets a 503 busy with "
        "Retry-After (smaller requests are never refused for this)."
    )
    repair_seconds: PositiveFloat = Field(
        0.25, description="Time one request's invalid geometries may take to repair (in a worker process); "
        "features not repaired by then come back invalid_geometry."
    )


class ApiKey(BaseModel):
    """One API key, stored as its hash (``cropstar serve --hash-key KEY`` prints it)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Who holds the key (shown in logs, never the key).")
    hash: str = Field(description="'sha256:' and the hex SHA-256 digest of the key.")
    scopes: list[Scope] = Field(default_factory=lambda: list(SCOPES), description="What the key may do.")

    @field_validator("hash")
    @classmethod
    def _is_hash(cls, value: str) -> str:
        value = value.strip().lower()
        if not _KEY_HASH.match(value):
            raise ValueError(
                "must be 'sha256:' followed by 64 hex digits (cropstar serve --hash-key KEY prints it), "
                "never the key itself"
            )
        return value


class Settings(BaseSettings):
    """Everything the service is configured with (docs: ``configs/service.yaml``)."""

    model_config = SettingsConfigDict(env_prefix="CROPSTAR_", env_nested_delimiter="__", extra="forbid")

    default_model: str | None = Field(
        None,
        description="The model behind model id 'default': an artifact folder or a registry reference "
        "(name, name:v3, name:current). None: the model packaged with cropstar.",
    )
    registry: Path | None = Field(None, description="Model registry folder; its versions are model ids.")
    allowed_models: list[str] | None = Field(
        None,
        description="Registry models requests may name (names or name:vN); None: every registered one.",
    )
    data_sources: dict[str, str] = Field(
        default_factory=lambda: {"demo": DEMO_SOURCE},
        description=f"Source name → cube (band-file folder, SAFE, STAC JSON, NetCDF, Zarr); "
        f"{DEMO_SOURCE!r}: the packaged demo scene. Requests name sources, never paths.",
    )
    default_source: str | None = Field(None, description="Source of requests that name none (default: the first).")
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Where the demo scene is synthesised once and kept."
    )
    work_dir: Path | None = Field(
        None, description="Scratch space, job outputs and the job database (default: CACHE_DIR/service)."
    )
    api_keys: list[ApiKey] = Field(default_factory=list, description="Accepted API keys (hashed).")
    read_requires_key: bool = Field(False, description="Require a key (scope 'read') for the read endpoints.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty: CORS off.")
    limits: Limits = Field(default_factory=Limits)
    precompute_max_pixels: PositiveInt = Field(
        512 * 512,
        description="Sources up to this many pixels are held in memory with each model's class "
        "probabilities precomputed per pixel over the source's whole season (requests then only aggregate); "
        "larger ones, and requests for part of a season, are read and classified around their fields.",
    )
    probability_maps: PositiveInt = Field(8, description="Precomputed (model, source) probability maps kept.")
    loaded_models: PositiveInt = Field(8, description="Models kept loaded in memory.")
    preload: bool = Field(True, description="Load the default model and sources at start-up (else on first use).")
    torch_threads: PositiveInt | None = Field(None, description="torch intra-op threads (default: torch's).")

    # the jobs (service/jobs: read by JobsConfig.from_settings and Jobs.from_settings)
    datasets: dict[str, str] = Field(
        default_factory=dict, description="Dataset name → stored dataset folder, for retrain jobs."
    )
    train_config: Path | None = Field(None, description="Base training settings (YAML) of retrain jobs.")
    dask_scheduler: str | None = Field(None, description="dask.distributed scheduler (tcp://host:port) of raster "
                                       "jobs; none: they run in the service's process.")
    jobs_threads: PositiveInt | None = Field(None, description="torch threads of a raster job run locally.")
    jobs_workers: PositiveInt = Field(1, description="Jobs run at the same time (runner threads).")
    jobs_db: Path | None = Field(None, description="The job database (SQLite; default: WORK_DIR/jobs.sqlite).")

    @field_validator("data_sources", "datasets")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _SOURCE_NAME.match(name)]
        if bad:
            raise ValueError(f"names must be letters, digits, '.', '_' or '-' (at most 64), got {bad[0]!r}")
        return value

    @field_validator("data_sources")
    @classmethod
    def _some_source(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("at least one data source is needed")
        return value

    @model_validator(mode="after")
    def _default_source_exists(self) -> Settings:
        if self.default_source is not None and self.default_source not in self.data_sources:
            raise ValueError(
                f"default_source {self.default_source!r} is not a data source ({', '.join(self.data_sources)})"
            )
        return self

    @property
    def source_name(self) -> str:
        """The data source of requests that name none."""
        return self.default_source or next(iter(self.data_sources))

    @property
    def scratch_dir(self) -> Path:
        """The service's working folder (``work_dir``, default ``cache_dir/service``)."""
        return self.work_dir if self.work_dir is not None else self.cache_dir / "service"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if settings_cls.model_config.get("yaml_file"):
            sources += (YamlConfigSettingsSource(settings_cls),)
        return sources


def load_settings(config: Path | str | None = None, **values: Any) -> Settings:
    """The settings from ``values``, the environment and the YAML file ``config`` (default: the file
    named by ``CROPSTAR_CONFIG``, if any). InputError for a missing or unreadable file; pydantic's
    ValidationError for invalid values (naming each)."""
    if config is None:
        config = os.environ.get(CONFIG_ENV) or None
    if config is None:
        return Settings(**values)
    path = Path(config)
    if not path.is_file():
        raise InputError(f"service settings file not found: {path}")
    from cropstar.files import read_yaml_mapping

    read_yaml_mapping(path, "service settings file")  # a clear error for broken YAML
    with_file = type(
        "Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": str(path)}}
    )
    return with_file(**values)
