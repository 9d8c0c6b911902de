"""Training settings as a pydantic model, read from YAML with ``key.sub=value`` overrides
(configs/crop_paper.yaml holds the paper's crop protocol, §5.2: STAR, 128 units, Adam 1e-3,
batch 500, 30 epochs; model selection by the lowest validation loss; the paper names no gate-bias
initialisation for crops, and zero was measured best, docs/validation.md).

Every section forbids unknown keys, so a typo fails with the key's name and the valid keys of its
section; :func:`load_config` turns pydantic's validation errors into one-line :class:`InputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cropstar.errors import InputError
from cropstar.files import read_yaml_mapping
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.init import BiasInit, WeightInit, gate_bias_problem

Task = Literal["per_timestep", "per_sequence"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """The deep RNN and its head (``head`` None: the task's own head; ``bias_init`` of the memory
    gates: zero (the default, measured best for crops at depth), chrono with ``t_max`` (None: the
    dataset's sequence length), or constant with
    ``gate_bias``, the bias of the gate weighing the new input, e.g. STAR's b_k (see
    :mod:`cropstar.nn.cells`); ``use_mask`` False: the model reads every step, gap-filled ones
    included, instead of keeping its state over masked steps)."""

    cell: str = "star"
    hidden_size: int = Field(128, ge=1)
    num_layers: int = Field(4, ge=1)
    head: Literal["per_timestep", "per_sequence", "final_state"] | None = None
    weight_init: WeightInit = "orthogonal"
    bias_init: BiasInit = "zero"
    t_max: int | None = Field(None, ge=2)
    gate_bias: float | None = Field(None, allow_inf_nan=False)
    use_mask: bool = True

    @field_validator("cell")
    @classmethod
    def _known_cell(cls, cell: str) -> str:
        if cell not in DENSE_CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(DENSE_CELLS)}")
        return cell

    @model_validator(mode="after")
    def _gate_bias_with_constant(self) -> ModelConfig:
        problem = gate_bias_problem(self.bias_init, self.gate_bias)
        if problem:
            raise ValueError(problem)
        return self


class OptimiserConfig(_Section):
    """``adam`` / ``adamw`` use ``betas``, ``sgd`` uses ``momentum``; ``weight_decay`` is L2 (adamw: decoupled)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class ScheduleConfig(_Section):
    """Learning rate at optimisation step s of S, after a linear warm-up from lr/25 to lr over the
    first ``warmup`` fraction of the steps (W of them; then p = (s − W)/(S − W)): ``none`` constant;
    ``polynomial`` final + (lr − final)(1 − p)^power (the paper's gesture protocol: to 1e-6 over 30
    epochs); ``cosine`` final + (lr − final)(1 + cos πp)/2; ``one_cycle`` (Smith & Topin 2019, as
    torch's OneCycleLR) the warm-up along a half cosine instead of a line, then the cosine down."""

    name: Literal["none", "polynomial", "cosine", "one_cycle"] = "none"
    final_lr: float = Field(1e-6, ge=0)
    power: float = Field(1.0, gt=0)
    warmup: float = Field(0.0, ge=0, lt=1)


class AugmentConfig(_Section):
    """Training-time augmentation: Gaussian noise of ``noise_std`` (in normalised units) added to the
    inputs, each valid step masked with probability ``drop_steps`` (simulated cloud gaps), and each
    series shifted in time by a whole number of steps drawn uniformly from [−``shift_steps``,
    ``shift_steps``] (an earlier or later season; per-sequence labels only), the steps shifted in
    from outside repeating the edge value, masked."""

    noise_std: float = Field(0.0, ge=0)
    drop_steps: float = Field(0.0, ge=0, lt=1)
    shift_steps: int = Field(0, ge=0)


class EarlyStoppingConfig(_Section):
    """Stop after ``patience`` epochs without a validation loss below the best − ``min_delta`` (None: never)."""

    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    """All settings of ``cropstar train``; ``batch_size`` is the global batch (split over ranks)."""

    model: ModelConfig = ModelConfig()
    task: Task | None = None
    optimiser: OptimiserConfig = OptimiserConfig()
    lr_schedule: ScheduleConfig = ScheduleConfig()
    batch_size: int = Field(500, ge=1)
    epochs: int = Field(30, ge=1)
    #: A budget in optimisation steps instead of epochs: the run takes as many epochs as it needs to
    #: make ``steps`` updates (a small dataset gets as many updates as a large one).
    steps: int | None = Field(None, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    augment: AugmentConfig = AugmentConfig()
    device: str = "auto"
    amp: bool = False
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    #: torch.compile the model (the cells' own loop, compiled; the fused layers are not traced). Off by
    #: default: on CPU it costs minutes of compiling and ran slower than the fused layers
    #: (docs/benchmarks.md, "RNN speed").
    compile: bool = False
    num_workers: int = Field(0, ge=0)
    class_weights: Literal["none", "balanced"] = "none"

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        kind, _, index = device.partition(":")
        if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        return device

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(
    path: Path | str | None = None, overrides: Sequence[str] = (), *, overrides_from: str = "override"
) -> TrainConfig:
    """Settings from the YAML file ``path`` (None: the defaults), then ``overrides`` such as
    ``model.num_layers=8`` or ``early_stopping.patience=5`` (values parsed as YAML scalars).

    An invalid value is blamed on its source: the override that set it (named with
    ``overrides_from``, e.g. ``--set``: "invalid value given with --set batch_size=0: …"), else the file.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    set_by = [(_apply_override(data, override), override.strip()) for override in overrides]
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        file = "invalid training settings" + (f" in {path}" if path is not None else "")
        blamed: dict[str, list[str]] = {}
        for location, problem in _problems(error, TrainConfig):
            culprit = next(
                (f"invalid value given with {overrides_from} {text}"
                 for key, text in reversed(set_by) if location[: len(key)] == key),
                file,
            )  # fmt: skip
            blamed.setdefault(culprit, []).append(problem)
        raise InputError("; ".join(f"{c}: {'; '.join(p)}" for c, p in blamed.items())) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "training config")


def _apply_override(data: dict[str, Any], override: str) -> tuple[str, ...]:
    """Set the value of ``override`` (``key.sub=value``) in ``data``; returns the key's parts."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"override {override!r} must read key=value, e.g. model.num_layers=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"cannot parse the value of override {override!r}: {error}") from None
    parts = key.split(".")
    section: type[BaseModel] = TrainConfig
    target = data
    for depth, part in enumerate(parts[:-1]):
        _check_key(section, parts[: depth + 1])
        annotation = section.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise InputError(
                f"setting {'.'.join(parts[: depth + 1])!r} has no sub-keys (in override {override!r})"
            )
        existing = target.get(part)
        target[part] = dict(existing) if isinstance(existing, dict) else {}
        target, section = target[part], annotation
    _check_key(section, parts)
    target[parts[-1]] = value
    return tuple(parts)


def _check_key(section: type[BaseModel], path: Sequence[str]) -> None:
    if path[-1] not in section.model_fields:
        raise InputError(_unknown_key_message(section, path))


def _unknown_key_message(section: type[BaseModel], path: Sequence[str]) -> str:
    where = ".".join(path[:-1]) or "the top level"
    return f"unknown setting {'.'.join(path)!r}; valid keys of {where}: {', '.join(section.model_fields)}"


def _section_at(model: type[BaseModel], path: Sequence[str]) -> type[BaseModel]:
    for part in path:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


def condense(error: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error as one line: ``field: message (got value)`` per problem, unknown keys with
    the valid keys of their section."""
    return "; ".join(problem for _, problem in _problems(error, model))


def _problems(error: ValidationError, model: type[BaseModel]) -> list[tuple[tuple[str, ...], str]]:
    """Each problem of a pydantic error: its location (key parts) and its one-line description."""
    problems = []
    for item in error.errors():
        path = [str(p) for p in item["loc"]]
        if item["type"] == "extra_forbidden":
            problems.append((tuple(path), _unknown_key_message(_section_at(model, path[:-1]), path)))
            continue
        message = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] in ("missing", "value_error") else f" (got {item['input']!r})"
        problems.append((tuple(path), f"{'.'.join(path) or 'settings'}: {message}{got}"))
    return problems
