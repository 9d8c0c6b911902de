"""Doors onto the web service: ``cropstar serve`` and ``cropstar demo``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from cropstar.cli.common import app, err_console, one_line_errors

#: The setting ``torch_threads`` as the workers read it.
TORCH_THREADS_ENV = "CROPSTAR_TORCH_THREADS"

demo_app = typer.Typer(
    name="demo",
    no_args_is_help=True,
    help="The demo the service serves out of the box: the packaged model's synthetic scene. Reads nothing; "
    "writes to standard output.",
)
app.add_typer(demo_app, name="demo")


@app.command("serve")
@one_line_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes (each loads the models and sources; one per core is best).")
    ] = 1,
    config: Annotated[
        Path | None,
        typer.Option(envvar="CROPSTAR_CONFIG", help="Service settings YAML (see configs/service.yaml)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical … debug.")] = "info",
    hash_key: Annotated[
        str | None,
        typer.Option(help="Print the settings entry (sha256:…) of the API key KEY and exit; serves nothing."),
    ] = None,
) -> None:
    """The field-classification web service (FastAPI under uvicorn): POST /v1/fields:classify,
    /v1/series:classify, /v1/models, jobs under /v1/processes and /v1/jobs, /health, /ready, /metrics.

    Reads its settings from CROPSTAR_* environment variables and the --config YAML; with none, it serves
    the packaged model over the demo scene, which it writes once into the cache folder
    (CROPSTAR_CACHE_DIR, default ~/.cache/cropstar). Writes job outputs and the job database to the work
    folder (CROPSTAR_WORK_DIR, default CACHE_DIR/service). Each worker runs torch on its share of the
    cores unless CROPSTAR_TORCH_THREADS says otherwise. OpenAPI docs at /docs.
    """
    from service.security import exposure_warning
    from service.security import hash_key as hashed
    from service.settings import CONFIG_ENV, load_settings

    if hash_key is not None:
        typer.echo(hashed(hash_key))
        return
    import uvicorn

    from service.state import AppState

    settings = load_settings(config)  # invalid settings: one line, before any worker starts
    AppState(settings).check()  # a missing data source or default model, likewise
    if config is not None:
        os.environ[CONFIG_ENV] = str(Path(config).resolve())  # the workers read it again
    if settings.torch_threads is None:  # one share of the cores per worker: no oversubscription
        os.environ[TORCH_THREADS_ENV] = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    warning = exposure_warning(host, settings)
    if warning is not None:
        err_console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False, soft_wrap=True)
    err_console.print(
        f"serving {len(settings.data_sources)} data source(s) ({', '.join(settings.data_sources)}) on "
        f"http://{host}:{port} (docs: /docs)",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        "service.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
        log_level=log_level,
    )  # fmt: skip


@demo_app.command("fields")
@one_line_errors
def demo_fields(
    truth: Annotated[
        bool, typer.Option(help="Keep each field's true crop and crop_code in its properties.")
    ] = True,
) -> None:
    """Print the demo scene's fields as RFC 7946 GeoJSON, to post to the service:

    cropstar demo fields > fields.geojson

    Reads nothing (the scene is synthesised in memory, the same every time); writes the
    FeatureCollection to standard output.
    """
    from cropstar.data.synthetic import fields_geojson, make_scene
    from cropstar.model.default_model import DEMO_SCENE

    collection = fields_geojson(make_scene(**DEMO_SCENE).fields)
    if not truth:
        for feature in collection["features"]:
            feature["properties"] = {"field_id": feature["properties"]["field_id"]}
    typer.echo(json.dumps(collection, separators=(",", ":")))
