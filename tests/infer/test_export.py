"""Exporting a classifier: the ONNX model on onnxruntime and the torch.export program give the logits
of the torch model's reference path, for any batch size, with masked steps and a sequence without
any valid step; the card travels with the file; ``cropstar export`` writes both formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.class_table import ClassTable
from cropstar.data.normalisation import Normalisation
from cropstar.errors import InputError
from cropstar.infer.export import CARD_KEY, export_onnx, reference_model
from cropstar.infer.predict import model_input, predict_inputs
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import LoadedModel, ModelCard, TimeGrid, load_artifact, save_artifact
from cropstar.model.default_model import default_model_path
from cropstar.model.registry import ModelRegistry

runner = CliRunner()
TOLERANCE = 1e-5
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]


def _inputs(batch: int, steps: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random model inputs x (batch, T, I) and a mask with gaps, a late start and, in row 0, no valid step."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, features)).astype(np.float32)
    mask = rng.random((batch, steps)) > 0.3
    mask[-1, : steps // 2] = False
    mask[0] = False
    return x, mask


def _reference(model: torch.nn.Module, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The logits of the model's reference path (the cells' per-step loop)."""
    with torch.enable_grad():
        return reference_model(model)(torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()


def _run_onnx(path: Path, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": x, "mask": mask})[0]


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    return load_artifact(default_model_path())


@pytest.fixture(scope="module")
def default_onnx(default_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(default_model, tmp_path_factory.mktemp("export") / "default.onnx")


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer STAR model with per-time-step logits on 5 steps of 1×1-pixel patches."""
    torch.manual_seed(1)
    architecture = Architecture("star", 6, 8, 2, 3, head="per_timestep", options={"t_max": 5})
    card = ModelCard(
        architecture=architecture,
        class_table=ClassTable.from_codes(
            ["11", "22", "33"], names={"11": "wheat", "22": "maize", "33": "beet"}
        ),
        bands=BANDS,
        patch_size=1,
        time_grid=TimeGrid("10D", ("2024-04-01", "2024-04-11", "2024-04-21", "2024-05-01", "2024-05-11")),
        normalisation=Normalisation(np.full(6, 0.1), np.full(6, 0.05)),
        name="tiny",
        version="1",
    )
    return save_artifact(tmp_path_factory.mktemp("artifact") / "tiny", build_classifier(architecture), card)


def test_default_model_on_onnxruntime_matches_torch(default_model: LoadedModel, default_onnx: Path) -> None:
    card = default_model.card
    steps = card.time_grid.steps
    for batch, seed in ((1, 0), (6, 1)):
        rng = np.random.default_rng(seed)
        patches = rng.uniform(0, 0.5, (batch, steps, len(card.bands), 3, 3)).astype(np.float32)
        x = model_input(card, patches)
        _, mask = _inputs(batch, steps, 1, seed)
        logits = _run_onnx(default_onnx, x, mask)
        assert logits.shape == (batch, card.architecture.num_classes)
        assert np.abs(logits - _reference(default_model.model, x, mask)).max() <= TOLERANCE
        probabilities = torch.softmax(torch.from_numpy(logits), -1).numpy()
        np.testing.assert_allclose(probabilities, predict_inputs(default_model, x, mask), atol=TOLERANCE)


def test_onnx_model_carries_the_card(default_model: LoadedModel, default_onnx: Path) -> None:
    card = default_model.card
    session = ort.InferenceSession(str(default_onnx), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert [r["name"] for r in json.loads(meta["classes"])] == card.class_table.names
    assert json.loads(meta["bands"]) == card.bands
    assert int(meta["patch_size"]) == card.patch_size and int(meta["time_steps"]) == card.time_grid.steps
    assert json.loads(meta["normalisation"]) == card.normalisation.to_dict()
    document = json.loads(meta[CARD_KEY])
    assert ModelCard.from_dict(document).class_table == card.class_table
    assert not Path(document["training"]["dataset"]).is_absolute()  # no paths of the exporting machine
    assert str(Path(__file__).resolve().parents[2]) not in default_onnx.read_bytes().decode("latin-1")
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert inputs == {
        "x": (["batch", card.time_grid.steps, card.architecture.input_size], "tensor(float)"),
        "mask": (["batch", card.time_grid.steps], "tensor(bool)"),
    }
    onnx.checker.check_model(onnx.load(str(default_onnx)))


def test_cli_exports_onnx_of_a_per_timestep_model(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny.onnx"
    result = runner.invoke(app, ["export", "--model", str(tiny_artifact), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in " ".join(result.output.split()) and "(batch, 5, 3)" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]  # no temporary left behind
    model = load_artifact(tiny_artifact).model
    for batch, seed in ((2, 2), (9, 3)):
        x, mask = _inputs(batch, 5, 6, seed)
        logits = _run_onnx(out, x, mask)
        assert logits.shape == (batch, 5, 3)
        assert np.abs(logits - _reference(model, x, mask)).max() <= TOLERANCE


def test_cli_exports_a_registry_model_as_a_torch_export_program(tiny_artifact: Path, tmp_path: Path) -> None:
    ModelRegistry(tmp_path / "registry").register(tiny_artifact)
    out = tmp_path / "tiny.pt2"
    result = runner.invoke(
        app,
        ["export", "--model", "tiny:v1", "--registry", str(tmp_path / "registry"), "--format", "torch-export",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    extra = {CARD_KEY: ""}
    program = torch.export.load(out, extra_files=extra)
    assert json.loads(extra[CARD_KEY])["name"] == "tiny"
    model = load_artifact(tiny_artifact).model
    for batch, seed in ((1, 4), (7, 5)):
        x, mask = _inputs(batch, 5, 6, seed)
        with torch.inference_mode():
            logits = program.module()(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        assert np.abs(logits - _reference(model, x, mask)).max() <= TOLERANCE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "tflite"], "unknown export format 'tflite'; choose one of onnx, torch-export"),
        (
            ["--out", "{tmp}/file.txt/model.onnx"],
            "cannot write the exported model to {tmp}/file.txt/model.onnx",
        ),
        (["--out", "{tmp}"], "cannot write the exported model to {tmp}: it is a folder"),
    ],
)
def test_cli_errors_are_one_line(
    tiny_artifact: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    arguments = ["export", "--model", str(tiny_artifact), "--out", str(tmp_path / "m.onnx"), *options]
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in arguments])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert flat.startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in flat
    assert "Traceback" not in result.output


def test_onnx_export_without_the_exporter_packages_says_what_to_install(
    tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now fails
    with pytest.raises(InputError, match=r"needs the packages onnx and onnxscript .* 'cropstar\[export\]'"):
        export_onnx(load_artifact(tiny_artifact), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())
