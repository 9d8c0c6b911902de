"""Doors onto training: ``cropstar train``, ``evaluate`` and ``models``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cropstar.cli.common import (
    JsonOpt,
    ModelArg,
    RegistryOpt,
    app,
    console,
    err_console,
    one_line_errors,
    stage_progress,
)

# ---------------------------------------------------------------------------------------------
# models: evaluate, registry
# ---------------------------------------------------------------------------------------------
models_app = typer.Typer(
    name="models",
    no_args_is_help=True,
    help="The model registry: versions of trained models (artifact folders), their metadata and the "
    "`current` version of each name. Reads and writes the registry folder (--registry).",
)
app.add_typer(models_app, name="models")


@app.command()
@one_line_errors
def evaluate(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Dataset folder (cropstar ingest / import).")],
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Folder for metrics.json and the plots.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 4096,
    registry: RegistryOpt = Path("models"),
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of a model on one split of a dataset: overall accuracy, kappa, macro / weighted F1,
    per-class precision / recall / F1 and the confusion matrix (per step too for per-time-step models).

    Reads MODEL and DATA; writes OUT/metrics.json, confusion_matrix.png, per_class.csv (and
    per_timestep.csv / .png) when --out is given; prints a table (or JSON with --json).
    """
    from cropstar.model.registry import resolve_model
    from cropstar.train.evaluate import evaluate as evaluate_model
    from cropstar.train.report import format_report

    with stage_progress("samples", transient=True) as report:
        result = evaluate_model(
            resolve_model(model, registry), data, split=split, out=out, batch_size=batch_size, progress=report
        )
    if as_json:
        typer.echo(json.dumps({**result.report, "per_timestep": result.per_timestep}, indent=2))
        return
    console.print(format_report(result.report, title=f"{model} on {data} ({split})"), highlight=False)
    if result.report["unknown_classes"]:
        unknown = ", ".join(f"{c} ({n})" for c, n in result.report["unknown_classes"].items())
        err_console.print(
            f"[yellow]not scored:[/yellow] reference classes the model does not know: {unknown}"
        )
    if result.per_timestep:
        steps = Table(title="per time step")
        for column in ("date", "n", "OA", "macro F1"):
            steps.add_column(column, justify="right")
        for row in result.per_timestep:
            oa, f1 = row["overall_accuracy"], row["macro_f1"]
            steps.add_row(
                str(row["date"]),
                str(row["n_samples"]),
                "–" if oa is None else f"{oa:.3f}",
                "–" if f1 is None else f"{f1:.3f}",
            )
        console.print(steps)
    if out is not None:
        console.print(f"wrote {out}/metrics.json and the plots")


@contextmanager
def _training_progress() -> Iterator[Callable[..., None]]:
    """Progress of :func:`cropstar.train.trainer.train` through :func:`stage_progress`: epochs (with
    the last losses) and the batches of the current epoch (with the running loss)."""
    with stage_progress(inner={"batches"}) as show:

        def report(stage: str, done: int, total: int, **metrics: Any) -> None:
            if stage == "member":
                show("members", done, total)
            elif stage == "train":
                show("batches", done, total, info=f"loss {metrics.get('loss', float('nan')):.4f}")
            elif stage == "epoch":
                val = metrics.get("val_loss")
                info = f"train {metrics.get('train_loss', float('nan')):.4f}" + (
                    f" · val {val:.4f} acc {metrics.get('val_accuracy', float('nan')):.3f}"
                    if val is not None
                    else ""
                )
                show("epochs", done, total, info=info)

        yield report


@app.command()
@one_line_errors
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (cropstar ingest / import).")],
    out: Annotated[
        Path, typer.Option(help="Run folder: config.yaml, log.csv, tensorboard/, checkpoint.pt, model/.")
    ],
    config: Annotated[
        Path | None,
        typer.Option(help="YAML config, e.g. configs/crop_paper.yaml. \\[default: built-in defaults]"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a setting, KEY=VALUE (repeatable), e.g. --set model.num_layers=8."
        ),
    ] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Retrain: start from this model (folder or registry reference).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train this many models from the seeds seed, seed + 1, … (OUT/members/i) and keep them "
            "as one model that averages their class probabilities.",
        ),
    ] = 1,
    bagged: Annotated[
        bool,
        typer.Option(
            help="With --ensemble N: cut the training and validation samples by field into N folds; "
            "member i validates on fold i and trains on the rest (OUT/bagged/I holds its copy of DATA)."
        ),
    ] = False,
    refit: Annotated[
        bool,
        typer.Option(
            help="Then train again on the training and validation samples together for the epochs "
            "validation selected, and keep that model (OUT/refit/model): for small datasets."
        ),
    ] = False,
    register: Annotated[
        str | None, typer.Option(help="Register the trained model under this name in the registry.")
    ] = None,
    registry: RegistryOpt = Path("models"),
    device: Annotated[
        str | None,
        typer.Option(
            help="Where to train: auto (CUDA when available), cpu, cuda or cuda:N; sets the config's "
            "device, recorded in OUT/config.yaml and the model card. \\[default: the config's, auto]"
        ),
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option(
            "--amp/--no-amp",
            help="Mixed precision on CUDA (the config's amp, bf16 autocast; ignored on the CPU): the head "
            "and loss in bf16, the recurrent stack stays float32. \\[default: the config's, off]",
        ),
    ] = None,
) -> None:
    """Train a crop classifier (the paper's protocol by default: the epoch with the lowest validation
    loss is kept). batch_size is the global batch: under `torchrun --nproc_per_node N -m cropstar.cli
    train ...` each process takes batch_size / N, and rank 0 alone prints, evaluates and registers.

    Reads DATA (and --init-from); writes OUT/config.yaml, log.csv, tensorboard/, checkpoint.pt (each
    epoch, atomically) and OUT/model/ (model.safetensors + model.json); with --register also
    REGISTRY/NAME/vN/. With --ensemble N each member's run is OUT/members/I and OUT/model holds them all
    (--bagged: OUT/bagged/I each member's folds of DATA).
    """
    from cropstar.data.dataset import open_dataset
    from cropstar.device import check_device
    from cropstar.errors import InputError
    from cropstar.model.registry import ModelRegistry, resolve_model
    from cropstar.train.config import load_config
    from cropstar.train.distributed import World
    from cropstar.train.ensemble import EnsembleResult, train_ensemble
    from cropstar.train.evaluate import evaluate, record_evaluation
    from cropstar.train.trainer import train as train_model

    overrides = list(set_ or [])
    if device is not None:
        check_device(device, option="--device")
        overrides.append(f"device={device}")
    if amp is not None:
        overrides.append(f"amp={str(amp).lower()}")
    settings = load_config(config, overrides, overrides_from="--set")
    start = resolve_model(init_from, registry) if init_from is not None else None
    if bagged and ensemble < 2:
        raise InputError("--bagged splits the data among an ensemble's members: give --ensemble N (N ≥ 2)")
    if ensemble > 1 and start is not None:
        raise InputError("--ensemble trains its members from scratch: it does not take --init-from")
    world = World.from_env()
    try:
        with _training_progress() if world.is_main else nullcontext(None) as report:
            if ensemble > 1:
                result = train_ensemble(
                    settings, data, out, ensemble, resume=resume, progress=report, world=world, refit=refit,
                    bagged=bagged,
                )
            else:
                result = train_model(
                    settings,
                    data,
                    out,
                    init_from=start,
                    resume=resume,
                    progress=report,
                    world=world,
                    refit=refit,
                )
    except KeyboardInterrupt:
        if world.is_main:
            err_console.print(
                f"interrupted: continue with --resume (the last finished epoch is in {out}/checkpoint.pt)"
            )
        raise typer.Exit(130) from None
    if not world.is_main:
        return  # under torchrun, rank 0 alone reports, evaluates and registers
    for note in result.notes:
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    for i, member in enumerate(result.members if isinstance(result, EnsembleResult) else [result]):
        best = member.best
        summary = (
            ("" if ensemble == 1 else f"member {i}: ")
            + (f"refit, {member.best_epoch} epochs: " if refit else f"best epoch {member.best_epoch}: ")
            + ", ".join(
                f"{key} {best[key]:.4f}"
                for key in ("train_loss", "val_loss", "val_accuracy")
                if best.get(key) is not None
            )
        )
        console.print(summary + (" (stopped early)" if member.stopped_early else ""))
    if isinstance(result, EnsembleResult):
        console.print(
            f"ensemble of {ensemble}: {result.parameters:,} parameters ({ensemble} × "
            f"{result.parameters // ensemble:,}), {result.train_seconds:.0f} s of training; inference "
            f"costs {ensemble} models' time"
        )
    if open_dataset(data).splits.get("test", 0) > 0:
        with stage_progress("samples", transient=True) as report:
            evaluation = evaluate(result.model, data, split="test", out=out / "evaluation", progress=report)
        test = record_evaluation(result.model, evaluation.report)
        console.print(
            f"test split: overall accuracy {test['overall_accuracy']:.4f}, macro F1 {test['macro_f1']:.4f} "
            f"({test['n_samples']} samples; {out}/evaluation/)"
        )
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
        table.add_row(
            v.ref,
            "✓" if v.current else "",
            v.created[:19],
            "" if oa is None else f"{oa:.3f}",
            "" if f1 is None else f"{f1:.3f}",
            v.notes,
        )
    console.print(table)


@models_app.command("list")
@one_line_errors
def models_list(registry: RegistryOpt = Path("models"), as_json: JsonOpt = False) -> None:
    """List every registered version. Reads the registry; writes nothing."""
    from cropstar.model.registry import ModelRegistry

    _print_versions(ModelRegistry(registry).list(), as_json)


@models_app.command("register")
@one_line_errors
def models_register(
    artifact: Annotated[Path, typer.Argument(help="Model artifact folder (e.g. RUN/model).")],
    name: Annotated[
        str | None, typer.Option(help="Registry name. \\[default: the model card's name]")
    ] = None,
    notes: Annotated[str, typer.Option(help="A note kept with the version.")] = "",
    registry: RegistryOpt = Path("models"),
    as_json: JsonOpt = False,
) -> None:
    """Copy a model artifact into the registry as the next version of its name (the first version
    of a name becomes current). Reads ARTIFACT; writes REGISTRY/NAME/vN/."""
    from cropstar.model.registry import ModelRegistry

    _print_versions([ModelRegistry(registry).register(artifact, name=name, notes=notes)], as_json)


@models_app.command("show")
@one_line_errors
def models_show(
    ref: Annotated[str, typer.Argument(help="name (its current version), name:v3, name:latest.")],
    registry: RegistryOpt = Path("models"),
) -> None:
    """Print a version's model card (model.json) with its registration as JSON.

    Reads the registry; writes nothing."""
    from cropstar.model.artifact import read_card
    from cropstar.model.registry import ModelRegistry

    version = ModelRegistry(registry).show(ref)
    typer.echo(
        json.dumps({"registration": version.to_dict(), "card": read_card(version.path).to_dict()}, indent=2)
    )


@models_app.command("promote")
@one_line_errors
def models_promote(
    ref: Annotated[str, typer.Argument(help="The version to make current, e.g. crops:v3.")],
    registry: RegistryOpt = Path("models"),
) -> None:
    """Make REF the current version of its name: the version `--model NAME` then means.

    Reads the registry; writes REGISTRY/NAME/current.json atomically."""
    from cropstar.model.registry import ModelRegistry

    version = ModelRegistry(registry).promote(ref)
    console.print(f"{version.ref} is now the current version of {version.name}")
