"""The packaged default model: it loads from safetensors, fits the demo scene's cube, and classifies
the fields of a synthetic scene it has never seen well above chance."""

from __future__ import annotations

from pathlib import Path

from cropstar.data.cube import open_cube
from cropstar.data.fields import read_fields
from cropstar.data.ingest import ingest
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.model.artifact import check_cube, load_artifact, on_model_grid
from cropstar.model.default_model import DEFAULT_MODEL_NAME, DEMO_SCENE, default_model_path
from cropstar.train.evaluate import evaluate


def test_the_packaged_model_loads_and_is_small() -> None:
    folder = default_model_path()
    loaded = load_artifact(folder)
    assert loaded.card.name == DEFAULT_MODEL_NAME and loaded.card.architecture.cell == "star"
    assert (folder / "MODEL_CARD.md").is_file()
    assert (folder / "model.safetensors").stat().st_size < 500_000
    assert "held_out_demo_scene" in loaded.card.metrics


def test_it_classifies_an_unseen_synthetic_scene(tmp_path: Path) -> None:
    write_scene(make_scene(size=64, dates=DEMO_SCENE["dates"], seed=123), tmp_path / "scene")
    cube = open_cube(tmp_path / "scene" / "cube")
    loaded = load_artifact(default_model_path())
    check_cube(loaded.card, on_model_grid(loaded.card, cube))  # composited onto the model's grid, it fits
    fields = read_fields(tmp_path / "scene" / "fields.geojson", label_column="crop_code")
    on_grid = on_model_grid(loaded.card, cube)
    dataset = ingest(on_grid, fields, "crop_code", tmp_path / "ds", name_column="crop", period=None).path
    report = evaluate(loaded, dataset, split="all").report
    assert report["overall_accuracy"] > 0.6, report["overall_accuracy"]  # 8 classes: chance ≈ 0.2


def test_a_next_season_cube_is_composited_onto_the_model_grid(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cropstar.cli import app
    from cropstar.data.dataset import open_dataset

    write_scene(make_scene(size=16, dates=20, seed=5, season=("2027-03-10", "2027-10-20")), tmp_path / "scene")
    card = load_artifact(default_model_path()).card
    composited = on_model_grid(card, open_cube(tmp_path / "scene" / "cube"))
    model_dates = [d.replace("2026", "2027") for d in card.time_grid.dates]
    assert [str(t.date()) for t in composited.times] == model_dates  # same steps, one year on
    result = CliRunner().invoke(app, ["ingest", "--cube", str(tmp_path / "scene" / "cube"), "--fields",
                                      str(tmp_path / "scene" / "fields.geojson"), "--label-column", "crop_code",
                                      "--like", str(default_model_path()), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    reader = open_dataset(tmp_path / "ds")
    assert reader.dates == model_dates and reader.bands == card.bands and reader.patch_size == card.patch_size
