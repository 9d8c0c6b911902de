"""Doors onto the data pipeline: ``cropstar synth``, ``import``, ``dataset`` and ``ingest``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cropstar.cli.common import (
    BandsOpt,
    BoaOffsetOpt,
    ClassTableOpt,
    FractionsOpt,
    IndicesOpt,
    JsonOpt,
    MinSamplesOpt,
    OverwriteOpt,
    RegistryOpt,
    SeedOpt,
    ShardOpt,
    UnknownOpt,
    app,
    console,
    csv_list,
    err_console,
    one_line_errors,
    parse_fractions,
    stage_progress,
)


@app.command()
@one_line_errors
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

    with stage_progress("dates") as report:
        scene = make_scene(size=size, dates=dates, seed=seed, progress=report)
        write_scene(scene, out, progress=report)

    first, last = (str(t)[:10] for t in scene.times[[0, -1]])
    console.print(
        f"wrote {out}/: {len(scene.times)} dates ({first} … {last}, mean cloud cover "
        f"{scene.cloud_cover.mean():.0%}) × {len(scene.bands)} bands + SCL in cube/, "
        f"{len(scene.fields)} fields of {scene.fields['crop'].nunique()} classes in fields.geojson, truth/",
        highlight=False,
        soft_wrap=True,
    )


import_app = typer.Typer(
    name="import",
    no_args_is_help=True,
    help="Import point extractions into a cropstar dataset: each importer reads FILE and writes the dataset "
    "folder given by --out (Zarr; docs/data-formats.md).",
)
dataset_app = typer.Typer(
    name="dataset",
    no_args_is_help=True,
    help="Inspect cropstar datasets (the folders `cropstar import ... --out DATASET` writes); "
    "reads a dataset and writes nothing.",
)
app.add_typer(import_app, name="import")
app.add_typer(dataset_app, name="dataset")


def _run_import(function: Callable[..., Any], as_json: bool, class_table: Path | None, **kwargs: Any) -> None:
    from cropstar.data.class_table import load_class_table

    table = load_class_table(class_table) if class_table is not None else None
    with stage_progress(transient=True) as progress:
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
            highlight=False,
            soft_wrap=True,
        )
    for note in report.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)


@import_app.command("worldcereal")
@one_line_errors
def import_worldcereal(
    parquet: Annotated[Path, typer.Argument(help="WorldCereal extraction parquet (long or wide format).")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    legend: Annotated[Path | None, typer.Option(help="Legend CSV naming the ewoc_codes.")] = None,
    bands: BandsOpt = None,
    indices: IndicesOpt = None,
    min_samples: MinSamplesOpt = 1,
    fractions: FractionsOpt = "0.7,0.15,0.15",
    seed: SeedOpt = 0,
    class_table: ClassTableOpt = None,
    unknown_codes: UnknownOpt = "skip",
    shard_size: ShardOpt = 4096,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import WorldCereal point extractions (P = 1, ewoc_code labels named from the legend).

    Reads PARQUET (65535 = no data, reflectance = DN / 10000) and the legend CSV; writes the dataset
    folder OUT, atomically. Samples without any valid date or with codes missing from the legend are
    skipped and listed.
    """
    from cropstar.data.importers import import_worldcereal as run

    _run_import(
        run,
        as_json,
        class_table,
        parquet=parquet,
        out=out,
        legend=legend,
        bands=csv_list(bands),
        indices=csv_list(indices),
        min_samples=min_samples,
        fractions=parse_fractions(fractions),
        seed=seed,
        unknown_codes=unknown_codes,
        shard_size=shard_size,
        overwrite=overwrite,
    )


@import_app.command("table")
@one_line_errors
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
    bands: BandsOpt = None,
    indices: IndicesOpt = None,
    min_samples: MinSamplesOpt = 1,
    fractions: FractionsOpt = "0.7,0.15,0.15",
    seed: SeedOpt = 0,
    class_table: ClassTableOpt = None,
    unknown_codes: UnknownOpt = "skip",
    shard_size: ShardOpt = 4096,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import your own extractions: one row per sample (wide) or per sample and date (long).

    Reads FILE (and the legend); writes the dataset folder OUT, atomically. Skipped samples
    (no valid date, missing label, unknown code) and dropped classes are listed.
    """
    from cropstar.data.importers import import_table as run

    _run_import(
        run,
        as_json,
        class_table,
        file=file,
        out=out,
        label_column=label_column,
        layout=layout,
        id_column=id_column,
        field_column=field_column,
        date_column=date_column,
        start_date=start_date,
        freq=freq,
        nodata=nodata,
        scale=scale,
        task=task,
        legend=legend,
        bands=csv_list(bands),
        indices=csv_list(indices),
        min_samples=min_samples,
        fractions=parse_fractions(fractions),
        seed=seed,
        unknown_codes=unknown_codes,
        shard_size=shard_size,
        overwrite=overwrite,
    )


@import_app.command("ucr")
@one_line_errors
def import_ucr(
    file: Annotated[Path, typer.Argument(help="UCR archive file: label, then one value per step; no header.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    feature: Annotated[str, typer.Option(help="The name of the values' feature (UCR Crop: NDVI).")] = "NDVI",
    start_date: Annotated[
        str, typer.Option(help="The date of step 0 (the archive gives no dates).")
    ] = "2000-01-01",
    freq: Annotated[str, typer.Option(help="The pandas frequency of the steps.")] = "8D",
    legend: Annotated[
        Path | None, typer.Option(help="CSV naming the class codes (code, name columns).")
    ] = None,
    min_samples: MinSamplesOpt = 1,
    fractions: FractionsOpt = "0.7,0.15,0.15",
    seed: SeedOpt = 0,
    class_table: ClassTableOpt = None,
    shard_size: ShardOpt = 4096,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a UCR time-series archive file (e.g. UCR Crop's Crop_TRAIN.tsv: NDVI profiles).

    Every series becomes one sample (P = 1) and its own field for the splits; its values are one
    feature (named by --feature), taken as given. Reads FILE; writes the dataset folder OUT, atomically.
    """
    from cropstar.data.importers import import_ucr as run

    _run_import(
        run,
        as_json,
        class_table,
        file=file,
        out=out,
        feature=feature,
        start_date=start_date,
        freq=freq,
        legend=legend,
        min_samples=min_samples,
        fractions=parse_fractions(fractions),
        seed=seed,
        shard_size=shard_size,
        overwrite=overwrite,
    )


@dataset_app.command("info")
@one_line_errors
def dataset_info(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: JsonOpt = False,
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
@one_line_errors
def ingest(
    cube: Annotated[
        str,
        typer.Option(
            help="Sentinel-2 L2A source: a folder of per-date band rasters, SAFE, AWS tile folder, STAC JSON, "
            "NetCDF or Zarr."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (Zarr; docs/data-formats.md).")],
    fields: Annotated[
        Path | None, typer.Option(help="Field polygons: GeoJSON, GeoPackage, Shapefile or GeoParquet.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Column of the fields holding the class code.")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Instead of --fields: a label raster of class codes (nodata = unlabelled)."),
    ] = None,
    field_raster: Annotated[
        Path | None, typer.Option(help="With --labels: a raster of field ids (default: connected patches).")
    ] = None,
    name_column: Annotated[str | None, typer.Option(help="Column naming the classes (e.g. crop).")] = None,
    id_column: Annotated[
        str | None, typer.Option(help="Column of unique field ids. \\[default: field_id/id]")
    ] = None,
    bands: BandsOpt = None,
    indices: IndicesOpt = None,
    time: Annotated[
        str | None, typer.Option(help="START,END dates to keep, e.g. 2026-03-01,2026-10-31.")
    ] = None,
    period: Annotated[
        str, typer.Option(help="Time grid: 10D, dekad, MS (monthly), any pandas offset, or none.")
    ] = "10D",
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
    fractions: FractionsOpt = "0.7,0.15,0.15",
    seed: SeedOpt = 0,
    class_table: ClassTableOpt = None,
    shard_size: ShardOpt = 4096,
    overwrite: OverwriteOpt = False,
    like: Annotated[
        str | None,
        typer.Option(
            help="A model (folder or registry reference) whose bands, patch size and time grid "
            "(its period and steps, in this cube's season) the dataset takes: to evaluate or "
            "retrain it on a new season."
        ),
    ] = None,
    boa_offset: BoaOffsetOpt = None,
    registry: RegistryOpt = Path("models"),
    as_json: JsonOpt = False,
) -> None:
    """Build a training dataset from a Sentinel-2 cube and labelled field polygons (or a label raster).

    The features are the --bands, then the --indices computed from the bands (each observation's
    own; a band an index needs but --bands leaves out is read for it only).

    Reads the cube lazily (cloud-masked by SCL, composited on the --period grid, gaps filled) and the
    fields with --label-column (reprojected to the cube's CRS) or --labels; every labelled pixel centre
    becomes one P × P patch sequence. Writes the dataset folder OUT; fields outside the cube, without
    a label or with an unknown code, and pixels never observed, are skipped and reported.
    """
    from cropstar.data.bands import DEFAULT_BANDS
    from cropstar.data.class_table import load_class_table
    from cropstar.data.cube import open_cube
    from cropstar.data.features import bands_to_read, canonical_features, select_features
    from cropstar.data.fields import read_fields
    from cropstar.data.ingest import ingest as from_fields
    from cropstar.data.ingest import ingest_label_raster
    from cropstar.errors import InputError
    from cropstar.model.artifact import on_model_grid, read_card
    from cropstar.model.registry import resolve_model

    if (fields is None) == (labels is None):
        raise InputError("give either --fields with --label-column, or --labels (a label raster)")
    if fields is not None and label_column is None:
        raise InputError("--fields needs --label-column (the column holding each field's class code)")

    time_range = tuple(csv_list(time) or []) or None
    card = read_card(resolve_model(like, registry)) if like is not None else None
    if card is not None and bands is None and indices is None:
        features = list(card.bands)
    else:
        features = canonical_features([*(csv_list(bands) or DEFAULT_BANDS), *(csv_list(indices) or [])])
    opened = open_cube(
        cube, bands=bands_to_read(features), time=time_range, mask_snow=mask_snow, dilation=dilation,
        boa_offset=boa_offset,
    )
    opened = select_features(opened, features)
    table = load_class_table(class_table) if class_table is not None else None
    provenance = {
        "command": "cropstar ingest",
        "cube_source": str(cube),
        "labels": str(fields or labels),
        # the options a re-ingestion onto a model's grid repeats (cropstar.data.reingest)
        "options": {
            "name_column": name_column,
            "id_column": id_column,
            "field_raster": None if field_raster is None else str(field_raster),
            "bands": bands,
            "indices": indices,
            "time": time,
            "task": task,
            "unobserved": unobserved,
            "mask_snow": mask_snow,
            "dilation": dilation,
            "boa_offset": boa_offset,
            "class_table": None if class_table is None else str(class_table),
        },
    }
    grid = None if period.lower() == "none" else period
    if card is not None:  # composited here onto the model's grid; ingest keeps those steps
        opened, grid, patch_size = on_model_grid(card, opened), None, card.patch_size
        provenance.update(period=card.time_grid.period, like_model=str(like))
    options = {
        "patch_size": patch_size,
        "period": grid,
        "class_table": table,
        "task": task,
        "unobserved": unobserved,
        "fractions": parse_fractions(fractions),
        "seed": seed,
        "shard_size": shard_size,
        "overwrite": overwrite,
        "provenance": provenance,
    }
    with stage_progress("shards") as progress:
        if fields is not None:
            polygons = read_fields(fields, id_column=id_column, label_column=label_column)
            report = from_fields(
                opened,
                polygons,
                str(label_column),
                out,
                name_column=name_column,
                progress=progress,
                **options,
            )
        else:
            report = ingest_label_raster(
                opened, labels, out, field_raster=field_raster, progress=progress, **options
            )
    problems = [f"{p.field_id}: {p.problem}" for p in report.problems]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "path": str(report.path),
                    "samples": report.samples,
                    "fields": report.fields,
                    "classes": report.classes,
                    "problems": problems,
                    "pixels_without_observation": report.pixels_without_observation,
                },
                indent=2,
            )
        )
        return
    console.print(
        f"wrote {report.path}: {report.samples:,} samples from {report.fields} fields, "
        f"{report.classes} classes",
        highlight=False,
        soft_wrap=True,
    )
    for line in problems[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {line}", highlight=False, soft_wrap=True)
    if len(problems) > 10:
        err_console.print(
            f"[yellow]skipped[/yellow] … and {len(problems) - 10} more (listed in the provenance)"
        )
    if report.pixels_without_observation:
        err_console.print(
            f"[yellow]skipped[/yellow] {report.pixels_without_observation} field pixels "
            "without any valid observation",
            highlight=False,
        )
