"""What one app holds in memory (created by the app factory, filled in its lifespan; no module state):
the loaded models, the data sources' cubes and, for sources small enough, each model's pixel
probabilities (:mod:`service.probability_map`), so a request reads no file and runs no model.

Models are named by id — ``default`` (the configured default model) or a registry version
``name:vN`` (``name``, ``name:current`` and ``name:latest`` resolve to one) — and data sources by their
name in the settings: a request never reaches a path. Everything is loaded on first use, under a
lock per item, and :meth:`AppState.preload` warms the default model and every source at start-up.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import geopandas as gpd

from cropstar.data.cube import Cube
from cropstar.data.features import bands_to_read
from cropstar.errors import CropstarError, InputError
from cropstar.model.artifact import CARD, LoadedModel
from cropstar.model.registry import ModelRegistry, ModelVersion
from service.errors import DeadlineExceeded, NoMap, NotFound, Unavailable
from service.limits import LargeRequests
from service.metrics import ServiceMetrics
from service.paths import without_server_paths
from service.probability_map import ProbabilityMap
from service.repair_worker import RepairWorker
from service.settings import DEFAULT_MODEL_ID, DEMO_SOURCE, Settings

T = TypeVar("T")
#: A model id a request may give: "default", "name", "name:v3", "name:current", "name:latest".
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(:[A-Za-z0-9]{1,32})?$")
#: The model card text shipped beside an artifact's model.json.
MODEL_CARD_TEXT = "MODEL_CARD.md"
#: A season as the routes pass it on: None, a year, or inclusive ISO (start, end).
Season = int | tuple[str, str] | None
_log = logging.getLogger("cropstar.service")


@dataclass(frozen=True)
class ModelEntry:
    """A model id resolved: the canonical ``id`` ("default" or "name:vN"), the artifact ``path`` and,
    for registry versions, the registration record."""

    id: str
    path: Path
    version: ModelVersion | None = None


@dataclass
class Source:
    """A data source of the settings: its ``name``, what the settings say (``spec``: a path or the demo)
    and, once resolved, the ``path`` open_cube reads."""

    name: str
    spec: str
    path: Path | None = None
    pixels: int | None = None


def deadline_check(seconds: float) -> Callable[[str, int, int], None]:
    """A progress callback that stops the work (:class:`DeadlineExceeded`) once ``seconds`` have passed
    since it was made: the library reports after each window read and each batch classified."""
    deadline = time.monotonic() + seconds

    def check(stage: str, done: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                f"the request was still {stage} after {seconds:g} s (limits.request_seconds): send fewer or "
                "smaller fields, or classify the source with a classify-raster job"
            )

    return check


class AppState:
    """The models, cubes and probability maps of one app (thread-safe: routes run in a thread pool)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        self.sources = {name: Source(name, spec) for name, spec in settings.data_sources.items()}
        self.ready = False
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._item_locks: dict[Hashable, threading.Lock] = {}
        self._models: OrderedDict[Hashable, LoadedModel] = OrderedDict()
        self._paths: OrderedDict[Hashable, Path] = OrderedDict()
        self._cubes: OrderedDict[Hashable, Cube] = OrderedDict()
        self._maps: OrderedDict[Hashable, ProbabilityMap] = OrderedDict()
        self.repair = RepairWorker(settings.limits.repair_seconds)
        self.large_requests = LargeRequests(settings.limits)

    # -- caching --------------------------------------------------------------------------------
    def _cached(self, cache: OrderedDict, key: Hashable, make: Callable[[], T], capacity: int | None) -> T:
        """``cache[key]``, made once by ``make`` (other threads asking meanwhile wait for it)."""
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            lock = self._item_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in cache:
                    return cache[key]
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._item_locks.pop(key, None)
                raise
            with self._lock:
                cache[key] = value
                while capacity is not None and len(cache) > capacity:
                    cache.popitem(last=False)
                self._item_locks.pop(key, None)
        return value

    # -- models ---------------------------------------------------------------------------------
    def _registry(self) -> ModelRegistry | None:
        return None if self.settings.registry is None else ModelRegistry(self.settings.registry)

    def _allowed(self, version: ModelVersion) -> bool:
        allowed = self.settings.allowed_models
        return allowed is None or version.ref in allowed or version.name in allowed

    def default_model_path(self) -> Path:
        """The artifact folder of the model id "default"."""
        from cropstar.model.default_model import default_model_path
        from cropstar.model.registry import resolve_model

        if self.settings.default_model is None:
            return default_model_path()
        return resolve_model(self.settings.default_model, self.settings.registry)

    def registry_versions(self) -> list[ModelVersion]:
        """The registry's versions requests may name (none without a registry)."""
        registry = self._registry()
        return [] if registry is None else [v for v in registry.list() if self._allowed(v)]

    def _unknown_model(self, model_id: str) -> NotFound:
        ids = [DEFAULT_MODEL_ID, *(v.ref for v in self.registry_versions())]
        listed = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        return NotFound(f"unknown model {model_id!r}; the models are: {listed} (GET /v1/models)")

    def resolve_model(self, model_id: str | None) -> ModelEntry:
        """The model ``model_id`` names (None: the default); NotFound naming the id and the known ones."""
        if model_id is None or model_id == DEFAULT_MODEL_ID:
            return ModelEntry(DEFAULT_MODEL_ID, self.default_model_path())
        registry = self._registry()
        if registry is None or not MODEL_ID.match(model_id):
            raise self._unknown_model(model_id)
        try:
            version = registry.show(model_id)
        except InputError:
            raise self._unknown_model(model_id) from None
        if not self._allowed(version):
            raise self._unknown_model(model_id)
        return ModelEntry(version.ref, version.path, version)

    def model(self, model_id: str | None) -> tuple[ModelEntry, LoadedModel]:
        """The resolved id and the loaded model (kept: the last ``loaded_models``)."""
        from cropstar.model.artifact import load_artifact

        entry = self.resolve_model(model_id)
        loaded = self._cached(
            self._models, ("model", str(entry.path)), lambda: load_artifact(entry.path),
            self.settings.loaded_models,
        )
        return entry, loaded

    def model_card(self, model_id: str) -> dict[str, Any]:
        """The model's card: ``model.json`` as stored, the ``MODEL_CARD.md`` text (or None) and, for
        registry versions, the registration."""
        entry = self.resolve_model(model_id)
        try:
            card = json.loads((entry.path / CARD).read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the card of model {entry.id!r}: {error}") from None
        text = entry.path / MODEL_CARD_TEXT
        return {
            "id": entry.id,
            "card": without_server_paths(card),
            "model_card": text.read_text() if text.is_file() else None,
            "registration": None if entry.version is None else registration(entry.version),
        }

    def promote(self, model_id: str) -> ModelVersion:
        """Make the registry version ``model_id`` its name's current version."""
        entry = self.resolve_model(model_id)
        registry = self._registry()
        if entry.version is None or registry is None:
            raise InputError(
                f"model {model_id!r} is not a registry version; promote one of the name:vN ids of GET /v1/models"
            )
        return registry.promote(entry.version.ref)

    # -- data sources ---------------------------------------------------------------------------
    def source(self, name: str | None) -> Source:
        """The data source ``name`` (None: the default), its path resolved (the demo synthesised)."""
        name = name or self.settings.source_name
        source = self.sources.get(name)
        if source is None:
            raise NotFound(f"unknown data source {name!r}; the sources are: {', '.join(self.sources)}")
        if source.path is None:
            source.path = self._cached(self._paths, name, lambda: self._source_path(source), None)
        return source

    def source_path(self, name: str) -> Path:
        """What open_cube reads for the data source ``name`` (for the jobs)."""
        path = self.source(name).path
        assert path is not None
        return path

    def _source_path(self, source: Source) -> Path:
        if source.spec != DEMO_SOURCE:
            return Path(source.spec).expanduser()
        from service.demo import ensure_demo_scene

        try:
            return ensure_demo_scene(self.settings.cache_dir) / "cube"
        except (CropstarError, OSError) as error:
            _log.error("cannot make the demo scene in %s: %s", self.settings.cache_dir, error)
            raise Unavailable(f"data source {source.name!r}: the demo scene cannot be made (the service log "
                              "says why)") from None

    def check_sources(self) -> None:
        """InputError naming every configured source path that does not exist (the demo is made later)."""
        missing = [
            f"{s.name}: {s.spec}" for s in self.sources.values()
            if s.spec != DEMO_SOURCE and not Path(s.spec).expanduser().exists()
        ]  # fmt: skip
        if missing:
            raise InputError(f"data sources not found: {'; '.join(missing)}")

    def cube(self, source: Source, bands: tuple[str, ...]) -> Cube:
        """The source's cube with ``bands``: in memory when it has at most ``precompute_max_pixels``
        pixels, else lazy (read around each request's fields)."""
        from cropstar.data.cube import open_cube

        def load() -> Cube:
            try:
                opened = open_cube(source.path, bands=list(bands))
                source.pixels = int(opened.data.sizes["y"] * opened.data.sizes["x"])
                return opened.compute() if source.pixels <= self.settings.precompute_max_pixels else opened
            except (CropstarError, OSError) as error:  # the configuration's fault, not the request's
                _log.error("data source %r cannot be read: %s", source.name, error)
                raise Unavailable(
                    f"data source {source.name!r} cannot be read with bands {', '.join(bands)} (the service log "
                    "says why)"
                ) from None

        return self._cached(self._cubes, ("cube", source.name, bands), load, None)

    # -- classification -------------------------------------------------------------------------
    def timed(self, entry: ModelEntry, kind: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.metrics.inference.labels(entry.id, kind).observe(time.perf_counter() - started)

    def probability_map(self, entry: ModelEntry, loaded: LoadedModel, source: Source) -> ProbabilityMap:
        """The model's pixel probabilities over the whole (in-memory) source, made once."""
        from cropstar.infer.predict import prepare_cube
        from service.probability_map import probability_map

        def make() -> ProbabilityMap:
            cube = self.cube(source, tuple(bands_to_read(loaded.card.bands)))
            prepared = prepare_cube(loaded.card, cube).compute()
            return self.timed(entry, "map", lambda: probability_map(loaded, prepared))

        key = ("map", str(entry.path), source.name)
        return self._cached(self._maps, key, make, self.settings.probability_maps)

    def classify_fields(
        self, model_id: str | None, source_name: str | None, fields: gpd.GeoDataFrame, *, aggregate: str,
        season: Season,
    ) -> gpd.GeoDataFrame:
        """:func:`cropstar.infer.fields.classify_fields` of ``fields`` over the source: from the
        precomputed pixel probabilities of an in-memory source when the season selects all of its
        acquisitions, else by the library, reading and classifying only around the fields (so a request's
        work follows its fields whatever season it names)."""
        from cropstar.infer.fields import classify_fields, in_season
        from service.probability_map import classify_fields_on_map

        entry, loaded = self.model(model_id)
        source = self.source(source_name)
        cube = self.cube(source, tuple(bands_to_read(loaded.card.bands)))
        if season is not None and len(in_season(cube, season).times) == len(cube.times):
            season = None  # the whole of the source's season
        if not cube.is_lazy and season is None:
            pixels = self.probability_map(entry, loaded, source)
            result = classify_fields_on_map(loaded, pixels, fields, aggregate=aggregate, repair=self.repair)
        else:
            scratch = self.settings.scratch_dir / "scratch"
            scratch.mkdir(parents=True, exist_ok=True)
            result = self.timed(entry, "fields", lambda: classify_fields(
                loaded, cube, fields, aggregate=aggregate, season=season, scratch=scratch, repair=self.repair,
                progress=deadline_check(self.settings.limits.request_seconds),
            ))  # fmt: skip
        for status, count in result["status"].value_counts().items():
            self.metrics.fields.labels(str(status)).inc(int(count))
        return result

    def class_map(self, model_id: str | None, source_name: str | None) -> Path:
        """The class map COG of the whole source by the model (:func:`cropstar.infer.raster.classify`,
        as ``cropstar classify`` writes it), made once per model and source into ``work_dir/maps`` and
        reused. Only for sources held in memory (at most ``precompute_max_pixels``): a larger one is
        for a ``classify-raster`` job (:class:`NoMap` says so)."""
        from cropstar.infer.raster import classify, model_fingerprint

        entry, loaded = self.model(model_id)
        source = self.source(source_name)
        cube = self.cube(source, tuple(bands_to_read(loaded.card.bands)))
        if cube.is_lazy:
            raise NoMap(f"data source {source.name!r} has {source.pixels} pixels, more than this service maps in a "
                        "request (precompute_max_pixels): classify it with a classify-raster job and view the "
                        "job's map")  # fmt: skip
        folder = self.settings.scratch_dir / "maps"

        def make() -> Path:
            path = folder / f"{source.name}-{model_fingerprint(loaded)[:16]}.tif"
            if not path.is_file():  # another worker process may have made it; it is renamed into place whole
                folder.mkdir(parents=True, exist_ok=True)
                parts = folder / f".{path.name}.parts-{os.getpid()}"
                self.timed(entry, "map", lambda: classify(loaded, cube, path, work_dir=parts, restart=True))
            return path

        return self._cached(self._paths, ("class_map", str(entry.path), source.name), make, None)

    # -- start-up -------------------------------------------------------------------------------
    def check(self) -> None:
        """Fast start-up checks (CropstarError naming the problem): the default model's card can be read
        and every configured source path exists."""
        from cropstar.model.artifact import read_card

        read_card(self.default_model_path())
        self.check_sources()

    def preload(self) -> None:
        """Load the default model and every source and precompute the default model's probabilities
        over the in-memory ones; sets ``ready`` (or ``problem``, naming what failed).

        Once loaded, every object alive (the model, the sources, the libraries' own) is moved out of
        the garbage collector's sight (``gc.freeze``; the app's lifespan undoes it at shutdown): a large
        request body allocates tens of thousands of lists, and each full collection it triggers would
        otherwise walk the whole heap — about 0.1 s with torch loaded, several per body, holding the GIL
        every other request needs."""
        started = time.perf_counter()
        try:
            entry, loaded = self.model(None)
            for source in self.sources.values():
                self.source(source.name)
                cube = self.cube(source, tuple(bands_to_read(loaded.card.bands)))
                if not cube.is_lazy:
                    self.probability_map(entry, loaded, source)
        except (CropstarError, OSError, NotFound, Unavailable) as error:
            self.problem = str(error)
            _log.error("start-up loading failed: %s", self.problem)
            return
        except Exception as error:  # noqa: BLE001 (a bug: /ready must say so, not "loading" forever)
            self.problem = f"unexpected {type(error).__name__} (a bug; see the service log)"
            _log.exception("start-up loading failed")
            return
        gc.collect()
        gc.freeze()
        self.ready = True
        _log.info("ready in %.1f s", time.perf_counter() - started)

    def status(self) -> dict[str, Any]:
        """What is loaded (for /ready)."""
        with self._lock:
            models = sorted({key[1] for key in self._models})
            maps = [{"model": key[1], "source": key[2]} for key in self._maps]
        return {
            "ready": self.ready,
            "problem": self.problem,
            "models_loaded": len(models),
            "data_sources": {
                s.name: {"resolved": s.path is not None, "pixels": s.pixels} for s in self.sources.values()
            },
            "probability_maps": len(maps),
        }


def registration(version: ModelVersion) -> dict[str, Any]:
    """A registry version as the API shows it (its folder left out: clients name models by id)."""
    record = version.to_dict()
    record.pop("path", None)
    record["id"] = record.pop("ref")
    return without_server_paths(record)
