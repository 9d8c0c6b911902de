"""``/v1/models``: the models requests may name, their cards, and promotion of a registry version
(the doors of :class:`cropstar.model.registry.ModelRegistry` list / show / promote)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from starlette.exceptions import HTTPException as StarletteHTTPException

from cropstar.model.artifact import read_card
from service.errors import problem_responses
from service.schemas import ModelCardDocument, ModelList, ModelSummary
from service.security import read_dependencies, require_scope
from service.settings import DEFAULT_MODEL_ID, Settings
from service.state import AppState, registration

ModelId = Annotated[
    str, Path(description="'default', or a registry reference: name:vN, name (its current version), "
              "name:current, name:latest.", max_length=200)
]


def _summary(model_id: str, folder: Any, *, default: bool, record: dict[str, Any] | None = None) -> dict[str, Any]:
    card = read_card(folder)
    summary = {
        "id": model_id, "name": card.name, "version": card.version, "default": default, "created": card.created,
        "task": card.task, "bands": list(card.bands),
        "classes": [{"id": e.id, "code": e.code, "name": e.name} for e in card.class_table],
        "metrics": {},
    }  # fmt: skip
    if record is not None:
        summary.update(
            name=record["name"], version=record["version"], current=record["current"],
            created=record["created"] or card.created, metrics=record["metrics"],
        )
    return summary


def make_router(settings: Settings, state: AppState) -> APIRouter:
    """The model routes: reads open (or keyed by ``read_requires_key``), promotion needs scope 'admin'."""
    router = APIRouter(prefix="/v1", tags=["models"])
    reads = read_dependencies(settings)

    @router.get(
        "/models", operation_id="list_models", summary="The models", response_model=ModelList,
        description="The model behind the id `default` and every registry version requests may name "
        "(with `current` marking each name's current version).",
        dependencies=reads, responses=problem_responses(401, 403),
    )  # fmt: skip
    def list_models() -> dict[str, Any]:
        default_path = state.default_model_path()
        models = [_summary(DEFAULT_MODEL_ID, default_path, default=True)]
        for version in state.registry_versions():
            record = registration(version)
            models.append(_summary(record["id"], version.path, default=version.path == default_path, record=record))
        return {"models": models}

    @router.api_route("/models/{model_id}:promote", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def promote_other_methods(model_id: str) -> None:
        """Only POST promotes; other methods would otherwise reach ``/models/{model_id}`` with a model
        id ending in ``:promote``."""
        raise StarletteHTTPException(405)

    @router.get(
        "/models/{model_id}", operation_id="show_model", summary="A model's card",
        response_model=ModelCardDocument,
        description="The model's `model.json` (architecture, classes, bands, time grid, normalisation, "
        "training provenance, metrics, STAC MLM fields), its MODEL_CARD.md text where it has one, and its "
        "registry record.",
        dependencies=reads, responses=problem_responses(401, 403, 404),
    )  # fmt: skip
    def show_model(model_id: ModelId) -> dict[str, Any]:
        return state.model_card(model_id)

    @router.post(
        "/models/{model_id}:promote", operation_id="promote_model", summary="Promote a registry version",
        response_model=ModelSummary,
        description="Make the registry version `model_id` (name:vN) the current version of its name, so "
        "that requests naming just the name use it. Needs an API key with scope `admin`.",
        dependencies=[Depends(require_scope(settings, "admin"))],
        responses=problem_responses(401, 403, 404, 422),
    )  # fmt: skip
    def promote_model(model_id: ModelId) -> dict[str, Any]:
        version = state.promote(model_id)
        record = registration(version)
        return _summary(record["id"], version.path, default=version.path == state.default_model_path(), record=record)

    return router
