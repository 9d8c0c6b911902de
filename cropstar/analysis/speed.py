"""Speed and peak memory of cropstar's deep STAR stack against ``torch.nn.LSTM`` / ``nn.GRU``.

Every model is built at equal depth L and hidden size H: ``make_rnn("star", I, H, L)`` (whatever
implementation ``make_rnn`` builds), ``torch.nn.LSTM(I, H, L, batch_first=True)``, ``torch.nn.GRU``
likewise, and optionally cropstar's own cells (``lstm``, ``lstm_wf``, ``vrnn``, …, via ``make_rnn``).

**Cases** (:data:`DEFAULT_CASES`): a training step — forward, then backward of the mean of every
output (B, T, H), parameter gradients set to None first — and an inference pass under
``torch.inference_mode``, at the crop shape (B=256, T=26, I=54, H=128, L=4), inference also at
B=4096, and pixel MNIST (B=100, T=784, I=1, H=128, L=4). cropstar's stacks get a (B, T) validity mask
with about 80% True (as Sentinel-2 sequences with cloud gaps); torch's LSTM / GRU take no mask, so
they run every step.

**Timing** (:func:`time_case`): all models of a case live in one process; each runs ``warmup``
times, then ``repeats`` rounds call every model once, in an order rotated each round, so that load
from other work on the machine hits all models alike; the median per model counts. CUDA work is
synchronised before and after each call. The speed-up of STAR over a model is that model's median
over STAR's (> 1: STAR is faster).

**Peak memory of a training step** (:func:`peak_training_memory`), each (model, case) in a fresh
process so nothing an earlier run left behind hides an allocation (cropstar's fast path keeps
per-thread buffers between calls; a fresh process makes their first allocation count):

* the headline, ``tensor_peak_mb``: on CPU, ``torch.profiler`` with ``profile_memory=True`` records
  every allocation and free of the CPU allocator during one training step (the first; built model
  and inputs already in place); the running sum in time order peaks where the activations kept for backward,
  the workspaces (oneDNN's RNN workspace of nn.LSTM / nn.GRU is a tensor) and the gradients are
  alive together — that maximum is the step's peak above what existed before it. Deterministic,
  and blind to allocator slack. On CUDA: ``torch.cuda.max_memory_allocated`` above
  ``memory_allocated`` before the step (reset first) — the same quantity.
* on CPU, ``rss_peak_mb``: the resident peak during the first training step of another fresh
  process, not profiled
  (VmHWM, reset through /proc/self/clear_refs just before it), above its resident memory before it.
  It also counts what the tensor count cannot see (allocator fragmentation, oneDNN scratch memory
  outside torch's allocator, first-call code and thread stacks); not the profiler's own event records
  (which grow with the number of operations: tens of MB for STAR's many small ones), nor the C++ step
  loops' library (loaded before). None where /proc/self/clear_refs is not writable.

STAR's memory fraction of a model is STAR's peak over the model's (< 1: STAR needs less).
``star_step_impl`` records whether STAR's training steps ran the C++ step loops ("cpp") or the Python
ones ("python"; :mod:`cropstar.nn.star_steps`).
:data:`TARGETS` are the project's speed goals; :func:`check_targets` says which are met.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from cropstar.errors import InputError
from cropstar.nn.cells import DENSE_CELLS
from cropstar.nn.stack import make_rnn
from cropstar.nn.star_steps import compiled_steps, step_implementation

Progress = Callable[[str, int, int], None]

#: The model every ratio refers to.
REFERENCE = "star"
#: torch's fused recurrent layers, built as ``cls(I, H, L, batch_first=True)``.
TORCH_MODELS: dict[str, type[nn.RNNBase]] = {"torch_lstm": nn.LSTM, "torch_gru": nn.GRU}
DEFAULT_MODELS: tuple[str, ...] = ("star", "torch_lstm", "torch_gru")
LABELS: dict[str, str] = {
    "star": "STAR",
    "torch_lstm": "nn.LSTM",
    "torch_gru": "nn.GRU",
    **{cell: f"cropstar {cell}" for cell in DENSE_CELLS if cell != "star"},
}
#: Share of valid (True) steps in the mask given to cropstar's stacks.
VALID_FRACTION = 0.8


def label(model: str) -> str:
    """The name a table shows for ``model`` (``torch_lstm`` → ``nn.LSTM``)."""
    return LABELS.get(model, model)


class Case(BaseModel):
    """One measured situation: a training step or an inference pass at one shape x (B, T, I), H, L."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mode: Literal["train", "infer"]
    batch: int = Field(ge=1)
    steps: int = Field(ge=1)
    input_size: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    layers: int = Field(ge=1)
    warmup: int = Field(3, ge=0)
    repeats: int = Field(21, ge=1)
    quick_repeats: int = Field(3, ge=1)

    @property
    def shape(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("batch", "steps", "input_size", "hidden_size", "layers")}


CROP = {"steps": 26, "input_size": 54, "hidden_size": 128, "layers": 4}
PMNIST = {"batch": 100, "steps": 784, "input_size": 1, "hidden_size": 128, "layers": 4}
DEFAULT_CASES: tuple[Case, ...] = (
    Case(name="train", mode="train", batch=256, **CROP),
    Case(name="infer", mode="infer", batch=256, **CROP),
    Case(name="infer_b4096", mode="infer", batch=4096, **CROP, repeats=11),
    Case(name="pmnist_train", mode="train", **PMNIST, warmup=1, repeats=5, quick_repeats=2),
    Case(name="pmnist_infer", mode="infer", **PMNIST, warmup=1, repeats=7, quick_repeats=2),
)


@dataclass(frozen=True)
class Target:
    """One speed goal: STAR's speed-up over ``model`` at least ``threshold`` (``speedup``), or
    STAR's peak training-step memory at most ``threshold`` of ``model``'s, by tensor allocations
    (``memory``) or resident memory (``resident``)."""

    name: str
    description: str
    case: str
    model: str
    measure: Literal["speedup", "memory", "resident"]
    threshold: float

    def met_by(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.threshold if self.measure == "speedup" else value <= self.threshold


TARGETS: tuple[Target, ...] = (
    Target(
        name="train_vs_lstm",
        description="training step (256,26,54,128,4): STAR ≥ 2.5× faster than nn.LSTM",
        case="train", model="torch_lstm", measure="speedup", threshold=2.5,
    ),
    Target(
        name="train_vs_gru",
        description="training step (256,26,54,128,4): STAR ≥ 1.8× faster than nn.GRU",
        case="train", model="torch_gru", measure="speedup", threshold=1.8,
    ),
    Target(
        name="infer_b4096_vs_lstm",
        description="inference at B=4096: STAR ≥ 2.2× faster than nn.LSTM",
        case="infer_b4096", model="torch_lstm", measure="speedup", threshold=2.2,
    ),
    Target(
        name="train_memory_vs_lstm",
        description="peak training-step memory: STAR ≤ 45% of nn.LSTM's",
        case="train", model="torch_lstm", measure="memory", threshold=0.45,
    ),
    Target(
        name="train_resident_vs_lstm",
        description="peak training-step resident memory: STAR ≤ 45% of nn.LSTM's",
        case="train", model="torch_lstm", measure="resident", threshold=0.45,
    ),
)  # fmt: skip


class SpeedSettings(BaseModel):
    """Settings of the benchmark (``cropstar bench speed``, ``benchmarks/rnn_speed.py``)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1)
    cases: list[Case] = Field(default_factory=lambda: list(DEFAULT_CASES), min_length=1)
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)  # None: every core
    quick: bool = False  # each case's quick_repeats, one warm-up, memory only where a target needs it
    memory: bool = True
    fresh_process: bool = True  # memory measured in a fresh process per (model, case)
    valid_fraction: float = Field(VALID_FRACTION, gt=0.0, le=1.0)
    seed: int = 0

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        known = [*TORCH_MODELS, *DENSE_CELLS]
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        if REFERENCE not in models:
            raise ValueError(f"the models must include {REFERENCE!r}: every ratio refers to it")
        if len(set(models)) != len(models):
            raise ValueError(f"models repeated in {', '.join(models)}")
        return models

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if torch.device(device).type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
        return device

    @model_validator(mode="after")
    def _unique_cases(self) -> SpeedSettings:
        names = [c.name for c in self.cases]
        if len(set(names)) != len(names):
            raise ValueError(f"case names repeated in {', '.join(names)}")
        return self

    @property
    def num_threads(self) -> int:
        """``threads``, or every core this process may run on."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    def planned(self) -> list[tuple[Case, int, int, bool]]:
        """(case, warm-up runs, repeats, measure memory) per case, as this run will do them."""
        target_cases = {t.case for t in TARGETS if t.measure in ("memory", "resident")}
        plan = []
        for case in self.cases:
            memory = self.memory and case.mode == "train" and (not self.quick or case.name in target_cases)
            if self.quick:
                plan.append((case, min(case.warmup, 1), case.quick_repeats, memory))
            else:
                plan.append((case, case.warmup, case.repeats, memory))
        return plan


def select_cases(names: Sequence[str] | None = None, **shape: int | None) -> list[Case]:
    """The default cases named in ``names`` (all if None), each with the given non-None shape fields
    (batch, steps, input_size, hidden_size, layers) replaced."""
    by_name = {c.name: c for c in DEFAULT_CASES}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise InputError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    update = {k: v for k, v in shape.items() if v is not None}
    bad = sorted(set(update) - set(DEFAULT_CASES[0].shape))
    if bad:
        raise InputError(f"unknown shape field(s) {', '.join(bad)}")
    for key, value in update.items():
        if value < 1:
            raise InputError(f"{key} must be a positive integer, got {value}")
    chosen = [by_name[n] for n in names] if names else list(DEFAULT_CASES)
    return [c.model_copy(update=update) for c in chosen]


# ---------------------------------------------------------------------------------------------
# models, inputs and the two steps
# ---------------------------------------------------------------------------------------------
def build_model(model: str, case: Case, device: str = "cpu") -> nn.Module:
    """``model`` at the case's sizes: a torch layer (``torch_lstm``, ``torch_gru``) or
    ``make_rnn(model, I, H, L, t_max=T)``."""
    if model in TORCH_MODELS:
        layer = TORCH_MODELS[model](case.input_size, case.hidden_size, case.layers, batch_first=True)
    elif model in DENSE_CELLS:
        t_max = case.steps if case.steps >= 2 else None
        layer = make_rnn(model, case.input_size, case.hidden_size, case.layers, t_max=t_max)
    else:
        raise InputError(f"unknown model {model!r}; choose from {', '.join([*TORCH_MODELS, *DENSE_CELLS])}")
    return layer.to(device)


def implementation(module: nn.Module) -> str:
    """What was measured: the module's class and its layers' classes."""
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    layers = getattr(module, "layers", None)
    if layers is not None:
        kinds = sorted({f"{type(layer).__module__}.{type(layer).__qualname__}" for layer in layers})
        name += f" of {len(layers)} × {', '.join(kinds)}"
    if hasattr(module, "fused"):  # cropstar's stacks: fused layers or the cells' own loop
        name += f" (fused={module.fused})"
    return name


def make_inputs(
    case: Case, device: str = "cpu", seed: int = 0, valid_fraction: float = VALID_FRACTION
) -> tuple[Tensor, Tensor]:
    """x: (B, T, I) standard normal, mask: (B, T) bool with about ``valid_fraction`` True."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, case.steps, case.input_size, generator=generator)
    mask = torch.rand(case.batch, case.steps, generator=generator) < valid_fraction
    return x.to(device), mask.to(device)


def forward(model: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """The top layer's outputs (B, T, H); torch's layers get no mask (they cannot take one)."""
    if isinstance(model, nn.RNNBase):
        return model(x)[0]
    return model(x, mask=mask)[0]


def training_step(model: nn.Module, x: Tensor, mask: Tensor) -> None:
    """Gradients to None, forward, backward of the mean of every output."""
    for parameter in model.parameters():
        parameter.grad = None
    forward(model, x, mask).mean().backward()


def inference_step(model: nn.Module, x: Tensor, mask: Tensor) -> None:
    with torch.inference_mode():
        forward(model, x, mask)


STEPS: dict[str, Callable[[nn.Module, Tensor, Tensor], None]] = {
    "train": training_step,
    "infer": inference_step,
}


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_case(
    case: Case,
    models: Mapping[str, nn.Module],
    x: Tensor,
    mask: Tensor,
    *,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of every model, ``repeats`` each after ``warmup`` calls; each round calls
    every model once, the order rotated by one per round (interleaved: noise hits all alike)."""
    step = STEPS[case.mode]
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    total = warmup + repeats
    stage = f"{case.name}: timing"

    def call(name: str) -> float:
        _synchronize(device)
        start = time.perf_counter()
        step(models[name], x, mask)
        _synchronize(device)
        return (time.perf_counter() - start) * 1e3

    for round_ in range(total):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = call(name)
            if round_ >= warmup:
                times[name].append(elapsed)
        if progress:
            progress(stage, round_ + 1, total)
    return times


def medians(times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: float(statistics.median(values)) for name, values in times.items()}


def speedups(median_ms: Mapping[str, float], reference: str = REFERENCE) -> dict[str, float]:
    """STAR's speed-up over every other model: that model's time over the reference's (> 1: faster)."""
    ref = median_ms[reference]
    return {name: value / ref for name, value in median_ms.items() if name != reference}


def memory_fractions(peaks: Mapping[str, float], reference: str = REFERENCE) -> dict[str, float]:
    """STAR's peak as a fraction of every other model's (< 1: STAR needs less)."""
    ref = peaks[reference]
    return {name: ref / value for name, value in peaks.items() if name != reference and value > 0}


# ---------------------------------------------------------------------------------------------
# peak memory of a training step
# ---------------------------------------------------------------------------------------------
def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _resident_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_resident_peak() -> bool:
    """Set this process's resident peak (VmHWM) to its resident memory now (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def allocation_peak(memory_events: Sequence[tuple[int, int]]) -> int:
    """The peak of the running sum of (time, bytes) allocation (+) / free (−) events in time order."""
    running = peak = 0
    for _, nbytes in sorted(memory_events, key=lambda event: event[0]):
        running += nbytes
        peak = max(peak, running)
    return peak


def _profiled_cpu_peak(step: Callable[[], None]) -> int:
    """Run ``step`` under torch.profiler (profile_memory) and return its CPU tensor-memory peak."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    return allocation_peak(events)


def measure_training_memory(
    model: str,
    case: Case,
    device: str = "cpu",
    seed: int = 0,
    valid_fraction: float = VALID_FRACTION,
    measure: str = "tensors",
) -> dict[str, Any]:
    """Peak memory of the first training step of ``model`` in THIS process (see the module
    docstring): ``measure="tensors"`` profiles it for ``tensor_peak_mb``; ``"resident"`` runs it
    unprofiled for ``rss_peak_mb`` (CPU only; None where the peak cannot be reset). The two need a
    first step each: a second step reuses the buffers the first left (allocator caches, the C++ step
    loops' pool), and the profiler's own records count as resident."""
    torch.manual_seed(seed)
    module = build_model(model, case, device)
    x, mask = make_inputs(case, device, seed, valid_fraction)
    if model in DENSE_CELLS:
        compiled_steps()  # a one-off: the C++ step loops' library is not the step's memory
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        training_step(module, x, mask)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"tensor_peak_mb": peak / 1e6, "method": "torch.cuda.max_memory_allocated above memory_allocated before"}
    if measure == "resident":
        before = _resident_bytes()
        can_reset = _reset_resident_peak()
        training_step(module, x, mask)
        rss_peak = (_resident_peak_bytes() - before) / 1e6 if can_reset else None
        return {"rss_peak_mb": rss_peak, "rss_method": "VmHWM above RSS before the first step, not profiled"}
    tensor_peak = _profiled_cpu_peak(lambda: training_step(module, x, mask))
    return {"tensor_peak_mb": tensor_peak / 1e6, "method": "torch.profiler CPU allocation peak of the first step"}


_WORKER = """
import json, sys, torch
from cropstar.analysis.speed import Case, measure_training_memory
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
result = measure_training_memory(args["model"], Case(**args["case"]), args["device"], args["seed"],
                                 args["valid_fraction"], args["measure"])
with open(args["out"], "w") as handle:
    json.dump(result, handle)
"""


def peak_training_memory(
    model: str,
    case: Case,
    *,
    device: str = "cpu",
    seed: int = 0,
    valid_fraction: float = VALID_FRACTION,
    threads: int | None = None,
    fresh_process: bool = True,
) -> dict[str, Any]:
    """:func:`measure_training_memory`, tensors and (on CPU) resident memory, each in a fresh Python
    process (``fresh_process``), or the tensors only in this one (``rss_peak_mb`` None)."""
    if not fresh_process:
        return {"rss_peak_mb": None, **measure_training_memory(model, case, device, seed, valid_fraction)}
    result: dict[str, Any] = {"rss_peak_mb": None}
    for measure in ("tensors", "resident") if torch.device(device).type == "cpu" else ("tensors",):
        result.update(_in_fresh_process(model, case, device, seed, valid_fraction, threads, measure))
    result["fresh_process"] = True
    return result


def _in_fresh_process(
    model: str, case: Case, device: str, seed: int, valid_fraction: float, threads: int | None, measure: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cropstar-memory-") as folder:
        out = Path(folder) / "memory.json"
        args = {
            "model": model,
            "case": case.model_dump(),
            "device": device,
            "seed": seed,
            "valid_fraction": valid_fraction,
            "threads": threads or torch.get_num_threads(),
            "measure": measure,
            "out": str(out),
        }
        done = subprocess.run(
            [sys.executable, "-c", _WORKER, json.dumps(args)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(
                f"memory of {model} ({case.name}) failed (exit {done.returncode}): {' | '.join(tail)}"
            )
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------
def check_targets(
    case_speedups: Mapping[str, Mapping[str, float]],
    case_memory_fractions: Mapping[str, Mapping[str, float]],
    case_shapes: Mapping[str, Mapping[str, int]] | None = None,
    targets: Sequence[Target] = TARGETS,
    case_resident_fractions: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Each target with the measured value (None where its case or model was not measured) and
    ``met`` (True / False / None). Inputs: {case: {model: STAR's speed-up}},
    {case: {model: STAR's memory fraction}} (tensor allocations), optionally {case: shape} — a target
    whose case ran at another shape than the issue's (:data:`DEFAULT_CASES`) keeps its value but is not
    judged — and {case: {model: STAR's resident-memory fraction}}."""
    issue_shapes = {c.name: c.shape for c in DEFAULT_CASES}
    sources = {"speedup": case_speedups, "memory": case_memory_fractions,
               "resident": case_resident_fractions or {}}  # fmt: skip
    rows = []
    for target in targets:
        source = sources[target.measure]
        value = source.get(target.case, {}).get(target.model)
        row = {**asdict(target), "value": value, "met": target.met_by(value)}
        shape = (case_shapes or {}).get(target.case)
        if value is not None and shape is not None and dict(shape) != issue_shapes.get(target.case):
            row.update(met=None, note="measured at another shape than the issue's: not judged")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# the whole benchmark
# ---------------------------------------------------------------------------------------------
def machine_info(device: str = "cpu") -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": device,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_speed_benchmark(settings: SpeedSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Time every case for every model and measure training-step peak memory; returns the JSON-ready
    result: machine, settings, per case the times (ms), medians, STAR's speed-ups and memory
    fractions, and the targets with whether each is met."""
    if torch.device(settings.device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {settings.device!r} asked for, but torch.cuda.is_available() is False")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.num_threads)
    started = datetime.now(UTC)
    load_before = _load()
    cases: list[dict[str, Any]] = []
    implementations: dict[str, str] = {}
    star_step_impl = step_implementation(settings.device)  # builds the C++ step loops before any timing
    try:
        for case, warmup, repeats, with_memory in settings.planned():
            torch.manual_seed(settings.seed)
            models = {name: build_model(name, case, settings.device) for name in settings.models}
            implementations.update({name: implementation(m) for name, m in models.items()})
            x, mask = make_inputs(case, settings.device, settings.seed, settings.valid_fraction)
            gc.collect()
            load = _load()
            times = time_case(
                case,
                models,
                x,
                mask,
                warmup=warmup,
                repeats=repeats,
                device=settings.device,
                progress=progress,
            )
            del models, x, mask
            median_ms = medians(times)
            entry: dict[str, Any] = {
                "name": case.name,
                "mode": case.mode,
                "shape": case.shape,
                "warmup": warmup,
                "repeats": repeats,
                "load_average_1min": [load, _load()],
                "times_ms": times,
                "median_ms": median_ms,
                "star_speedup": speedups(median_ms),
                "memory": None,
                "star_memory_fraction": None,
            }
            if with_memory:
                memory = {}
                for i, name in enumerate(settings.models):
                    if progress:
                        progress(f"{case.name}: memory", i, len(settings.models))
                    memory[name] = peak_training_memory(
                        name,
                        case,
                        device=settings.device,
                        seed=settings.seed,
                        valid_fraction=settings.valid_fraction,
                        threads=settings.num_threads,
                        fresh_process=settings.fresh_process,
                    )
                if progress:
                    progress(f"{case.name}: memory", len(settings.models), len(settings.models))
                entry["memory"] = memory
                entry["star_memory_fraction"] = memory_fractions(
                    {name: m["tensor_peak_mb"] for name, m in memory.items()}
                )
                rss = {name: m["rss_peak_mb"] for name, m in memory.items()}
                if all(v is not None and v > 0 for v in rss.values()):
                    entry["star_rss_fraction"] = memory_fractions(rss)
            cases.append(entry)
    finally:
        torch.set_num_threads(threads_before)
    notes = []
    if load_before is not None and load_before >= 0.5 and torch.device(settings.device).type == "cpu":
        notes.append(
            f"load average {load_before:.1f} at the start on {settings.num_threads} thread(s): other work "
            "shares the CPU; multi-threaded torch calls suffer most (each parallel region waits for every "
            "thread), so times and ratios are noisy — rerun on an idle machine or with fewer threads"
        )
    targets = check_targets(
        {c["name"]: c["star_speedup"] for c in cases},
        {c["name"]: c["star_memory_fraction"] for c in cases if c["star_memory_fraction"] is not None},
        {c["name"]: c["shape"] for c in cases},
        case_resident_fractions={c["name"]: c["star_rss_fraction"] for c in cases if c.get("star_rss_fraction")},
    )
    return {
        "benchmark": "rnn_speed",
        "started": started.isoformat(timespec="seconds"),
        "seconds": (datetime.now(UTC) - started).total_seconds(),
        "machine": {**machine_info(settings.device), "load_average_1min": [load_before, _load()]},
        "settings": {
            **settings.model_dump(exclude={"cases"}),
            "threads": settings.num_threads,
            "loss": "mean of every output (B, T, H); gradients set to None before each step",
            "mask": f"cropstar models: (B, T) mask with ~{settings.valid_fraction:.0%} valid steps; "
            "torch.nn.LSTM / nn.GRU take no mask and run every step",
            "memory_method": f"{'a fresh' if settings.fresh_process else 'this'} process per (model, case); "
            "a fresh process per (model, case, measure); tensor peak: torch.profiler CPU allocation events "
            "(CUDA: max_memory_allocated) during the first training step; RSS: VmHWM above RSS before the "
            "first training step of another process, not profiled",
        },
        "implementations": implementations,
        "star_step_impl": star_step_impl,
        "cases": cases,
        "targets": targets,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------
# presentation: tables, chart, files
# ---------------------------------------------------------------------------------------------
def _where(result: Mapping[str, Any]) -> str:
    threads = result["settings"]["threads"]
    return (
        result["machine"].get("gpu") or f"{result['machine']['cpu']}, {threads} thread{'s' * (threads != 1)}"
    )


def speed_tables(result: Mapping[str, Any]) -> list[Any]:
    """rich tables of a result: ms per model and STAR's speed-ups; peak memory; the targets."""
    from rich.table import Table

    models = result["settings"]["models"]
    others = [m for m in models if m != REFERENCE]
    where = _where(result)
    shapes = {(c["shape"]["hidden_size"], c["shape"]["layers"]) for c in result["cases"]}
    uniform = len(shapes) == 1
    sizes = f"H={next(iter(shapes))[0]}, L={next(iter(shapes))[1]}; " if uniform else ""
    speed = Table(title=f"Median ms per call ({sizes}{where}); model/STAR: STAR's speed-up")
    speed.add_column("case", justify="left")
    speed.add_column("B×T×I" if uniform else "B×T×I, H, L", justify="right")
    speed.add_column("runs", justify="right")
    for model in models:
        speed.add_column(label(model), justify="right")
    for model in others:
        speed.add_column(f"{label(model)}/STAR", justify="right")
    for case in result["cases"]:
        s = case["shape"]
        shape = f"{s['batch']}×{s['steps']}×{s['input_size']}"
        speed.add_row(
            case["name"],
            shape if uniform else f"{shape}, {s['hidden_size']}, {s['layers']}",
            str(case["repeats"]),
            *(f"{case['median_ms'][m]:,.1f}" for m in models),
            *(f"{case['star_speedup'][m]:.2f}×" for m in others),
        )
    tables = [speed]
    measured = [c for c in result["cases"] if c["memory"]]
    if measured:
        memory = Table(title="Peak training-step memory above the model and inputs (fresh process each)")
        for column in ("case", "model", "tensors MB", "STAR/model", "RSS MB", "STAR/model (RSS)"):
            memory.add_column(column, justify="left" if column in ("case", "model") else "right")
        for case in measured:
            for model in models:
                m = case["memory"][model]
                fraction = case["star_memory_fraction"].get(model)
                rss_fraction = case.get("star_rss_fraction", {}).get(model)
                memory.add_row(
                    case["name"],
                    label(model),
                    f"{m['tensor_peak_mb']:,.1f}",
                    "" if fraction is None else f"{fraction:.0%}",
                    "" if m["rss_peak_mb"] is None else f"{m['rss_peak_mb']:,.1f}",
                    "" if rss_fraction is None else f"{rss_fraction:.0%}",
                )
        tables.append(memory)
    goals = Table(title="Speed targets")
    for column in ("target", "measured", "goal", "met"):
        goals.add_column(column, justify="left" if column == "target" else "right")
    for t in result["targets"]:
        speedup = t["measure"] == "speedup"
        value = t["value"]
        shown = "not measured" if value is None else (f"{value:.2f}×" if speedup else f"{value:.0%}")
        if "note" in t:
            shown += " (other shape)"
        goal = f"≥ {t['threshold']:.1f}×" if speedup else f"≤ {t['threshold']:.0%}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "–"}[t["met"]]
        goals.add_row(t["description"], shown, goal, met)
    tables.append(goals)
    return tables


def plot_speed(result: Mapping[str, Any], path: Path) -> Path:
    """A bar chart, one panel per case: median ms per model (whiskers: min and max of the runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases, models = result["cases"], result["settings"]["models"]
    fig, axes = plt.subplots(
        1, len(cases), figsize=(2.2 + 2.1 * len(cases) * max(1, len(models) / 3), 3.6), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for ax, case in zip(axes[0], cases):
        values = [case["median_ms"][m] for m in models]
        low = [v - min(case["times_ms"][m]) for v, m in zip(values, models)]
        high = [max(case["times_ms"][m]) - v for v, m in zip(values, models)]
        bars = ax.bar(
            range(len(models)),
            values,
            yerr=[low, high],
            capsize=3,
            color=[colours(i) for i in range(len(models))],
        )
        ax.bar_label(
            bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.1f}" for v in values], fontsize=7, padding=2
        )
        ax.set_xticks(range(len(models)), [label(m) for m in models], rotation=30, ha="right", fontsize=8)
        s = case["shape"]
        ax.set_title(f"{case['name']}\nB={s['batch']} T={s['steps']} I={s['input_size']}", fontsize=9)
        ax.margins(y=0.15)
    axes[0][0].set_ylabel("ms per call (median)")
    where = _where(result)
    fig.suptitle(
        f"Deep RNNs, H={cases[0]['shape']['hidden_size']}, L={cases[0]['shape']['layers']} — {where}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_speed_report(result: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """The result as JSON at ``out`` and its bar chart beside it (same name, ``.png``)."""
    from cropstar.files import write_text_atomic

    json_path = write_text_atomic(out, json.dumps(result, indent=2))
    return json_path, plot_speed(result, out.with_suffix(".png"))
