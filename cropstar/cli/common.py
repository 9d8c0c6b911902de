"""What every ``cropstar`` door shares: the typer app, consoles, one-line errors, progress bars and
the options several commands take."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def stage_progress(
    unit: str = "", transient: bool = False, rates: dict[str, str] | None = None
) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display; yields ``report(stage, done, total)``, one bar per stage; ``rates``:
    the stages whose speed to show, and its unit (e.g. {"classifying pixels": "px"})."""
    rates = rates or {}
    columns: list[Any] = [TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    if rates:
        columns.append(RateColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err_console, transient=transient) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate_unit=rates.get(stage, ""))
            bar.update(tasks[stage], completed=done)

        yield report


BandsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated bands. \\[default: B02,B03,B04,B08,B11,B12]")
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
