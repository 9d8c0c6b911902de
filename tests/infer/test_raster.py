"""Block-wise raster classification (``cropstar classify``): the map against the model pixel by pixel,
the COG, no-data, early-season maps, resuming, the work folder's checks, a dask cluster, real data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from numpy.lib.stride_tricks import sliding_window_view
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.class_table import ClassTable
from cropstar.data.cube import Cube, open_cube
from cropstar.data.normalisation import Normalisation
from cropstar.data.patches import extract_patches, values_at
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.errors import InputError
from cropstar.infer.blocks import (
    Block,
    MapLayout,
    classify_pixels,
    load_window,
    patch_sequences,
    probabilities_after_each_step,
)
from cropstar.infer.cog import PALETTE, write_cog
from cropstar.infer.predict import model_input, predict_patches, prepare_cube
from cropstar.infer.raster import classify
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import LoadedModel, ModelCard, TimeGrid, load_artifact, save_artifact
from cropstar.model.default_model import default_model_path

SIZE = 48
#: Pixels checked against the model directly: corners, edges (reflected halo), block borders, inside.
PIXELS = [
    (0, 0),
    (0, 47),
    (47, 0),
    (47, 47),
    (0, 21),
    (30, 0),
    (47, 33),
    (19, 20),
    (20, 19),
    (39, 40),
    (25, 25),
]


class Interrupted(Exception):
    """Raised from a progress callback to stop a run after some blocks."""


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch on one thread: quick and steady on a busy machine (the maps do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    write_scene(make_scene(size=SIZE, dates=26, seed=5), folder)
    return folder / "cube"


@pytest.fixture(scope="module")
def cube(scene: Path) -> Cube:
    """The synthetic cube in memory: blocks then read it without opening files."""
    return open_cube(scene).compute()


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_artifact(default_model_path())


@pytest.fixture(scope="module")
def prepared(loaded: LoadedModel, cube: Cube) -> Cube:
    return prepare_cube(loaded.card, cube).compute()


@pytest.fixture(scope="module")
def full_map(tmp_path_factory: pytest.TempPathFactory, loaded: LoadedModel, cube: Cube) -> Path:
    """Every band, blocks of 20 pixels (which do not divide the 48-pixel scene)."""
    out = tmp_path_factory.mktemp("full") / "map.tif"
    classify(loaded, cube, out, probabilities=True, per_timestep=True, block_size=20)
    return out


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _direct(loaded: LoadedModel, prepared: Cube, pixels: list[tuple[int, int]], steps: int | None = None):
    """predict_patches on patches cut by extract_patches from the whole prepared cube (optionally the
    first ``steps`` steps only), and the pixels' validity masks."""
    rows, cols = np.array(pixels).T
    patches = extract_patches(prepared.data.values, rows, cols, loaded.card.patch_size)
    mask = values_at(prepared.valid.values, rows, cols)
    if steps is not None:
        patches, mask = patches[:, :steps], mask[:, :steps]
    return predict_patches(loaded, patches, mask), mask


def test_the_map_is_on_the_cube_grid_and_equals_the_model_pixel_by_pixel(
    full_map: Path, loaded: LoadedModel, cube: Cube, prepared: Cube
) -> None:
    with rasterio.open(full_map) as src:
        assert (src.crs, src.transform, src.shape) == (cube.grid.crs, cube.grid.transform, cube.grid.shape)
        assert src.transform == prepared.grid.transform
        bands = src.read()
        k = len(loaded.card.class_table)
        assert src.descriptions[: 2 + k] == (
            "class",
            "confidence",
            *(f"p_{e.code}" for e in loaded.card.class_table),
        )
        assert src.scales[1] == pytest.approx(0.01) and src.scales[0] == 1.0
        assert json.loads(src.tags()["classes"]) == loaded.card.class_table.to_records()
        assert src.tags()["model"] == loaded.card.name
        assert src.tags()["cube"] == Path(cube.attrs["source"]).name and len(src.tags()["cube_fingerprint"]) == 32
        tags = json.dumps([src.tags(), *(src.tags(i) for i in range(1, src.count + 1))])
    for folder in (loaded.path, Path(cube.attrs["source"]), full_map.parent):  # no folder of this machine
        assert str(folder.resolve().parent) not in tags
    probabilities, _ = _direct(loaded, prepared, PIXELS)
    rows, cols = np.array(PIXELS).T
    np.testing.assert_array_equal(bands[0, rows, cols], probabilities.argmax(-1))
    stored = bands[2 : 2 + k, rows, cols].T.astype(int)  # percent
    assert np.abs(stored - probabilities * 100).max() <= 0.5 + 1e-4
    np.testing.assert_array_equal(bands[1, rows, cols], stored.max(-1))
    assert (bands[0] < k).all()  # every pixel of this scene has an observation


def test_the_map_is_a_cloud_optimised_geotiff_with_a_colour_table(
    tmp_path: Path, full_map: Path, loaded: LoadedModel, cube: Cube
) -> None:
    out = tmp_path / "map.tif"
    report = classify(loaded, cube, out, block_size=13)
    assert report.blocks == 16 and report.bands == ["class", "confidence"]
    with rasterio.open(out) as src:
        assert src.driver == "GTiff" and src.profile["tiled"] and src.dtypes == ("uint8", "uint8")
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) and src.nodata == 255
        colours = src.colormap(1)
        assert colours[0][:3] == tuple(int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5))
        assert colours[255] == (0, 0, 0, 0)
        bands = src.read()
    # no work folder left; GDAL's sidecar with the class names, the STAC Items
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "map.model.stac-item.json", "map.stac-item.json", "map.tif", "map.tif.aux.xml"
    ]  # STAC Items: tests/infer/test_stac_items.py
    # other blocks, other bands: the same classes and confidences
    np.testing.assert_array_equal(bands, _read(full_map)[:2])
    with rasterio.open(full_map) as src:  # many bands: the colour table in GDAL's sidecar
        assert src.colormap(1)[0] == colours[0]


@pytest.mark.parametrize("probabilities", [False, True], ids=["two-bands", "many-bands"])
def test_gdal_reads_the_class_names_and_colours(
    tmp_path: Path, loaded: LoadedModel, cube: Cube, probabilities: bool
) -> None:
    """``gdalinfo`` (what QGIS reads through GDAL) lists band 1's colour table and its categories: the
    class names by class id; no band is read as alpha."""
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("gdalinfo is not installed (Debian: apt-get install gdal-bin)")
    out = tmp_path / "map.tif"
    classify(loaded, cube, out, probabilities=probabilities, block_size=32)
    info = json.loads(subprocess.run([gdalinfo, "-json", str(out)], capture_output=True, check=True, text=True).stdout)
    band = info["bands"][0]
    assert band["categories"] == [entry.name for entry in loaded.card.class_table]
    assert band["colorInterpretation"] == "Palette"
    assert {b["colorInterpretation"] for b in info["bands"][1:]} == {"Undefined"}  # confidence is data, not alpha
    entries = band["colorTable"]["entries"]
    for entry in loaded.card.class_table:
        code = PALETTE[entry.id % len(PALETTE)]
        assert entries[entry.id][:3] == [int(code[i : i + 2], 16) for i in (1, 3, 5)]


def test_pixels_without_any_valid_observation_are_nodata(
    tmp_path: Path, loaded: LoadedModel, cube: Cube
) -> None:
    unseen = np.zeros(cube.valid.shape[1:], bool)
    unseen[:10, 30:] = True  # a corner never observed
    masked = Cube(cube.data.where(~unseen), cube.valid & ~unseen, cube.attrs)
    out = tmp_path / "map.tif"
    classify(loaded, masked, out, probabilities=True, block_size=24)
    bands = _read(out)
    assert (bands[:, unseen] == 255).all()
    assert (bands[0, ~unseen] < len(loaded.card.class_table)).all()


def test_a_window_holds_the_model_input_of_its_pixels_patches(
    loaded: LoadedModel, cube: Cube, scene: Path, prepared: Cube
) -> None:
    """Normalised once per pixel of the window, read lazily or from memory, reflected at the edges:
    bit for bit the model input of the patches cut from the whole prepared cube."""
    card = loaded.card
    for source in (cube, open_cube(scene)):
        for block in (Block(0, 0, 20, 0, 20), Block(1, 20, 40, 13, 33), Block(2, 40, 48, 30, 48)):
            window = load_window(card, source, block)
            assert window.inputs.shape == (block.shape[0] + 2, block.shape[1] + 2, 24, 6)
            ys, xs = (a.ravel() for a in np.indices(block.shape))
            gathered = sliding_window_view(window.inputs, (3, 3), axis=(0, 1))[ys, xs]
            patches = extract_patches(prepared.data.values, ys + block.row0, xs + block.col0, 3)
            np.testing.assert_array_equal(gathered.reshape(len(ys), 24, -1), model_input(card, patches))
            np.testing.assert_array_equal(
                window.valid, prepared.valid.values[:, block.row0 : block.row1, block.col0 : block.col1]
            )


def test_patch_sequences_gathered_from_a_tensor_equal_those_from_the_array(
    loaded: LoadedModel, cube: Cube
) -> None:
    """The gather a GPU run does on its copy of the window (here a CPU tensor): the same inputs and bands."""
    block = Block(1, 20, 40, 13, 33)
    window = load_window(loaded.card, cube, block)
    ys, xs = (a.ravel() for a in np.indices(block.shape))
    from_array = patch_sequences(window.inputs, ys, xs, 3)
    from_tensor = patch_sequences(torch.from_numpy(window.inputs), ys, xs, 3)
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.is_contiguous()
    np.testing.assert_array_equal(from_tensor.numpy(), from_array)
    layout = MapLayout(loaded.card.class_table, tuple(f"d{t}" for t in range(24)), probabilities=True)
    np.testing.assert_array_equal(
        classify_pixels(loaded, window, ys, xs, layout, torch.from_numpy(window.inputs)),
        classify_pixels(loaded, window, ys, xs, layout),
    )


def test_the_model_runs_its_inference_path_on_every_thread(tmp_path: Path, loaded: LoadedModel, cube: Cube) -> None:
    """Grad mode is per thread: the model threads of a local run must still record no autograd graph."""
    modes: list[tuple[bool, bool]] = []
    hook = loaded.model.rnn.register_forward_hook(
        lambda *_: modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
    )
    try:
        classify(loaded, cube, tmp_path / "map.tif", block_size=24, batch_size=100, threads=2)
    finally:
        hook.remove()
    assert len(modes) > 4 and set(modes) == {(True, False)}


def test_the_classify_command_records_its_device_and_refuses_a_missing_one(tmp_path: Path, scene: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "map.tif"
    args = ["classify", "--cube", str(scene), "--out", str(out), "--block-size", "48", "--threads", "1"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0 and "px/s on cpu" in " ".join(result.output.split()), result.output
    with rasterio.open(out) as src:
        assert src.tags()["device"] == "cpu"
    if not torch.cuda.is_available():
        refused = runner.invoke(app, [*args, "--device", "cuda"])
        assert refused.exit_code == 2 and "--device cuda asked for, but CUDA is not available" in refused.output
        assert len(refused.output.strip().splitlines()) == 1
    with pytest.raises(InputError, match="with a dask scheduler the blocks run on the workers"):
        classify(load_artifact(default_model_path()), open_cube(scene), out, scheduler="tcp://nowhere:1",
                 device=torch.device("meta"))  # any device but the CPU; no GPU needed  # fmt: skip


def test_batches_on_several_threads_with_a_read_ahead_give_the_same_map(
    tmp_path: Path, loaded: LoadedModel, cube: Cube
) -> None:
    maps = {}
    for threads in (1, 5):  # 5: two threads read the next window
        out = tmp_path / f"map{threads}.tif"
        report = classify(loaded, cube, out, probabilities=True, per_timestep=True, block_size=20,
                          batch_size=64, threads=threads)  # fmt: skip
        assert report.blocks_computed == 9
        assert torch.get_num_threads() == 1  # torch's setting restored
        maps[threads] = _read(out)
    np.testing.assert_array_equal(maps[5], maps[1])  # bit for bit
    with pytest.raises(InputError, match="threads must be a positive number, got 0"):
        classify(loaded, cube, tmp_path / "none.tif", threads=0)


def test_probabilities_after_each_step_equal_the_model_on_cut_and_on_masked_sequences(
    loaded: LoadedModel,
) -> None:
    rng = np.random.default_rng(1)
    patches = rng.uniform(0, 0.4, (6, 24, 6, 3, 3)).astype(np.float32)
    mask = rng.random((6, 24)) > 0.4
    after = probabilities_after_each_step(loaded, patches, mask, batch_size=4)
    later = np.arange(24)
    for t in (0, 5, 17, 23):
        cut = predict_patches(loaded, patches[:, : t + 1], mask[:, : t + 1])
        np.testing.assert_allclose(after[:, t], cut, atol=1e-6)
        masked = predict_patches(loaded, patches, mask & (later <= t))  # masked steps keep the state
        np.testing.assert_allclose(after[:, t], masked, atol=1e-6)
    # a model that reads every step ignores the mask: only cutting the sequence gives "after date t"
    architecture = Architecture("star", 54, 8, 2, 3, use_mask=False)
    card = ModelCard(
        architecture,
        ClassTable.from_codes(["a", "b", "c"]),
        list(loaded.card.bands),
        3,
        loaded.card.time_grid,
        loaded.card.normalisation,
    )
    unmasked = LoadedModel(build_classifier(architecture).eval(), card, Path("untrained"))
    after = probabilities_after_each_step(unmasked, patches, mask)
    for t in (3, 23):
        np.testing.assert_allclose(
            after[:, t], predict_patches(unmasked, patches[:, : t + 1], mask[:, : t + 1]), atol=1e-6
        )


def test_per_timestep_bands_are_the_class_after_each_date(
    full_map: Path, loaded: LoadedModel, prepared: Cube
) -> None:
    bands = _read(full_map)
    k, steps = len(loaded.card.class_table), len(prepared.times)
    per_date = bands[2 + k :]
    assert len(per_date) == steps
    np.testing.assert_array_equal(per_date[-1], bands[0])  # after the last date: the map itself
    assert (per_date[3] != bands[0]).any()  # early in the season the model says otherwise here and there
    rows, cols = np.array(PIXELS).T
    for t in (0, 3, 11):
        probabilities, mask = _direct(loaded, prepared, PIXELS, steps=t + 1)
        expected = np.where(mask.any(-1), probabilities.argmax(-1), 255)  # nothing seen yet: no-data
        np.testing.assert_array_equal(per_date[t, rows, cols], expected)
    with rasterio.open(full_map) as src:
        assert src.descriptions[-1] == f"class_{prepared.times[-1].date()}"


def test_an_interrupted_run_resumes_with_the_missing_blocks_only(
    tmp_path: Path, loaded: LoadedModel, cube: Cube
) -> None:
    whole = classify(loaded, cube, tmp_path / "whole.tif", block_size=16)
    out = tmp_path / "map.tif"

    def stop_after_four(stage: str, done: int, total: int, **info: float) -> None:
        if stage == "blocks" and info["computed"] == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        classify(loaded, cube, out, block_size=16, progress=stop_after_four)
    parts = tmp_path / "map.tif.parts"
    assert not out.exists() and len(list((parts / "blocks").glob("*.npy"))) == 4
    assert json.loads((parts / "manifest.json").read_text())["block_size"] == 16

    computed: list[int] = []
    report = classify(
        loaded,
        cube,
        out,
        block_size=16,
        progress=lambda stage, done, total, **info: computed.append(info.get("computed", -1)),
    )
    assert (report.blocks, report.blocks_resumed, report.blocks_computed) == (9, 4, 5) == (whole.blocks, 4, 5)
    assert max(computed) == 5
    assert out.read_bytes() == whole.path.read_bytes()  # bit for bit
    assert not parts.exists()


def test_a_work_folder_of_another_run_is_refused_unless_restarted(
    tmp_path: Path, loaded: LoadedModel, cube: Cube
) -> None:
    out = tmp_path / "map.tif"

    def stop(stage: str, done: int, total: int, **info: float) -> None:
        if info.get("computed"):
            raise Interrupted

    with pytest.raises(Interrupted):
        classify(loaded, cube, out, block_size=24, progress=stop)
    other = LoadedModel(build_classifier(loaded.card.architecture).eval(), loaded.card, Path("other"))
    with pytest.raises(
        InputError, match=r"map\.tif\.parts holds blocks of another run \(another model\).*--restart"
    ):
        classify(other, cube, out, block_size=24)
    with pytest.raises(InputError, match="other output bands"):
        classify(loaded, cube, out, block_size=24, probabilities=True)
    report = classify(other, cube, out, block_size=24, restart=True)
    assert report.blocks_resumed == 0 and report.blocks_computed == 4
    (tmp_path / "own.parts").mkdir()
    (tmp_path / "own.parts" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a cropstar classify work folder"):
        classify(loaded, cube, out, work_dir=tmp_path / "own.parts")


def test_a_dask_cluster_gives_the_same_map(
    tmp_path: Path, full_map: Path, loaded: LoadedModel, cube: Cube, scene: Path
) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            classify(
                loaded,
                cube,
                tmp_path / "client.tif",
                probabilities=True,
                per_timestep=True,
                block_size=20,
                scheduler=client,
            )
        # by address, the workers reading the cube's files themselves
        report = classify(
            default_model_path(),
            open_cube(scene),
            tmp_path / "address.tif",
            block_size=24,
            scheduler=cluster.scheduler_address,
        )
    assert report.blocks_computed == 4
    np.testing.assert_array_equal(_read(tmp_path / "client.tif"), _read(full_map))
    np.testing.assert_array_equal(_read(tmp_path / "address.tif"), _read(full_map)[:2])


def test_the_classify_command_writes_the_map_with_the_packaged_model(tmp_path: Path, scene: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "map.tif"
    result = runner.invoke(
        app, ["classify", "--cube", str(scene), "--out", str(out), "--block-size", "32", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "px/s" in result.output and f"wrote {out}" in " ".join(result.output.split())
    with rasterio.open(out) as src:
        assert src.count == 2 and src.tags()["model"] == load_artifact(default_model_path()).card.name
    missing = runner.invoke(app, ["classify", "--cube", str(tmp_path / "nowhere"), "--out", str(out)])
    assert missing.exit_code == 2 and "cube source not found" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


@pytest.mark.realdata
def test_the_real_worldcereal_cube_keeps_its_grid(tmp_path: Path, shared_data: Path) -> None:
    path = shared_data / "worldcereal" / "worldcereal_preprocessed_inputs.nc"
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    dates = tuple(f"{y}-{m:02d}-01" for y, m in [(2020, 11), (2020, 12)] + [(2021, m) for m in range(1, 11)])
    architecture = Architecture("star", len(bands) * 9, 16, 2, 3)
    card = ModelCard(
        architecture,
        ClassTable.from_codes(["1100", "1200", "1300"]),
        bands,
        3,
        TimeGrid("MS", dates),
        Normalisation(mean=[0.05, 0.08, 0.07, 0.3, 0.2, 0.12], std=[0.03, 0.03, 0.04, 0.1, 0.07, 0.06]),
        name="untrained-worldcereal",
    )
    artifact = save_artifact(tmp_path / "model", build_classifier(architecture), card)
    cube = open_cube(path, bands=bands)
    out = tmp_path / "map.tif"
    classify(artifact, cube, out, block_size=40)
    observed = prepare_cube(card, cube).valid.values.any(axis=0)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32631 and src.transform == cube.grid.transform and src.shape == (100, 100)
        classes = src.read(1)
    assert observed.any()
    assert (classes[observed] < 3).all() and (classes[~observed] == 255).all()


def test_maps_of_more_than_255_classes_are_uint16(tmp_path: Path, cube: Cube) -> None:
    table = ClassTable.from_codes([str(code) for code in range(1000, 1300)])
    layout = MapLayout(table, ("2026-05-01", "2026-06-01"), probabilities=False, per_timestep=True)
    assert (layout.dtype, layout.nodata, layout.scale) == (np.uint16, 65535, 10_000)
    final = np.zeros((3, 300), np.float32)
    final[[0, 1, 2], [299, 5, 0]] = [0.61234, 1.0, 0.5]
    steps = np.stack([final[[1, 1, 1]], final], axis=1)  # (3, 2, 300)
    mask = np.array([[True, True], [False, True], [False, False]])
    encoded = layout.encode(final, steps, mask)
    np.testing.assert_array_equal(
        encoded, [[299, 5, 0], [6123, 10_000, 5000], [5, 65535, 65535], [299, 5, 65535]]
    )
    grid = cube.grid
    block = Block(0, 0, grid.height, 0, grid.width)
    bands = np.tile(encoded[:, :1, None], (1, grid.height, grid.width))
    out = write_cog(tmp_path / "map.tif", [(block, bands)], grid, layout, {"model": "m"}, tmp_path)
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 65535 and src.scales[1] == pytest.approx(1e-4)
        assert src.colormap(1)[299][3] == 255
        np.testing.assert_array_equal(src.read()[:, 0, 0], encoded[:, 0])
