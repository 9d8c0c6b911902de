"""Doors onto inference: ``cropstar classify``, ``fields`` and ``evaluate-map``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cropstar.cli.common import (
    BoaOffsetOpt,
    JsonOpt,
    PackagedModelOpt,
    RegistryOpt,
    app,
    console,
    csv_list,
    err_console,
    one_line_errors,
    stage_progress,
)

#: ``cropstar classify``'s patch sequences per forward pass on the CPU (on CUDA: the library's
#: CUDA_BATCH_SIZE).
CPU_BATCH_SIZE = 8192

# ---------------------------------------------------------------------------------------------
# fields, evaluate-map: field-level predictions and the accuracy of a class map
# ---------------------------------------------------------------------------------------------
@app.command("fields")
@one_line_errors
def fields_command(
    cube: Annotated[
        Path,
        typer.Option(
            help="Sentinel-2 cube: band-file folder, SAFE, AWS tile folder, STAC JSON, NetCDF or Zarr."
        ),
    ],
    fields: Annotated[
        Path, typer.Option("--fields", help="Field polygons: GeoJSON, GeoPackage, Shapefile or GeoParquet.")
    ],
    out: Annotated[Path, typer.Option(help="Output file: .geojson (RFC 7946), .gpkg or .parquet.")],
    model: PackagedModelOpt = None,
    aggregate: Annotated[
        str, typer.Option(help="mean (of pixel probabilities) or majority (vote).")
    ] = "mean",
    id_column: Annotated[
        str | None, typer.Option(help="Column of field ids. \\[default: field_id, id, …]")
    ] = None,
    time: Annotated[str | None, typer.Option(help="START,END: the acquisitions to use (ISO dates).")] = None,
    batch_size: Annotated[int, typer.Option(help="Pixels per forward pass.")] = 8192,
    boa_offset: BoaOffsetOpt = None,
    registry: RegistryOpt = Path("models"),
    as_json: JsonOpt = False,
) -> None:
    """The crop of every field: the class probabilities of the pixels whose centres lie in a field,
    aggregated per field (mean probability, or majority vote).

    Reads MODEL, the cube (lazily, only around the fields) and FIELDS; writes OUT with each field's
    properties and geometry plus crop, crop_code, crop_id, confidence, probabilities, n_pixels,
    n_valid_obs, model, season and status (ok, outside_cube, no_pixels, no_valid_observations,
    invalid_geometry) with a message. Prints counts by status and class.
    """
    from cropstar.data.cube import open_cube
    from cropstar.data.features import bands_to_read
    from cropstar.data.fields import read_fields
    from cropstar.infer.fields import classify_fields, output_format, write_fields
    from cropstar.model.artifact import load_artifact
    from cropstar.model.default_model import default_model_path
    from cropstar.model.registry import resolve_model

    output_format(out)
    loaded = load_artifact(resolve_model(model, registry) if model is not None else default_model_path())
    opened = open_cube(
        cube, bands=bands_to_read(loaded.card.bands), time=tuple(csv_list(time) or []) or None, boa_offset=boa_offset
    )
    polygons = read_fields(fields, id_column=id_column)
    with stage_progress(transient=True, rates={"classifying pixels": "px"}) as progress:
        result = classify_fields(
            loaded, opened, polygons, aggregate=aggregate, batch_size=batch_size, progress=progress
        )
    write_fields(result, out)
    statuses = result["status"].value_counts().to_dict()
    crops = result.loc[result["status"] == "ok", "crop"].value_counts().to_dict()
    problems = [
        f"{row.field_id}: {row.status}: {row.message}" for row in result.itertuples() if row.status != "ok"
    ]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "out": str(out),
                    "fields": len(result),
                    "status": statuses,
                    "crops": crops,
                    "model": str(result["model"].iloc[0]) if len(result) else None,
                    "problems": problems,
                },
                indent=2,
            )
        )
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
@one_line_errors
def evaluate_map_command(
    map_path: Annotated[
        Path, typer.Option("--map", help="Class map GeoTIFF (band 1: class ids, with nodata).")
    ],
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
    out: Annotated[
        Path | None, typer.Option(help="Folder for metrics.json, per_class.csv and the plot.")
    ] = None,
    registry: RegistryOpt = Path("models"),
    as_json: JsonOpt = False,
) -> None:
    """The accuracy of a class map against reference fields, pixel by pixel (pixel centres inside a
    field; map nodata and reference codes the map does not know are left out and counted).

    Reads MAP (in windows), its class table (tags, else --model) and REFERENCE; prints the report (or
    JSON with --json) and, with --out, writes OUT/metrics.json, per_class.csv and confusion_matrix.png.
    """
    from cropstar.data.fields import read_fields
    from cropstar.infer.map_accuracy import evaluate_map
    from cropstar.model.artifact import read_card
    from cropstar.model.registry import resolve_model
    from cropstar.train.report import format_report, write_metrics

    table = read_card(resolve_model(model, registry)).class_table if model is not None else None
    polygons = read_fields(reference, label_column=label_column)
    with stage_progress(transient=True) as progress:
        report = evaluate_map(
            map_path,
            polygons,
            label_column,
            class_table=table,
            area_weighted=area_weighted,
            per_field=per_field,
            progress=progress,
        )
    if out is not None:
        write_metrics(report, out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(
        format_report(report, title=f"{map_path} against {reference} ({label_column})"), highlight=False
    )
    if per_field:
        console.print(
            format_report(report["per_field"], title="per field (majority map class)"), highlight=False
        )
    weighted = report.get("area_weighted")
    if weighted is not None:
        unit = report["area_unit"]
        areas = Table(
            title=f"area-weighted (Olofsson et al. 2014): overall accuracy "
            f"{weighted['overall_accuracy']:.4f} ± {weighted['overall_accuracy_ci']:.4f}"
        )
        for column in ("class", f"mapped ({unit})", f"estimated ({unit})", "± 95%", "user's", "producer's"):
            areas.add_column(column, justify="left" if column == "class" else "right")
        for row in weighted["per_class"]:
            ua, pa = row["users_accuracy"], row["producers_accuracy"]
            areas.add_row(
                row["name"],
                f"{row['mapped_area']:.1f}",
                f"{row['area']:.1f}",
                f"{row['area_ci']:.1f}",
                "–" if ua is None else f"{ua:.3f}",
                "–" if pa is None else f"{pa:.3f}",
            )
        console.print(areas)
    elif area_weighted:
        err_console.print(
            f"[yellow]no area-weighted estimate:[/yellow] {report['area_weighted_problem']}",
            highlight=False,
            soft_wrap=True,
        )
    if report["unknown_classes"]:
        unknown = ", ".join(f"{c} ({n} px)" for c, n in report["unknown_classes"].items())
        err_console.print(
            f"[yellow]not scored:[/yellow] reference classes the map does not know: {unknown}",
            highlight=False,
            soft_wrap=True,
        )
    if out is not None:
        console.print(f"wrote {out}/metrics.json, per_class.csv and confusion_matrix.png")


# ---------------------------------------------------------------------------------------------
# classify: block-wise raster inference
# ---------------------------------------------------------------------------------------------
@contextmanager
def _pixel_progress() -> Iterator[Callable[..., None]]:
    """Progress of :func:`cropstar.infer.raster.classify` through :func:`stage_progress`: blocks (with
    pixels per second), then writing."""
    with stage_progress() as show:

        def report(stage: str, done: int, total: int, **info: Any) -> None:
            rate = info.get("pixels_per_second")
            show(stage, done, total, info=f"{rate:,.0f} px/s" if rate else None)

        yield report


@app.command("classify")
@one_line_errors
def classify_command(
    cube: Annotated[
        Path,
        typer.Option(
            help="Sentinel-2 cube: band-raster folder, SAFE, AWS tile folder, STAC JSON, NetCDF or Zarr."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The map to write: a Cloud-Optimized GeoTIFF (e.g. map.tif).")],
    model: PackagedModelOpt = None,
    probabilities: Annotated[
        bool, typer.Option(help="Add one probability band per class (p_<code>).")
    ] = False,
    per_timestep: Annotated[
        bool, typer.Option(help="Add the class after each date (class_<date>: early-season maps).")
    ] = False,
    block_size: Annotated[int, typer.Option(help="Block side in pixels (memory follows it).")] = 512,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Patch sequences per forward pass. \\[default: 8192; 32768 on CUDA]"),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="dask.distributed scheduler, tcp://HOST:PORT (workers read the cube from the same "
            "paths); without it the blocks run here."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads of a local run. \\[default: all cores]")
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Discard finished blocks of an earlier run in OUT.parts/.")
    ] = False,
    boa_offset: BoaOffsetOpt = None,
    registry: RegistryOpt = Path("models"),
    device: Annotated[
        str,
        typer.Option(
            help="Where the model runs: auto (CUDA when available; the CPU with --scheduler), cpu, cuda or "
            "cuda:N; recorded in the map's device tag."
        ),
    ] = "auto",
) -> None:
    """Classify every pixel of a cube, block by block, into a class map (Cloud-Optimized GeoTIFF).

    Reads MODEL and the cube (cloud-masked by SCL, composited on the model's time grid, gaps filled),
    one block's window with its halo at a time. Writes OUT on the cube's grid: band 1 the class id
    (colour table; class codes and names in the metadata), band 2 the confidence (largest probability,
    in percent), then the --probabilities and --per-timestep bands; no-data (255) where a pixel has no
    valid observation; beside it OUT.aux.xml, GDAL's sidecar with the class names as band 1's
    categories (GDAL and QGIS read it), and two STAC Items: OUT-stem.stac-item.json (the map:
    projection, bands, classes with names and colours, season) and OUT-stem.model.stac-item.json (the
    model's STAC MLM description). Finished blocks are kept in OUT.parts/ until the map is written,
    so a rerun after an interruption computes only the missing ones.
    """
    from cropstar.data.cube import open_cube
    from cropstar.data.features import bands_to_read
    from cropstar.device import resolve_device
    from cropstar.infer.raster import CUDA_BATCH_SIZE, classify
    from cropstar.model.artifact import read_card
    from cropstar.model.default_model import default_model_path
    from cropstar.model.registry import resolve_model

    torch_device = resolve_device("cpu" if scheduler and device == "auto" else device, "--device")
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if torch_device.type == "cpu" else CUDA_BATCH_SIZE
    artifact = resolve_model(model, registry) if model is not None else default_model_path()
    opened = open_cube(cube, bands=bands_to_read(read_card(artifact).bands), boa_offset=boa_offset)
    try:
        with _pixel_progress() as report:
            result = classify(
                artifact, opened, out, probabilities=probabilities, per_timestep=per_timestep,
                block_size=block_size, batch_size=batch_size, scheduler=scheduler, threads=threads,
                restart=restart, progress=report, device=torch_device,
            )  # fmt: skip
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: rerun the same command to resume (the finished blocks are in {out}.parts/)"
        )
        raise typer.Exit(130) from None
    more = len(result.bands) > 4
    bands = ", ".join(result.bands[:4]) + (f", … ({len(result.bands)} bands)" if more else "")
    console.print(
        f"wrote {result.path}: {result.width} × {result.height} pixels; {bands}; {result.blocks} blocks "
        f"({result.blocks_resumed} resumed), {result.pixels_per_second:,.0f} px/s on {result.device}",
        highlight=False,
        soft_wrap=True,
    )
