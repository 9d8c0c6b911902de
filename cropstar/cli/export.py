"""Door onto exporting: ``cropstar export`` (a model as ONNX or a torch.export program)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropstar.cli.common import PackagedModelOpt, RegistryOpt, app, console, err_console, one_line_errors


@app.command("export")
@one_line_errors
def export_command(
    out: Annotated[
        Path, typer.Option(help="The file to write: FILE.onnx (onnx) or FILE.pt2 (torch-export).")
    ],
    model: PackagedModelOpt = None,
    format: Annotated[
        str,
        typer.Option("--format", help="onnx (runs on onnxruntime and other ONNX runtimes) or torch-export."),
    ] = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset version (onnx).")] = 18,
    registry: RegistryOpt = Path("models"),
) -> None:
    """Export a trained model to run without cropstar: an ONNX model, or a torch.export program
    (torch.export.load(FILE).module()).

    Reads MODEL (model.json and the weights); writes OUT atomically. Inputs x (batch, T, C·P·P)
    float32, normalised patch sequences, and mask (batch, T) bool; output logits (batch, K), or
    (batch, T, K) for per-time-step models. The batch axis is dynamic, T is the model's number of time
    steps. The model card (classes, bands, patch size, normalisation, time grid) travels in the ONNX
    metadata (metadata_props), or as the extra file model.json of the .pt2 program.
    """
    from cropstar.infer.export import export_model
    from cropstar.model.artifact import load_artifact
    from cropstar.model.default_model import default_model_path
    from cropstar.model.registry import resolve_model

    loaded = load_artifact(resolve_model(model, registry) if model is not None else default_model_path())
    with err_console.status(f"exporting {loaded.card.name} ({format}) …"):
        path = export_model(loaded, out, format, opset=opset)
    card = loaded.card
    steps, k = card.time_grid.steps, card.architecture.num_classes
    shape = f"(batch, {steps}, {k})" if card.task == "per_timestep" else f"(batch, {k})"
    console.print(
        f"wrote {path} ({format}{f', opset {opset}' if format == 'onnx' else ''}, "
        f"{path.stat().st_size / 1e6:.1f} MB): model {card.name}"
        f"{f' v{card.version}' if card.version else ''}; x (batch, {steps}, {card.architecture.input_size}) "
        f"float32, mask (batch, {steps}) bool → logits {shape}; {k} classes",
        highlight=False,
        soft_wrap=True,
    )
