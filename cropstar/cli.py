"""The ``cropstar`` command: thin doors onto the library (parse, call one function, format)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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


def _one_line_errors(func: F) -> F:
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
            err_console.print(f"[red]error:[/red] invalid settings: {problems}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _csv_list(value: str | None) -> list[str] | None:
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


@contextmanager
def _stage_progress(unit: str = "", transient: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display; yields ``report(stage, done, total)``, one bar per stage."""
    columns = [TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    with Progress(*columns, TimeElapsedColumn(), console=err_console, transient=transient) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        yield report


@app.command()
@_one_line_errors
def simulate(
    cells: Annotated[
        str | None, typer.Option(help="Comma-separated dense cells: star, vrnn, lstm, lstm_wf, gru, rhn.")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="Depth L of the lattice. \\[default: 12]")] = None,
    steps: Annotated[int | None, typer.Option(help="Sequence length T. \\[default: 30]")] = None,
    runs: Annotated[
        int | None, typer.Option(help="Runs averaged per lattice cell (paper: 10000). \\[default: 200]")
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(help="final (loss on h_T^L), all (on every top state), or final,all. \\[default: final]"),
    ] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden units per layer. \\[default: 64]")] = None,
    input_size: Annotated[int | None, typer.Option(help="Size of the input process. \\[default: 1]")] = None,
    alpha: Annotated[float | None, typer.Option(help="Input autocorrelation α. \\[default: 0.5]")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. \\[default: 0]")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda. \\[default: cpu]")] = None,
    chunk_size: Annotated[
        int | None, typer.Option(help="Runs vectorised at once (results do not depend on it). \\[default: 25]")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (e.g. configs/simulate.yaml); options override it.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/simulation"),
) -> None:
    """Simulate gradient magnitudes across the depth × time lattice (paper §3.1, Fig. 2, 6, 7).

    Reads nothing but its options. Writes to OUT: heatmap_{params,hidden,params_std,hidden_std}_{loss}.png,
    arrays/{cell}_{loss}_{statistic}.csv, simulation_{loss}.json, summary.csv, jacobian.{csv,json}
    (singular values of J and H at zero state, zero bias, orthogonal weights) and config.json.
    """
    from cropstar.analysis.report import SimulationConfig, write_simulation_report

    overrides = {
        "cells": _csv_list(cells), "layers": layers, "steps": steps, "runs": runs, "loss": _csv_list(loss),
        "hidden_size": hidden_size, "input_size": input_size, "alpha": alpha, "seed": seed,
        "device": device, "chunk_size": chunk_size,
    }
    if config is not None:
        settings = SimulationConfig.from_yaml(config, **overrides)
    else:
        settings = SimulationConfig(**{k: v for k, v in overrides.items() if v is not None})
    with _stage_progress("runs") as report:
        result = write_simulation_report(settings, out, progress=report)

    table = Table(title=f"Gradient flow, L={settings.layers}, T={settings.steps}, {settings.runs} runs")
    for column in ("cell", "loss", "bottom/top (depth)", "first/last (time)", "corner", "std/mean"):
        table.add_column(column, justify="right")
    for row in result["summary"]:
        table.add_row(row["cell"], row["loss"], f"{row['depth_ratio']:.3g}", f"{row['time_ratio']:.3g}",
                      f"{row['corner_ratio']:.3g}", f"{row['mean_normalised_std']:.3f}")
    console.print(table)
    jac = Table(title="Jacobian singular values at zero state, zero bias, orthogonal weights")
    for column in ("cell", "J min", "J mean", "J max", "H min", "H mean", "H max"):
        jac.add_column(column, justify="right")
    for row in result["jacobian"]:
        jac.add_row(row["cell"], *(f"{row[k]:.3f}" for k in ("J_min", "J_mean", "J_max", "H_min", "H_mean", "H_max")))
    console.print(jac)
    console.print(f"wrote {out}/ (heat maps: {out}/heatmap_params_{settings.loss[0]}.png)")


@app.command()
@_one_line_errors
def budget(
    cells: Annotated[str, typer.Option(help="Comma-separated cells (any make_rnn name).")] = "star,lstm,vrnn",
    hidden_size: Annotated[int, typer.Option(help="Hidden units (conv: filters) per layer.")] = 128,
    input_size: Annotated[int, typer.Option(help="Input features (conv: channels) per step.")] = 1,
    classes: Annotated[int, typer.Option(help="Number of classes of the linear head.")] = 10,
    depths: Annotated[str, typer.Option(help="Comma-separated depths.")] = "1,2,4,8,16",
    seq_len: Annotated[int, typer.Option(help="Steps per sequence (pixel MNIST: 784).")] = 784,
    task: Annotated[str, typer.Option(help="per_sequence or per_timestep head.")] = "per_sequence",
    out: Annotated[Path | None, typer.Option(help="Also write budget.csv and budget.json here.")] = None,
) -> None:
    """Parameters and multiply-adds per step and per sequence over depths (paper Table 2).

    Reads nothing; prints a table (counts include the classifier head and one bias per gate) and,
    with --out, writes OUT/budget.csv and OUT/budget.json.
    """
    from cropstar.analysis.budget import budget_table
    from cropstar.errors import InputError
    from cropstar.files import write_csv_atomic, write_text_atomic

    try:
        depth_list = [int(d) for d in _csv_list(depths) or []]
    except ValueError:
        raise InputError(f"--depths must be comma-separated integers, got {depths!r}") from None
    rows = budget_table(_csv_list(cells) or [], hidden_size, input_size, classes, depth_list,
                        seq_len=seq_len, task=task)  # type: ignore[arg-type]
    table = Table(title=f"Budget: H={hidden_size}, input {input_size}, {classes} classes, T={seq_len}, {task}")
    for column in ("cell", "layers", "parameters", "MACs / step", "MACs / sequence"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row.cell, str(row.num_layers), f"{row.parameters:,}", f"{row.macs_per_step:,}",
                      f"{row.macs_per_sequence:,}")
    console.print(table)
    if out is not None:
        dicts = [r.to_dict() for r in rows]
        write_text_atomic(out / "budget.json", json.dumps(dicts, indent=2))
        write_csv_atomic(out / "budget.csv", dicts)
        console.print(f"wrote {out}/budget.csv and budget.json")


@app.command()
@_one_line_errors
def synth(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    size: Annotated[int, typer.Option(help="Scene width and height in 10 m pixels (even).")] = 128,
    dates: Annotated[int, typer.Option(help="Acquisition dates over March–October 2026.")] = 26,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
) -> None:
    """A synthetic Sentinel-2 L2A scene near Munich (tile T32UPU, EPSG:32632) for demos and tests.

    Crop fields with class-specific phenology, clouds and shadows with a matching SCL layer, noise.

    Reads nothing; the same seed gives the same files. Writes to OUT:

    cube/T32UPU_{YYYYMMDDTHHMMSS}_{band}_{res}m.tif: one COG per date and band (uint16 DN, 0 = no data).

    Reflectance = (DN − 1000) / 10000; B02 B03 B04 B08 at 10 m, B05 B06 B07 B8A B11 B12 and SCL at 20 m.

    cube/metadata.json: processing baseline 05.09, BOA_ADD_OFFSET −1000, the files of each date.

    fields.geojson (field_id, crop, crop_code); truth/: labels.tif, field_ids.tif, class_table.json.
    """

    from cropstar.data.synthetic import make_scene, write_scene

    with _stage_progress("dates") as report:
        scene = make_scene(size=size, dates=dates, seed=seed, progress=report)
        write_scene(scene, out, progress=report)

    first, last = (str(t)[:10] for t in scene.times[[0, -1]])
    console.print(
        f"wrote {out}/: {len(scene.times)} dates ({first} … {last}, mean cloud cover "
        f"{scene.cloud_cover.mean():.0%}) × {len(scene.bands)} bands + SCL in cube/, "
        f"{len(scene.fields)} fields of {scene.fields['crop'].nunique()} classes in fields.geojson, truth/",
        highlight=False, soft_wrap=True,
    )


import_app = typer.Typer(
    name="import", no_args_is_help=True,
    help="Import point extractions into a cropstar dataset: each importer reads FILE and writes the dataset "
         "folder given by --out (Zarr; docs/data-formats.md).",
)
dataset_app = typer.Typer(
    name="dataset", no_args_is_help=True,
    help="Inspect cropstar datasets (the folders `cropstar import ... --out DATASET` writes); "
         "reads a dataset and writes nothing.",
)
app.add_typer(import_app, name="import")
app.add_typer(dataset_app, name="dataset")

_BandsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated bands. \\[default: B02,B03,B04,B08,B11,B12]")
]
_MinSamplesOpt = Annotated[int, typer.Option(help="Drop classes with fewer samples (reported).")]
_FractionsOpt = Annotated[str, typer.Option(help="Train, validation, test fractions (split by field).")]
_SeedOpt = Annotated[int, typer.Option(help="Seed of the split.")]
_ClassTableOpt = Annotated[
    Path | None, typer.Option(help="Fixed class table: JSON records, a model.json or a dataset folder.")
]
_UnknownOpt = Annotated[
    str, typer.Option(help="Codes missing from the legend / class table: skip, error or keep.")
]
_ShardOpt = Annotated[int, typer.Option(help="Samples per shard.")]
_OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing dataset at --out.")]
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def _fractions(value: str) -> list[float]:
    from cropstar.errors import InputError

    try:
        return [float(v) for v in _csv_list(value) or []]
    except ValueError:
        raise InputError(f"--fractions must be three comma-separated numbers, got {value!r}") from None


def _run_import(function: Callable[..., Any], as_json: bool, class_table: Path | None, **kwargs: Any) -> None:
    from cropstar.data.class_table import load_class_table

    table = load_class_table(class_table) if class_table is not None else None
    with _stage_progress(transient=True) as progress:
        report = function(class_table=table, progress=progress, **kwargs)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    summary = Table(title=f"Imported {report.source.name} → {report.out}", show_header=False)
    for key, value in (
        ("shape (N, T, C, P, P)", str(report.shape)),
        ("dates", f"{len(report.dates)} ({report.dates[0]} … {report.dates[-1]})"),
        ("bands", ", ".join(report.bands)),
        ("classes", str(len(report.class_table))),
        ("valid steps", f"{report.valid_fraction:.1%}"),
        ("train / val / test", " / ".join(str(v) for v in report.splits.values())),
    ):
        summary.add_row(key, value)
    console.print(summary)
    for skipped in report.skipped[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {skipped}", highlight=False, soft_wrap=True)
    if len(report.skipped) > 10:
        more = len(report.skipped) - 10
        err_console.print(f"[yellow]skipped[/yellow] … and {more} more", highlight=False)
    if report.dropped_classes:
        listed = ", ".join(f"{d['name']} ({d['samples']})" for d in report.dropped_classes)
        err_console.print(
            f"[yellow]dropped[/yellow] {len(report.dropped_classes)} classes under --min-samples: {listed}",
            highlight=False, soft_wrap=True,
        )
    for note in report.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)


@import_app.command("worldcereal")
@_one_line_errors
def import_worldcereal(
    parquet: Annotated[Path, typer.Argument(help="WorldCereal extraction parquet (long or wide format).")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    legend: Annotated[Path | None, typer.Option(help="Legend CSV naming the ewoc_codes.")] = None,
    bands: _BandsOpt = None,
    min_samples: _MinSamplesOpt = 1,
    fractions: _FractionsOpt = "0.7,0.15,0.15",
    seed: _SeedOpt = 0,
    class_table: _ClassTableOpt = None,
    unknown_codes: _UnknownOpt = "skip",
    shard_size: _ShardOpt = 4096,
    overwrite: _OverwriteOpt = False,
    as_json: _JsonOpt = False,
) -> None:
    """Import WorldCereal point extractions (P = 1, ewoc_code labels named from the legend).

    Reads PARQUET (65535 = no data, reflectance = DN / 10000) and the legend CSV; writes the dataset
    folder OUT, atomically. Samples without any valid date or with codes missing from the legend are
    skipped and listed.
    """
    from cropstar.data.importers import import_worldcereal as run

    _run_import(
        run, as_json, class_table, parquet=parquet, out=out, legend=legend, bands=_csv_list(bands),
        min_samples=min_samples, fractions=_fractions(fractions), seed=seed, unknown_codes=unknown_codes,
        shard_size=shard_size, overwrite=overwrite,
    )


@import_app.command("table")
@_one_line_errors
def import_table(
    file: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet table of extractions.")],
    label_column: Annotated[str, typer.Option(help="Column holding the class codes.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    layout: Annotated[
        str, typer.Option(help="wide ({band}_{t} columns), long (a date column) or auto.")
    ] = "auto",
    id_column: Annotated[
        str | None, typer.Option(help="Sample id column. \\[default: sample_id or id]")
    ] = None,
    field_column: Annotated[
        str | None,
        typer.Option(help="Field / parcel id column. \\[default: field_id or parcel_id; else the sample]"),
    ] = None,
    date_column: Annotated[
        str | None, typer.Option(help="Date column (long layout). \\[default: date, timestamp]")
    ] = None,
    start_date: Annotated[
        str | None, typer.Option(help="Wide layout: date of step 0. \\[default: the start_date column]")
    ] = None,
    freq: Annotated[
        str, typer.Option(help="Wide layout: pandas frequency of the steps (MS monthly, 10D).")
    ] = "MS",
    nodata: Annotated[float | None, typer.Option(help="Value meaning no data (NaN always does).")] = None,
    scale: Annotated[
        float | None,
        typer.Option(help="Factor to reflectance. \\[default: 1e-4 if values look like DN, else 1]"),
    ] = None,
    task: Annotated[str, typer.Option(help="per_sequence, or per_timestep (long layout).")] = "per_sequence",
    legend: Annotated[
        Path | None, typer.Option(help="CSV naming the class codes (code, name columns).")
    ] = None,
    bands: _BandsOpt = None,
    min_samples: _MinSamplesOpt = 1,
    fractions: _FractionsOpt = "0.7,0.15,0.15",
    seed: _SeedOpt = 0,
    class_table: _ClassTableOpt = None,
    unknown_codes: _UnknownOpt = "skip",
    shard_size: _ShardOpt = 4096,
    overwrite: _OverwriteOpt = False,
    as_json: _JsonOpt = False,
) -> None:
    """Import your own extractions: one row per sample (wide) or per sample and date (long).

    Reads FILE (and the legend); writes the dataset folder OUT, atomically. Skipped samples
    (no valid date, missing label, unknown code) and dropped classes are listed.
    """
    from cropstar.data.importers import import_table as run

    _run_import(
        run, as_json, class_table, file=file, out=out, label_column=label_column, layout=layout,
        id_column=id_column, field_column=field_column, date_column=date_column, start_date=start_date,
        freq=freq, nodata=nodata, scale=scale, task=task, legend=legend, bands=_csv_list(bands),
        min_samples=min_samples, fractions=_fractions(fractions), seed=seed, unknown_codes=unknown_codes,
        shard_size=shard_size, overwrite=overwrite,
    )


@dataset_app.command("info")
@_one_line_errors
def dataset_info(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: _JsonOpt = False,
    check: Annotated[
        bool, typer.Option(help="Also check the content (labels, splits, fingerprint).")
    ] = False,
) -> None:
    """Summarise a dataset: shape (N, T, C, P, P), classes, bands, dates, split sizes.

    Reads DATASET; writes nothing (prints a table, or JSON with --json).
    """
    from cropstar.data.dataset import open_dataset
    from cropstar.errors import DataError

    reader = open_dataset(dataset)
    summary = reader.info()
    problems = reader.validate() if check else []
    if check:
        summary["problems"] = problems
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        head = Table(title=str(dataset), show_header=False)
        dates = summary["dates"]
        for key, value in (
            ("shape (N, T, C, P, P)", str(tuple(summary["shape"]))),
            ("task", summary["task"]),
            ("bands", ", ".join(summary["bands"])),
            ("dates", f"{len(dates)} ({dates[0]} … {dates[-1]})"),
            ("train / val / test", " / ".join(str(v) for v in summary["splits"].values())),
            ("fields", str(summary["n_fields"])),
            ("valid steps", f"{summary['valid_fraction']:.1%}"),
            ("fingerprint", summary["fingerprint"][:16] + "…"),
        ):
            head.add_row(key, value)
        console.print(head)
        classes = Table(title=f"{len(summary['classes'])} classes")
        for column in ("id", "code", "name", "train", "val", "test"):
            classes.add_column(column, justify="left" if column == "name" else "right")
        for entry in summary["classes"]:
            classes.add_row(*(str(entry[key]) for key in ("id", "code", "name", "train", "val", "test")))
        console.print(classes)
    if problems:
        raise DataError(f"{dataset}: {len(problems)} problem(s): " + "; ".join(problems))


@app.command()
@_one_line_errors
def ingest(
    cube: Annotated[str, typer.Option(help="Sentinel-2 L2A source: a folder of per-date band rasters, NetCDF or Zarr.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (Zarr; docs/data-formats.md).")],
    fields: Annotated[
        Path | None, typer.Option(help="Field polygons: GeoJSON, GeoPackage, Shapefile or GeoParquet.")
    ] = None,
    label_column: Annotated[str | None, typer.Option(help="Column of the fields holding the class code.")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Instead of --fields: a label raster of class codes (nodata = unlabelled).")
    ] = None,
    field_raster: Annotated[
        Path | None, typer.Option(help="With --labels: a raster of field ids (default: connected patches).")
    ] = None,
    name_column: Annotated[str | None, typer.Option(help="Column naming the classes (e.g. crop).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Column of unique field ids. \\[default: field_id/id]")] = None,
    bands: _BandsOpt = None,
    time: Annotated[str | None, typer.Option(help="START,END dates to keep, e.g. 2026-03-01,2026-10-31.")] = None,
    period: Annotated[str, typer.Option(help="Time grid: 10D, dekad, MS (monthly), any pandas offset, or none.")] = "10D",
    patch_size: Annotated[int, typer.Option(help="Patch width P (odd; 1 for single pixels).")] = 3,
    task: Annotated[
        str, typer.Option(help="per_sequence (one label per sample) or per_timestep (a label per step).")
    ] = "per_sequence",
    unobserved: Annotated[
        str,
        typer.Option(
            help="per_timestep: a step without a clear observation gets the class of its condition "
            "(conditions: cloud, cloud shadow, snow, no data), one 'cloud / no observation' class (class), "
            "or −1 (ignore)."
        ),
    ] = "conditions",
    mask_snow: Annotated[bool, typer.Option(help="Also treat SCL snow (11) as invalid.")] = False,
    dilation: Annotated[int, typer.Option(help="Grow SCL clouds and shadows by this many pixels.")] = 0,
    fractions: _FractionsOpt = "0.7,0.15,0.15",
    seed: _SeedOpt = 0,
    class_table: _ClassTableOpt = None,
    shard_size: _ShardOpt = 4096,
    overwrite: _OverwriteOpt = False,
    like: Annotated[
        str | None,
        typer.Option(help="A model (folder or registry reference) whose bands, patch size and time grid "
                     "(its period and steps, in this cube's season) the dataset takes: to evaluate or "
                     "retrain it on a new season."),
    ] = None,
    registry: _RegistryOpt = Path("models"),
    as_json: _JsonOpt = False,
) -> None:
    """Build a training dataset from a Sentinel-2 cube and labelled field polygons (or a label raster).

    Reads the cube lazily (cloud-masked by SCL, composited on the --period grid, gaps filled) and the
    fields with --label-column (reprojected to the cube's CRS) or --labels; every labelled pixel centre
    becomes one P × P patch sequence. Writes the dataset folder OUT; fields outside the cube, without
    a label or with an unknown code, and pixels never observed, are skipped and reported.
    """
    from cropstar.data.class_table import load_class_table
    from cropstar.data.cube import open_cube
    from cropstar.data.fields import read_fields
    from cropstar.data.ingest import ingest as from_fields
    from cropstar.data.ingest import ingest_label_raster
    from cropstar.errors import InputError
    from cropstar.train.artifact import on_model_grid, read_card
    from cropstar.train.registry import resolve_model

    if (fields is None) == (labels is None):
        raise InputError("give either --fields with --label-column, or --labels (a label raster)")
    if fields is not None and label_column is None:
        raise InputError("--fields needs --label-column (the column holding each field's class code)")

    time_range = tuple(_csv_list(time) or []) or None
    card = read_card(resolve_model(like, registry)) if like is not None else None
    band_list = list(card.bands) if card is not None and bands is None else _csv_list(bands)
    opened = open_cube(cube, bands=band_list, time=time_range, mask_snow=mask_snow, dilation=dilation)
    table = load_class_table(class_table) if class_table is not None else None
    provenance = {"command": "cropstar ingest", "cube_source": str(cube), "labels": str(fields or labels)}
    grid = None if period.lower() == "none" else period
    if card is not None:  # composited here onto the model's grid; ingest keeps those steps
        opened, grid, patch_size = on_model_grid(card, opened), None, card.patch_size
        provenance.update(period=card.time_grid.period, like_model=str(like))
    options = {
        "patch_size": patch_size, "period": grid, "class_table": table, "task": task, "unobserved": unobserved,
        "fractions": _fractions(fractions), "seed": seed, "shard_size": shard_size, "overwrite": overwrite,
        "provenance": provenance,
    }
    with _stage_progress("shards") as progress:
        if fields is not None:
            polygons = read_fields(fields, id_column=id_column, label_column=label_column)
            report = from_fields(opened, polygons, str(label_column), out, name_column=name_column,
                                 progress=progress, **options)
        else:
            report = ingest_label_raster(opened, labels, out, field_raster=field_raster, progress=progress,
                                         **options)
    problems = [f"{p.field_id}: {p.problem}" for p in report.problems]
    if as_json:
        typer.echo(json.dumps({"path": str(report.path), "samples": report.samples, "fields": report.fields,
                               "classes": report.classes, "problems": problems,
                               "pixels_without_observation": report.pixels_without_observation}, indent=2))
        return
    console.print(f"wrote {report.path}: {report.samples:,} samples from {report.fields} fields, "
                  f"{report.classes} classes", highlight=False, soft_wrap=True)
    for line in problems[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {line}", highlight=False, soft_wrap=True)
    if len(problems) > 10:
        err_console.print(f"[yellow]skipped[/yellow] … and {len(problems) - 10} more (listed in the provenance)")
    if report.pixels_without_observation:
        err_console.print(f"[yellow]skipped[/yellow] {report.pixels_without_observation} field pixels "
                          "without any valid observation", highlight=False)


# ---------------------------------------------------------------------------------------------
# models: evaluate, registry
# ---------------------------------------------------------------------------------------------
models_app = typer.Typer(
    name="models", no_args_is_help=True,
    help="The model registry: versions of trained models (artifact folders), their metadata and the "
         "`current` version of each name. Reads and writes the registry folder (--registry).",
)
app.add_typer(models_app, name="models")

_RegistryOpt = Annotated[
    Path, typer.Option(envvar="CROPSTAR_REGISTRY", help="Model registry folder.")
]
_ModelArg = Annotated[
    str, typer.Option("--model", help="Model artifact folder, or a registry reference (name, name:v3).")
]


@app.command()
@_one_line_errors
def evaluate(
    model: _ModelArg,
    data: Annotated[Path, typer.Option(help="Dataset folder (cropstar ingest / import).")],
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Folder for metrics.json and the plots.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 4096,
    registry: _RegistryOpt = Path("models"),
    as_json: _JsonOpt = False,
) -> None:
    """Accuracy of a model on one split of a dataset: overall accuracy, kappa, macro / weighted F1,
    per-class precision / recall / F1 and the confusion matrix (per step too for per-time-step models).

    Reads MODEL and DATA; writes OUT/metrics.json, confusion_matrix.png, per_class.csv (and
    per_timestep.csv / .png) when --out is given; prints a table (or JSON with --json).
    """
    from cropstar.train.evaluate import evaluate as evaluate_model
    from cropstar.train.registry import resolve_model
    from cropstar.train.report import format_report

    with _stage_progress("samples", transient=True) as report:
        result = evaluate_model(
            resolve_model(model, registry), data, split=split, out=out, batch_size=batch_size, progress=report
        )
    if as_json:
        typer.echo(json.dumps({**result.report, "per_timestep": result.per_timestep}, indent=2))
        return
    console.print(format_report(result.report, title=f"{model} on {data} ({split})"), highlight=False)
    if result.report["unknown_classes"]:
        unknown = ", ".join(f"{c} ({n})" for c, n in result.report["unknown_classes"].items())
        err_console.print(f"[yellow]not scored:[/yellow] reference classes the model does not know: {unknown}")
    if result.per_timestep:
        steps = Table(title="per time step")
        for column in ("date", "n", "OA", "macro F1"):
            steps.add_column(column, justify="right")
        for row in result.per_timestep:
            oa, f1 = row["overall_accuracy"], row["macro_f1"]
            steps.add_row(str(row["date"]), str(row["n_samples"]), "–" if oa is None else f"{oa:.3f}",
                          "–" if f1 is None else f"{f1:.3f}")
        console.print(steps)
    if out is not None:
        console.print(f"wrote {out}/metrics.json and the plots")


@contextmanager
def _training_progress() -> Iterator[Callable[..., None]]:
    """Rich bars for :func:`cropstar.train.trainer.train`: epochs (with the last losses) and batches."""
    columns = [TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=err_console) as bar:
        epochs = bar.add_task("epochs", total=None, info="")
        batches = bar.add_task("batches", total=None, info="")

        def report(stage: str, done: int, total: int, **metrics: Any) -> None:
            if stage == "train":
                bar.update(batches, completed=done, total=total, info=f"loss {metrics.get('loss', float('nan')):.4f}")
            elif stage == "epoch":
                val = metrics.get("val_loss")
                info = f"train {metrics.get('train_loss', float('nan')):.4f}" + (
                    f" · val {val:.4f} acc {metrics.get('val_accuracy', float('nan')):.3f}" if val is not None else ""
                )
                bar.update(epochs, completed=done, total=total, info=info)

        yield report


@app.command()
@_one_line_errors
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (cropstar ingest / import).")],
    out: Annotated[Path, typer.Option(help="Run folder: config.yaml, log.csv, tensorboard/, checkpoint.pt, model/.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML config, e.g. configs/crop_paper.yaml. \\[default: built-in defaults]")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, KEY=VALUE (repeatable), e.g. --set model.num_layers=8."),
    ] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Retrain: start from this model (folder or registry reference).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    register: Annotated[
        str | None, typer.Option(help="Register the trained model under this name in the registry.")
    ] = None,
    registry: _RegistryOpt = Path("models"),
) -> None:
    """Train a crop classifier (the paper's protocol by default: the epoch with the lowest validation
    loss is kept). batch_size is the global batch: under `torchrun --nproc_per_node N -m cropstar.cli
    train ...` each process takes batch_size / N.

    Reads DATA (and --init-from); writes OUT/config.yaml, log.csv, tensorboard/, checkpoint.pt (each
    epoch, atomically) and OUT/model/ (model.safetensors + model.json); with --register also
    REGISTRY/NAME/vN/.
    """
    from cropstar.data.dataset import open_dataset
    from cropstar.train.config import load_config
    from cropstar.train.evaluate import evaluate, record_evaluation
    from cropstar.train.registry import ModelRegistry, resolve_model
    from cropstar.train.trainer import train as train_model

    settings = load_config(config, set_ or [])
    start = resolve_model(init_from, registry) if init_from is not None else None
    try:
        with _training_progress() as report:
            result = train_model(settings, data, out, init_from=start, resume=resume, progress=report)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: continue with --resume (the last finished epoch is in {out}/checkpoint.pt)")
        raise typer.Exit(130) from None
    for note in result.notes:
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    best = result.best
    summary = f"best epoch {result.best_epoch}: " + ", ".join(
        f"{key} {best[key]:.4f}" for key in ("train_loss", "val_loss", "val_accuracy") if best.get(key) is not None
    )
    console.print(summary + (" (stopped early)" if result.stopped_early else ""))
    if open_dataset(data).splits.get("test", 0) > 0:
        with _stage_progress("samples", transient=True) as report:
            evaluation = evaluate(result.model, data, split="test", out=out / "evaluation", progress=report)
        test = record_evaluation(result.model, evaluation.report)
        console.print(f"test split: overall accuracy {test['overall_accuracy']:.4f}, macro F1 {test['macro_f1']:.4f} "
                      f"({test['n_samples']} samples; {out}/evaluation/)")
    console.print(f"wrote {result.model}")
    if register is not None:
        version = ModelRegistry(registry).register(result.model, name=register)
        console.print(f"registered as {version.ref}" + (" (current)" if version.current else ""))


def _print_versions(versions: list[Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    table = Table()
    for column in ("ref", "current", "created", "test OA", "test macro F1", "notes"):
        table.add_column(column)
    for v in versions:
        oa, f1 = v.metrics.get("test.overall_accuracy"), v.metrics.get("test.macro_f1")
        table.add_row(v.ref, "✓" if v.current else "", v.created[:19], "" if oa is None else f"{oa:.3f}",
                      "" if f1 is None else f"{f1:.3f}", v.notes)
    console.print(table)


@models_app.command("list")
@_one_line_errors
def models_list(registry: _RegistryOpt = Path("models"), as_json: _JsonOpt = False) -> None:
    """List every registered version. Reads the registry; writes nothing."""
    from cropstar.train.registry import ModelRegistry

    _print_versions(ModelRegistry(registry).list(), as_json)


@models_app.command("register")
@_one_line_errors
def models_register(
    artifact: Annotated[Path, typer.Argument(help="Model artifact folder (e.g. RUN/model).")],
    name: Annotated[str | None, typer.Option(help="Registry name. \\[default: the model card's name]")] = None,
    notes: Annotated[str, typer.Option(help="A note kept with the version.")] = "",
    registry: _RegistryOpt = Path("models"),
    as_json: _JsonOpt = False,
) -> None:
    """Copy a model artifact into the registry as the next version of its name (the first version
    of a name becomes current). Reads ARTIFACT; writes REGISTRY/NAME/vN/."""
    from cropstar.train.registry import ModelRegistry

    _print_versions([ModelRegistry(registry).register(artifact, name=name, notes=notes)], as_json)


@models_app.command("show")
@_one_line_errors
def models_show(
    ref: Annotated[str, typer.Argument(help="name (its current version), name:v3, name:latest.")],
    registry: _RegistryOpt = Path("models"),
) -> None:
    """Print a version's model card (model.json) with its registration as JSON.

    Reads the registry; writes nothing."""
    from cropstar.train.artifact import read_card
    from cropstar.train.registry import ModelRegistry

    version = ModelRegistry(registry).show(ref)
    typer.echo(json.dumps({"registration": version.to_dict(), "card": read_card(version.path).to_dict()}, indent=2))


@models_app.command("promote")
@_one_line_errors
def models_promote(
    ref: Annotated[str, typer.Argument(help="The version to make current, e.g. crops:v3.")],
    registry: _RegistryOpt = Path("models"),
) -> None:
    """Make REF the current version of its name: the version `--model NAME` then means.

    Reads the registry; writes REGISTRY/NAME/current.json atomically."""
    from cropstar.train.registry import ModelRegistry

    version = ModelRegistry(registry).promote(ref)
    console.print(f"{version.ref} is now the current version of {version.name}")


# ---------------------------------------------------------------------------------------------
# fields, evaluate-map: field-level predictions and the accuracy of a class map
# ---------------------------------------------------------------------------------------------
@app.command("fields")
@_one_line_errors
def fields_command(
    cube: Annotated[Path, typer.Option(help="Sentinel-2 cube: band-file folder, SAFE, STAC JSON, NetCDF or Zarr.")],
    fields: Annotated[
        Path, typer.Option("--fields", help="Field polygons: GeoJSON, GeoPackage, Shapefile or GeoParquet.")
    ],
    out: Annotated[Path, typer.Option(help="Output file: .geojson (RFC 7946), .gpkg or .parquet.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model artifact folder or registry reference. \\[default: the packaged model]"),
    ] = None,
    aggregate: Annotated[str, typer.Option(help="mean (of pixel probabilities) or majority (vote).")] = "mean",
    id_column: Annotated[str | None, typer.Option(help="Column of field ids. \\[default: field_id, id, …]")] = None,
    time: Annotated[str | None, typer.Option(help="START,END: the acquisitions to use (ISO dates).")] = None,
    batch_size: Annotated[int, typer.Option(help="Pixels per forward pass.")] = 8192,
    registry: _RegistryOpt = Path("models"),
    as_json: _JsonOpt = False,
) -> None:
    """The crop of every field: the class probabilities of the pixels whose centres lie in a field,
    aggregated per field (mean probability, or majority vote).

    Reads MODEL, the cube (lazily, only around the fields) and FIELDS; writes OUT with each field's
    properties and geometry plus crop, crop_code, crop_id, confidence, probabilities, n_pixels,
    n_valid_obs, model, season and status (ok, outside_cube, no_pixels, no_valid_observations,
    invalid_geometry) with a message. Prints counts by status and class.
    """
    from cropstar.data.cube import open_cube
    from cropstar.data.fields import read_fields
    from cropstar.infer.fields import classify_fields, output_format, write_fields
    from cropstar.train.artifact import load_artifact
    from cropstar.train.default_model import default_model_path
    from cropstar.train.registry import resolve_model

    output_format(out)
    loaded = load_artifact(resolve_model(model, registry) if model is not None else default_model_path())
    opened = open_cube(cube, bands=loaded.card.bands, time=tuple(_csv_list(time) or []) or None)
    polygons = read_fields(fields, id_column=id_column)
    with _stage_progress(transient=True) as progress:
        result = classify_fields(loaded, opened, polygons, aggregate=aggregate, batch_size=batch_size,
                                 progress=progress)
    write_fields(result, out)
    statuses = result["status"].value_counts().to_dict()
    crops = result.loc[result["status"] == "ok", "crop"].value_counts().to_dict()
    problems = [f"{row.field_id}: {row.status}: {row.message}" for row in result.itertuples() if row.status != "ok"]
    if as_json:
        typer.echo(json.dumps({"out": str(out), "fields": len(result), "status": statuses, "crops": crops,
                               "model": str(result["model"].iloc[0]) if len(result) else None,
                               "problems": problems}, indent=2))
        return
    summary = Table(title=f"{len(result)} fields → {out}", show_header=False)
    summary.add_row("status", ", ".join(f"{s} {n}" for s, n in statuses.items()))
    summary.add_row("classes", ", ".join(f"{c} {n}" for c, n in list(crops.items())[:8]))
    if len(result):
        summary.add_row("model, season", f"{result['model'].iloc[0]}, {result['season'].iloc[0]}")
    console.print(summary)
    for line in problems[:10]:
        err_console.print(f"[yellow]not classified[/yellow] {line}", highlight=False, soft_wrap=True)
    if len(problems) > 10:
        err_console.print(f"[yellow]not classified[/yellow] … and {len(problems) - 10} more (see {out})")


@app.command("evaluate-map")
@_one_line_errors
def evaluate_map_command(
    map_path: Annotated[Path, typer.Option("--map", help="Class map GeoTIFF (band 1: class ids, with nodata).")],
    reference: Annotated[Path, typer.Option(help="Reference field polygons with class codes.")],
    label_column: Annotated[str, typer.Option(help="Column of the reference fields holding the class code.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model whose class table the map uses, where the map's tags hold none."),
    ] = None,
    area_weighted: Annotated[
        bool, typer.Option(help="Also area-weighted estimates (Olofsson et al. 2014) from the mapped areas.")
    ] = False,
    per_field: Annotated[bool, typer.Option(help="Also the majority map class per field.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for metrics.json, per_class.csv and the plot.")] = None,
    registry: _RegistryOpt = Path("models"),
    as_json: _JsonOpt = False,
) -> None:
    """The accuracy of a class map against reference fields, pixel by pixel (pixel centres inside a
    field; map nodata and reference codes the map does not know are left out and counted).

    Reads MAP (in windows), its class table (tags, else --model) and REFERENCE; prints the report (or
    JSON with --json) and, with --out, writes OUT/metrics.json, per_class.csv and confusion_matrix.png.
    """
    from cropstar.data.fields import read_fields
    from cropstar.infer.map_accuracy import evaluate_map
    from cropstar.train.artifact import read_card
    from cropstar.train.registry import resolve_model
    from cropstar.train.report import format_report, write_metrics

    table = read_card(resolve_model(model, registry)).class_table if model is not None else None
    polygons = read_fields(reference, label_column=label_column)
    with _stage_progress(transient=True) as progress:
        report = evaluate_map(map_path, polygons, label_column, class_table=table, area_weighted=area_weighted,
                              per_field=per_field, progress=progress)
    if out is not None:
        write_metrics(report, out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(format_report(report, title=f"{map_path} against {reference} ({label_column})"), highlight=False)
    if per_field:
        console.print(format_report(report["per_field"], title="per field (majority map class)"), highlight=False)
    weighted = report.get("area_weighted")
    if weighted is not None:
        unit = report["area_unit"]
        areas = Table(title=f"area-weighted (Olofsson et al. 2014): overall accuracy "
                            f"{weighted['overall_accuracy']:.4f} ± {weighted['overall_accuracy_ci']:.4f}")
        for column in ("class", f"mapped ({unit})", f"estimated ({unit})", "± 95%", "user's", "producer's"):
            areas.add_column(column, justify="left" if column == "class" else "right")
        for row in weighted["per_class"]:
            ua, pa = row["users_accuracy"], row["producers_accuracy"]
            areas.add_row(row["name"], f"{row['mapped_area']:.1f}", f"{row['area']:.1f}", f"{row['area_ci']:.1f}",
                          "–" if ua is None else f"{ua:.3f}", "–" if pa is None else f"{pa:.3f}")
        console.print(areas)
    elif area_weighted:
        err_console.print(f"[yellow]no area-weighted estimate:[/yellow] {report['area_weighted_problem']}",
                          highlight=False, soft_wrap=True)
    if report["unknown_classes"]:
        unknown = ", ".join(f"{c} ({n} px)" for c, n in report["unknown_classes"].items())
        err_console.print(f"[yellow]not scored:[/yellow] reference classes the map does not know: {unknown}",
                          highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"wrote {out}/metrics.json, per_class.csv and confusion_matrix.png")


# ---------------------------------------------------------------------------------------------
# classify: block-wise raster inference
# ---------------------------------------------------------------------------------------------
@contextmanager
def _pixel_progress() -> Iterator[Callable[..., None]]:
    """Rich bars for :func:`cropstar.infer.raster.classify`: blocks (with pixels per second), then writing."""
    columns = [TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=err_console) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int, **info: Any) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
            rate = info.get("pixels_per_second")
            bar.update(tasks[stage], completed=done, **({"rate": f"{rate:,.0f} px/s"} if rate else {}))

        yield report


@app.command("classify")
@_one_line_errors
def classify_command(
    cube: Annotated[
        Path, typer.Option(help="Sentinel-2 cube: band-raster folder, SAFE, STAC JSON, NetCDF or Zarr.")
    ],
    out: Annotated[Path, typer.Option(help="The map to write: a Cloud-Optimized GeoTIFF (e.g. map.tif).")],
    model: Annotated[
        str | None,
        typer.Option(help="Model artifact folder or registry reference (name, name:v3). "
                          "\\[default: the packaged model]"),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option(help="Add one probability band per class (p_<code>).")
    ] = False,
    per_timestep: Annotated[
        bool, typer.Option(help="Add the class after each date (class_<date>: early-season maps).")
    ] = False,
    block_size: Annotated[int, typer.Option(help="Block side in pixels (memory follows it).")] = 512,
    batch_size: Annotated[int, typer.Option(help="Patch sequences per forward pass.")] = 8192,
    scheduler: Annotated[
        str | None,
        typer.Option(help="dask.distributed scheduler, tcp://HOST:PORT (workers read the cube from the same "
                          "paths); without it the blocks run here."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads of a local run. \\[default: all cores]")
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Discard finished blocks of an earlier run in OUT.parts/.")
    ] = False,
    registry: _RegistryOpt = Path("models"),
) -> None:
    """Classify every pixel of a cube, block by block, into a class map (Cloud-Optimized GeoTIFF).

    Reads MODEL and the cube (cloud-masked by SCL, composited on the model's time grid, gaps filled),
    one block's window with its halo at a time. Writes OUT on the cube's grid: band 1 the class id
    (colour table; class codes and names in the metadata), band 2 the confidence (largest probability,
    in percent), then the --probabilities and --per-timestep bands; no-data (255) where a pixel has no
    valid observation. Finished blocks are kept in OUT.parts/ until the map is written, so a rerun after
    an interruption computes only the missing ones.
    """
    from cropstar.data.cube import open_cube
    from cropstar.infer.raster import classify
    from cropstar.train.artifact import read_card
    from cropstar.train.default_model import default_model_path
    from cropstar.train.registry import resolve_model

    artifact = resolve_model(model, registry) if model is not None else default_model_path()
    opened = open_cube(cube, bands=read_card(artifact).bands)
    try:
        with _pixel_progress() as report:
            result = classify(
                artifact, opened, out, probabilities=probabilities, per_timestep=per_timestep,
                block_size=block_size, batch_size=batch_size, scheduler=scheduler, threads=threads,
                restart=restart, progress=report,
            )  # fmt: skip
    except KeyboardInterrupt:
        err_console.print(f"interrupted: rerun the same command to resume (the finished blocks are in "
                          f"{out}.parts/)")
        raise typer.Exit(130) from None
    more = len(result.bands) > 4
    bands = ", ".join(result.bands[:4]) + (f", … ({len(result.bands)} bands)" if more else "")
    console.print(
        f"wrote {result.path}: {result.width} × {result.height} pixels; {bands}; {result.blocks} blocks "
        f"({result.blocks_resumed} resumed), {result.pixels_per_second:,.0f} px/s",
        highlight=False, soft_wrap=True,
    )


if __name__ == "__main__":
    app()
