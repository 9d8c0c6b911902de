"""Ingestion end to end: a synthetic scene's COGs and fields → dataset, checked against its truth."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from shapely.geometry import box

from cropstar.data.class_table import ClassTable
from cropstar.data.cube import open_cube
from cropstar.data.dataset import info, open_dataset
from cropstar.data.fields import Fields, read_fields
from cropstar.data.ingest import ingest
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.errors import DataError, InputError


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    write_scene(make_scene(size=48, dates=8, seed=3), out)
    return out


def test_ingest_matches_the_scene_truth(scene_dir: Path, tmp_path: Path) -> None:
    cube = open_cube(scene_dir / "cube")
    fields = read_fields(scene_dir / "fields.geojson", label_column="crop_code")
    report = ingest(cube, fields, "crop_code", tmp_path / "ds", name_column="crop", period="MS", shard_size=300)
    summary = info(report.path)
    n = report.samples
    assert summary["shape"] == [n, len(summary["dates"]), 6, 3, 3]
    assert summary["bands"] == ["B02", "B03", "B04", "B08", "B11", "B12"]
    assert all(d.endswith("-01") for d in summary["dates"])  # monthly grid, labelled by period start
    truth = json.loads((scene_dir / "truth" / "class_table.json").read_text())
    names = {c["code"]: c["name"] for c in truth}
    assert all(c["name"] == names[c["code"]] for c in summary["classes"])

    reader = open_dataset(report.path)
    assert reader.validate() == []
    labels, field_ids, split = reader.read("labels"), reader.read("field_ids"), reader.read("split")
    table = ClassTable.from_records(summary["classes"])
    code_of_field = dict(zip(fields.frame["field_id"], fields.frame["crop_code"]))
    for fid in np.unique(field_ids):  # every sample carries its field's class; no field in two splits
        members = field_ids == fid
        assert {table.codes[i] for i in labels[members]} == {code_of_field[fid]}
        assert len(np.unique(split[members])) == 1
    with rasterio.open(scene_dir / "truth" / "labels.tif") as src:
        inside = int((src.read(1) >= 0).sum())
    assert abs(n - inside) <= 0.05 * inside  # one sample per pixel centre inside a field
    patches, mask = reader.read("patches"), reader.read("mask")
    assert np.isfinite(patches).all()  # gap-filled
    assert 0.2 < mask.mean() < 1.0  # clouds make some composites invalid
    np.testing.assert_array_equal(reader.read("n_valid_obs") > 0, True)
    assert report.problems == []


def test_skipped_fields_are_reported(scene_dir: Path, tmp_path: Path) -> None:
    cube = open_cube(scene_dir / "cube")
    fields = read_fields(scene_dir / "fields.geojson", label_column="crop_code")
    frame = fields.frame.copy()
    far = gpd.GeoDataFrame({"field_id": ["far"], "crop_code": ["1101060000"]},
                           geometry=[box(0, 0, 0.001, 0.001)], crs="EPSG:4326")
    tiny = frame.iloc[[0]].copy()
    tiny["field_id"] = "tiny"
    tiny["geometry"] = tiny.geometry.to_crs(32632).centroid.buffer(0.5).to_crs(4326)
    unknown = frame.iloc[[1]].copy()
    unknown["field_id"], unknown["crop_code"] = "odd", "999"
    frame = gpd.GeoDataFrame(
        [*frame.to_dict("records"), *far.to_dict("records"), *tiny.to_dict("records"), *unknown.to_dict("records")],
        crs="EPSG:4326",
    )
    table = ClassTable.from_codes(fields.frame["crop_code"])
    report = ingest(cube, Fields(frame), "crop_code", tmp_path / "ds", class_table=table, period=None)
    problems = {p.field_id: p.problem for p in report.problems}
    assert problems["far"] == "outside the cube: skipped"
    assert problems["tiny"] == "covers no pixel centre: skipped"
    assert problems["odd"] == "class code '999' is not in the class table: skipped"
    with pytest.raises(InputError, match="no label column 'label'"):
        ingest(cube, fields, "label", tmp_path / "x")
    with pytest.raises(DataError, match="no usable field"):
        ingest(cube, Fields(far), "crop_code", tmp_path / "y")


def _unusable_fields(scene_dir: Path, n_far: int) -> gpd.GeoDataFrame:
    """``n_far`` fields outside the scene, then one with a code the class table lacks."""
    far = gpd.GeoDataFrame(
        {"field_id": [f"far-{i}" for i in range(n_far)], "crop_code": ["1101060000"] * n_far},
        geometry=[box(i, 0, i + 0.001, 0.001) for i in range(n_far)], crs="EPSG:4326",
    )  # fmt: skip
    odd = read_fields(scene_dir / "fields.geojson", label_column="crop_code").frame.iloc[[0]].copy()
    odd["field_id"], odd["crop_code"] = "odd", "999"
    return gpd.GeoDataFrame([*far.to_dict("records"), *odd.to_dict("records")], crs="EPSG:4326")


def test_no_usable_field_lists_each_field_and_why(scene_dir: Path, tmp_path: Path) -> None:
    cube = open_cube(scene_dir / "cube")
    table = ClassTable.from_codes(["1101060000"])
    with pytest.raises(DataError) as error:
        ingest(cube, Fields(_unusable_fields(scene_dir, 2)), "crop_code", tmp_path / "x", class_table=table)
    assert str(error.value) == (
        "no usable field, every one was skipped: "
        "odd: class code '999' is not in the class table: skipped; "
        "far-0: outside the cube: skipped; far-1: outside the cube: skipped"
    )
    with pytest.raises(DataError) as error:  # many: the first five, and how many more
        ingest(cube, Fields(_unusable_fields(scene_dir, 7)), "crop_code", tmp_path / "y", class_table=table)
    message = str(error.value)
    assert message.startswith("no usable field, every one was skipped: odd: class code '999'")
    assert "far-3: outside the cube: skipped; … and 3 more" in message and "far-4" not in message
    tiny = read_fields(scene_dir / "fields.geojson", label_column="crop_code").frame.iloc[[0]].copy()
    tiny["field_id"], tiny["geometry"] = "tiny", tiny.geometry.to_crs(32632).centroid.buffer(0.5).to_crs(4326)
    with pytest.raises(DataError, match=r"every one was skipped: tiny: covers no pixel centre: skipped$"):
        ingest(cube, Fields(tiny), "crop_code", tmp_path / "z")


def test_cli_ingest_without_a_usable_field_names_the_problems(scene_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cropstar.cli import app

    fields = tmp_path / "far.geojson"
    _unusable_fields(scene_dir, 2).iloc[:2].to_file(fields, driver="GeoJSON")  # both outside the cube
    args = ["ingest", "--cube", str(scene_dir / "cube"), "--fields", str(fields),
            "--label-column", "crop_code", "--out", str(tmp_path / "ds")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    flat = " ".join(result.stderr.split())
    assert "see the problems above" not in flat
    assert "far-0: outside the cube" in flat and "far-1: outside the cube" in flat


def test_cli_ingest_writes_and_reports(scene_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cropstar.cli import app

    out = tmp_path / "ds"
    args = ["ingest", "--cube", str(scene_dir / "cube"), "--fields", str(scene_dir / "fields.geojson"),
            "--label-column", "crop_code", "--name-column", "crop", "--out", str(out), "--period", "MS", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == info(out)["shape"][0] and report["problems"] == []
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output and "Traceback" not in again.output
    bad = CliRunner().invoke(app, [*args[:-1], "--label-column", "nope"])
    assert bad.exit_code == 2 and "no label column 'nope'" in bad.output


def test_ingest_from_a_label_raster(scene_dir: Path, tmp_path: Path) -> None:
    from cropstar.data.ingest import ingest_label_raster

    cube = open_cube(scene_dir / "cube")
    truth = scene_dir / "truth"
    with rasterio.open(truth / "labels.tif") as src:
        labels_raster = src.read(1)
    report = ingest_label_raster(cube, truth / "labels.tif", tmp_path / "a", period="MS",
                                 field_raster=truth / "field_ids.tif")
    reader = open_dataset(report.path)
    assert reader.validate() == []
    table = ClassTable.from_records(info(report.path)["classes"])
    assert set(table.codes) == {str(v) for v in np.unique(labels_raster[labels_raster >= 0])}
    assert report.samples == int((labels_raster >= 0).sum()) - report.pixels_without_observation
    # without a field raster, connected patches of one class keep neighbours in one split
    patches = ingest_label_raster(cube, truth / "labels.tif", tmp_path / "b", period="MS")
    split, field_ids = open_dataset(patches.path).read("split"), open_dataset(patches.path).read("field_ids")
    assert all(len(np.unique(split[field_ids == f])) == 1 for f in np.unique(field_ids))
    assert all(f.startswith("patch-") for f in field_ids[:5])
    with pytest.raises(InputError, match="label raster not found"):
        ingest_label_raster(cube, truth / "missing.tif", tmp_path / "c")


@pytest.mark.parametrize("unobserved", ["conditions", "class", "ignore"])
def test_per_timestep_labels_mark_unobserved_steps(scene_dir: Path, tmp_path: Path, unobserved: str) -> None:
    cube = open_cube(scene_dir / "cube")
    fields = read_fields(scene_dir / "fields.geojson", label_column="crop_code")
    report = ingest(cube, fields, "crop_code", tmp_path / "ds", period="MS", task="per_timestep",
                    unobserved=unobserved)
    reader = open_dataset(report.path)
    summary = info(report.path)
    labels, mask = reader.read("labels"), reader.read("mask")
    assert summary["task"] == "per_timestep" and labels.shape == mask.shape
    per_field = ingest(cube, fields, "crop_code", tmp_path / "seq", period="MS")
    sequence = open_dataset(per_field.path).read("labels")
    np.testing.assert_array_equal(labels[mask], np.broadcast_to(sequence[:, None], mask.shape)[mask])
    if unobserved == "conditions":  # each unobserved step labelled with its composite's condition
        from cropstar.data.clouds import Condition
        from cropstar.data.ingest import CONDITION_CLASSES
        from cropstar.data.regularise import regularise

        grid = cube.grid
        cols, rows = ~grid.transform * reader.read("coords").T
        truth = regularise(cube, "MS").condition.values[:, rows.astype(int), cols.astype(int)].T
        class_of = {c["code"]: c["id"] for c in summary["classes"]}
        added = [c["code"] for c in summary["classes"][per_field.classes:]]
        assert set(added) <= {"cloud", "cloud_shadow", "no_data"} and "cloud" in added
        for condition in np.unique(truth[~mask]):
            assert (labels[~mask][truth[~mask] == condition] == class_of[CONDITION_CLASSES[Condition(condition)][0]]).all()
    elif unobserved == "class":
        last = summary["classes"][-1]
        assert (last["code"], last["name"]) == ("unobserved", "cloud / no observation")
        assert (labels[~mask] == last["id"]).all()
    else:
        assert (labels[~mask] == -1).all() and len(summary["classes"]) == per_field.classes
    assert (~mask).any()


def test_samples_carry_their_pixel_centres(scene_dir: Path, tmp_path: Path) -> None:
    cube = open_cube(scene_dir / "cube")
    report = ingest_label_raster_for(cube, scene_dir, tmp_path)
    reader = open_dataset(report.path)
    coords, labels = reader.read("coords"), reader.read("labels")
    assert info(report.path)["crs"] == "EPSG:32632"
    with rasterio.open(scene_dir / "truth" / "labels.tif") as src:
        rows, cols = rasterio.transform.rowcol(src.transform, coords[:, 0], coords[:, 1])
        truth = src.read(1)[np.asarray(rows), np.asarray(cols)]
    table = ClassTable.from_records(info(report.path)["classes"])
    np.testing.assert_array_equal([int(table.codes[i]) for i in labels], truth)


def ingest_label_raster_for(cube, scene_dir: Path, tmp_path: Path):
    from cropstar.data.ingest import ingest_label_raster

    return ingest_label_raster(cube, scene_dir / "truth" / "labels.tif", tmp_path / "coords", period="MS")


def test_snow_cloud_and_no_data_steps_get_their_own_classes(tmp_path: Path) -> None:
    from cropstar.data.fields import check_fields

    times = pd.date_range("2023-01-05", periods=4, freq="10D")
    x, y = 300005.0 + 10 * np.arange(6), 5000055.0 - 10 * np.arange(6)
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    scl = np.full((4, 6, 6), 4, "uint8")
    scl[1] = 11  # snow everywhere on the second date
    scl[2, :3] = 9  # cloud over the northern half on the third
    variables = {b: (("time", "y", "x"), np.full((4, 6, 6), 1500 + 100 * i, "uint16")) for i, b in enumerate(bands)}
    variables["B04"][1][3, 0, :] = 0  # DN 0: no data on the fourth date's first row
    variables["SCL"] = (("time", "y", "x"), scl)
    source = xr.Dataset(variables, coords={"time": times, "y": y, "x": x}).rio.write_crs("EPSG:32631")
    cube = open_cube(source, mask_snow=True, boa_offset=0)
    frame = gpd.GeoDataFrame({"field_id": ["a"], "crop": ["wheat"]}, geometry=[box(300000, 4999995, 300060, 5000055)],
                             crs="EPSG:32631")
    report = ingest(cube, check_fields(frame), "crop", tmp_path / "ds", period=None, task="per_timestep",
                    patch_size=1)
    reader = open_dataset(report.path)
    codes = reader.class_table.codes
    assert codes == ["wheat", "no_data", "cloud", "snow"]  # condition classes in Condition order
    labels = np.array(codes, dtype=object)[reader.read("labels")]
    row = (5000055.0 - reader.read("coords")[:, 1] + 5) // 10
    assert (labels[:, 0] == "wheat").all() and (labels[:, 1] == "snow").all()
    np.testing.assert_array_equal(labels[:, 2], np.where(row < 3, "cloud", "wheat"))
    np.testing.assert_array_equal(labels[:, 3], np.where(row == 0, "no_data", "wheat"))
    # without snow masking a snowy step is an observation of the field
    kept = ingest(open_cube(source, boa_offset=0), check_fields(frame), "crop", tmp_path / "kept", period=None,
                  task="per_timestep", patch_size=1)
    assert "snow" not in open_dataset(kept.path).class_table.codes
