"""What every ``cropstar`` door shares: the typer app, consoles, one-line errors, progress (bars in a
terminal, log lines with an ETA elsewhere) and the options several commands take."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from cropstar import __version__
from cropstar.errors import CropstarError

app = typer.Typer(
    name="cropstar",
    help="Crop classification from Sentinel-2 time series with deep STAR recurrent networks.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """Turn expected errors into one line on stderr and exit code 2 — no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CropstarError as error:
            err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
            )
            err_console.print(
                f"[red]error:[/red] invalid settings: {problems}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def csv_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _version(value: bool) -> None:
    if value:
        console.print(f"cropstar {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Crop classification from Sentinel-2 time series with deep STAR recurrent networks."""


class RateColumn(ProgressColumn):
    """A task's speed per second in its field ``rate_unit`` (blank without one, or until rich has
    measured a speed)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("rate_unit")
        return Text(f"{task.speed:,.0f} {unit}/s" if unit and task.speed else "")


#: ``report(stage, done, total, info=None)``: ``done`` of ``total`` units of ``stage`` are finished;
#: ``info`` a short status shown beside it (e.g. the last losses; None keeps the previous one).
Report = Callable[..., None]


def format_duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _StageRun:
    """One pass of a stage through its units (a stage that starts again, e.g. an epoch's batches,
    begins a new pass)."""

    start: float
    last_line: float
    done: int = 0
    tenths: int = 0
    info: str = ""


class ProgressLog:
    """Progress as log lines, for a stderr that is not a terminal (a pipe, a log file, a CI job).

    A line ``stage: done/total unit (pct%), elapsed 1m05s, ETA 2m10s[, info]`` when a stage ends or
    passes another tenth of its total (a tenth only ``min_gap`` seconds or more after the stage's
    last line, so that quick stages print just their end), and in any case when ``every`` seconds
    have gone by since the last line. ``inner`` stages (nested in another, e.g. an epoch's batches) get only the
    periodic lines. Elapsed time counts from the start of the stage's pass: for a stage, from the end
    of the last stage that finished before it (or the start); for an inner stage, from the last
    report of any stage (its outer stage's); a stage whose ``done`` goes down starts a new pass. The
    ETA extrapolates the pass's mean rate so far.
    """

    def __init__(
        self,
        console: Console,
        unit: str = "",
        every: float = 30.0,
        inner: Collection[str] = (),
        min_gap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.unit, self.inner, self.clock = console, unit, set(inner), clock
        self.every, self.min_gap = every, min_gap
        self._last_report = self._last_finish = self._last_line = clock()
        self._runs: dict[str, _StageRun] = {}
        self._lock = threading.Lock()

    def report(self, stage: str, done: int, total: int | None, info: str | None = None) -> None:
        with self._lock:
            now = self.clock()
            run = self._runs.get(stage)
            inner = stage in self.inner
            if run is None or done < run.done:
                start = self._last_report if inner else self._last_finish
                run = self._runs[stage] = _StageRun(start=start, last_line=start)
            self._last_report = now
            run.done = done
            if info is not None:
                run.info = info
            tenths = min(10, done * 10 // total) if total else 0
            if tenths == 10 and not inner:
                self._last_finish = now
            passed, run.tenths = tenths > run.tenths, max(run.tenths, tenths)
            milestone = passed and not inner and (tenths == 10 or now - run.last_line >= self.min_gap)
            if milestone or (now - self._last_line >= self.every and done > 0):
                self._last_line = run.last_line = now
                self.console.print(self.line(stage, done, total, now - run.start, run.info),
                                   highlight=False, soft_wrap=True, markup=False)  # fmt: skip

    def line(self, stage: str, done: int, total: int | None, elapsed: float, info: str = "") -> str:
        """``stage: done/total unit (pct%), elapsed …, ETA …[, info]``."""
        unit = f" {self.unit}" if self.unit else ""
        if total:
            parts = [f"{stage}: {done:,}/{total:,}{unit} ({done / total:.0%})"]
            parts.append(f"elapsed {format_duration(elapsed)}")
            if done >= total:
                parts.append("done")
            elif done > 0:
                parts.append(f"ETA {format_duration(elapsed / done * (total - done))}")
        else:
            parts = [f"{stage}: {done:,}{unit}", f"elapsed {format_duration(elapsed)}"]
        return ", ".join(parts + ([info] if info else []))


@contextmanager
def stage_progress(
    unit: str = "",
    transient: bool = False,
    rates: dict[str, str] | None = None,
    inner: Collection[str] = (),
    every: float = 30.0,
) -> Iterator[Report]:
    """Progress of a long command on stderr; yields ``report(stage, done, total, info=None)``.

    In a terminal, a rich display with one bar per stage (elapsed time, the ``info`` text, and for the
    stages in ``rates`` their speed in its unit, e.g. {"classifying pixels": "px"}); ``transient``
    removes it at the end. Elsewhere (stderr piped or redirected), :class:`ProgressLog` lines with
    done/total, elapsed time and an ETA; ``inner`` stages there get only the line every ``every`` s.
    """
    if not err_console.is_interactive:
        yield ProgressLog(err_console, unit=unit, every=every, inner=inner).report
        return
    rates = rates or {}
    columns: list[Any] = [TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    if rates:
        columns.append(RateColumn())
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=err_console, transient=transient) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int | None, info: str | None = None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate_unit=rates.get(stage, ""), info="")
            bar.update(tasks[stage], completed=done, total=total, **({} if info is None else {"info": info}))

        yield report


BandsOpt = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated input features: Sentinel-2 bands (any alias), spectral indices (NDVI, EVI "
        "…), and from tables Sentinel-1 VV / VH or any other column name. \\[default: B02,B03,B04,B08,B11,B12]"
    ),
]
IndicesOpt = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated spectral indices to add as features, computed from the bands "
        "(NDVI, EVI, NDWI, NDMI, NDRE, NBR, SAVI); a model trained on them computes them again "
        "at inference."
    ),
]
MinSamplesOpt = Annotated[int, typer.Option(help="Drop classes with fewer samples (reported).")]
FractionsOpt = Annotated[str, typer.Option(help="Train, validation, test fractions (split by field).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split.")]
ClassTableOpt = Annotated[
    Path | None, typer.Option(help="Fixed class table: JSON records, a model.json or a dataset folder.")
]
UnknownOpt = Annotated[
    str, typer.Option(help="Codes missing from the legend / class table: skip, error or keep.")
]
ShardOpt = Annotated[int, typer.Option(help="Samples per shard.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing dataset at --out.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def parse_fractions(value: str) -> list[float]:
    from cropstar.errors import InputError

    try:
        return [float(v) for v in csv_list(value) or []]
    except ValueError:
        raise InputError(f"--fractions must be three comma-separated numbers, got {value!r}") from None


BoaOffsetOpt = Annotated[
    float | None,
    typer.Option(
        help="L2A BOA offset in DN (0 or -1000) for every product of the cube, overriding the one decided "
        "from each product's processing baseline (e.g. 0 for Earth Search items whose COGs are harmonised "
        "although their metadata says otherwise)."
    ),
]
RegistryOpt = Annotated[Path, typer.Option(envvar="CROPSTAR_REGISTRY", help="Model registry folder.")]
ModelArg = Annotated[
    str, typer.Option("--model", help="Model artifact folder, or a registry reference (name, name:v3).")
]
PackagedModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model artifact folder or registry reference (name, name:v3). \\[default: the packaged model]",
    ),
]
