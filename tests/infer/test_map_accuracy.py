"""The accuracy of a class map against reference fields, by hand on a map written here."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.geometry import box
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.class_table import ClassTable
from cropstar.data.fields import read_fields
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.errors import InputError
from cropstar.infer.map_accuracy import evaluate_map, map_class_table
from cropstar.model.artifact import read_card
from cropstar.model.default_model import default_model_path

SIZE = 48
NODATA = 255


@pytest.fixture(scope="module")
def table() -> ClassTable:
    return read_card(default_model_path()).class_table


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, table: ClassTable) -> dict:
    """A synthetic scene's fields (one relabelled to a code the map does not know, one unlabelled) and a
    map of model class ids on the scene's grid: the truth, 25 % of pixels changed at random, some nodata."""
    folder = tmp_path_factory.mktemp("map-accuracy")
    scene = make_scene(size=SIZE, dates=4, seed=2)
    write_scene(scene, folder)
    rng = np.random.default_rng(0)
    to_model = np.array([table.id_of(c["code"]) for c in scene.class_table])  # scene ids → model ids
    truth = np.where(scene.labels >= 0, to_model[np.maximum(scene.labels, 0)], NODATA).astype(np.uint8)
    values = truth.copy()
    changed = rng.random(values.shape) < 0.25
    values[changed] = rng.integers(0, len(table), changed.sum())
    values[rng.random(values.shape) < 0.05] = NODATA
    path = folder / "map.tif"
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8", crs=scene.crs,
                       transform=scene.transform, nodata=NODATA, tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(values, 1)
        dst.update_tags(classes=json.dumps(table.to_records()))  # as cropstar classify writes it
    reference = scene.fields[["field_id", "crop_code", "geometry"]].copy()
    reference["crop_code"] = reference["crop_code"].astype(object)
    reference.loc[0, "crop_code"] = "9999"
    reference.loc[1, "crop_code"] = None
    reference.to_crs("EPSG:4326").to_file(folder / "reference.geojson", driver="GeoJSON")
    return {"map": path, "values": values, "reference": reference, "scene": scene, "folder": folder}


def _by_hand(setting: dict, table: ClassTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference ids, map ids and field index of the scored pixels, from rasterio's rasteriser."""
    reference, values = setting["reference"], setting["values"]
    index = rasterize([(g, i) for i, g in enumerate(reference.geometry)], out_shape=(SIZE, SIZE),
                      transform=setting["scene"].transform, fill=-1, dtype="int32")
    known = np.array([table.id_of(c) if c in table else -1 for c in reference["crop_code"].fillna("none")])
    field_class = np.where(index >= 0, known[index], -1)
    scored = (field_class >= 0) & (values != NODATA)
    return field_class[scored], values[scored].astype(np.int64), index[scored]


def test_accuracy_equals_the_pixel_by_pixel_comparison(setting: dict, table: ClassTable) -> None:
    report = evaluate_map(setting["map"], setting["reference"], "crop_code")
    truth, predicted, _ = _by_hand(setting, table)
    assert report["n_samples"] == len(truth)
    assert report["overall_accuracy"] == pytest.approx((truth == predicted).mean())
    expected = np.zeros((len(table), len(table)), int)
    np.add.at(expected, (truth, predicted), 1)
    assert np.array_equal(report["confusion_matrix"], expected)
    assert 0.6 < report["overall_accuracy"] < 0.9  # 25 % of pixels changed, some back to their class
    assert report["fields_without_label"] == 1 and report["pixel_area_ha"] == pytest.approx(0.01)


def test_codes_unknown_to_the_map_are_counted_not_scored(setting: dict) -> None:
    report = evaluate_map(setting["map"], setting["reference"], "crop_code")
    first = setting["reference"].geometry.iloc[0]
    pixels = rasterize([(first, 1)], out_shape=(SIZE, SIZE), transform=setting["scene"].transform, fill=0).sum()
    assert report["unknown_classes"] == {"9999": pixels}


def test_per_field_majority_and_area_weighted_estimates(setting: dict, table: ClassTable) -> None:
    report = evaluate_map(setting["map"], setting["reference"], "crop_code", area_weighted=True, per_field=True)
    truth, predicted, field = _by_hand(setting, table)
    fields = np.unique(field)
    majority = [np.bincount(predicted[field == f], minlength=len(table)).argmax() for f in fields]
    field_truth = [truth[field == f][0] for f in fields]
    assert report["per_field"]["n_samples"] == report["n_fields"] == len(fields)
    assert report["per_field"]["overall_accuracy"] == pytest.approx(np.mean(np.equal(majority, field_truth)))

    weighted = report["area_weighted"]
    values = setting["values"]
    mapped = np.bincount(values[values != NODATA], minlength=len(table)) * 0.01  # 10 m pixels: 0.01 ha
    assert report["area_unit"] == "ha"
    np.testing.assert_allclose([row["mapped_area"] for row in weighted["per_class"]], mapped)
    assert weighted["total_area"] == pytest.approx(mapped.sum())
    assert sum(row["area"] for row in weighted["per_class"]) == pytest.approx(mapped.sum())
    # Olofsson et al. (2014) eq. 2: the user's accuracy of each map class weighted by its mapped share
    strata = [(predicted == i).sum() for i in range(len(table))]
    users = [(predicted == i)[truth == i].sum() / n if n else 0.0 for i, n in enumerate(strata)]
    assert weighted["overall_accuracy"] == pytest.approx(np.dot(mapped / mapped.sum(), users), rel=1e-12)


def test_area_weighted_accuracy_of_a_map_worked_by_hand(tmp_path: Path) -> None:
    """A 10 × 10 map of 10 m pixels: class 0 in columns 0–5, class 1 in columns 6–9, the last row no-data
    (mapped: 54 and 36 pixels, 0.54 and 0.36 ha). Reference: a class-0 field over rows 0–1 (12 pixels
    right, 8 mapped as 1), a class-1 field over rows 4–5, columns 4–9 (8 right, 4 mapped as 0), and a
    class-1 field over the no-data row. Unweighted: 20 of 32 right, 0.625. Area-weighted (map strata
    W = 0.6, 0.4; user's accuracies 12/16, 8/16): 0.6 · 0.75 + 0.4 · 0.5 = 0.65."""
    codes = ("1110", "1200", "1510")  # ids 0, 1, 2; nothing is mapped as 2
    table = ClassTable.from_codes(codes, dict(zip(codes, ("wheat", "barley", "maize"), strict=True)))
    values = np.full((10, 10), NODATA, np.uint8)
    values[:9, :6], values[:9, 6:] = 0, 1
    x0, y0 = 500_000.0, 5_000_000.0
    path = tmp_path / "map.tif"
    profile = {"driver": "GTiff", "width": 10, "height": 10, "count": 1, "dtype": "uint8", "nodata": NODATA,
               "crs": "EPSG:32632", "transform": from_origin(x0, y0, 10, 10)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
        dst.update_tags(classes=json.dumps(table.to_records()))

    def pixels(row0: int, row1: int, col0: int, col1: int):  # rows row0..row1 − 1, columns col0..col1 − 1
        return box(x0 + 10 * col0, y0 - 10 * row1, x0 + 10 * col1, y0 - 10 * row0)

    reference = gpd.GeoDataFrame(
        {"field_id": ["a", "b", "c"], "crop_code": ["1110", "1200", "1200"]},
        geometry=[pixels(0, 2, 0, 10), pixels(4, 6, 4, 10), pixels(9, 10, 0, 10)], crs="EPSG:32632",
    )  # fmt: skip
    report = evaluate_map(path, reference, "crop_code", area_weighted=True)

    assert report["confusion_matrix"] == [[12, 8, 0], [4, 8, 0], [0, 0, 0]]  # rows: reference
    assert report["n_samples"] == 32 and report["pixels_without_map_class"] == 10
    assert report["overall_accuracy"] == pytest.approx(20 / 32, abs=1e-12)
    weighted = report["area_weighted"]
    assert weighted["overall_accuracy"] == pytest.approx(0.65, abs=1e-12)
    assert weighted["overall_accuracy"] != pytest.approx(report["overall_accuracy"])
    # V(Ô) = Σ W_i² Û_i (1 − Û_i) / (n_i· − 1) = (0.36 · 0.1875 + 0.16 · 0.25) / 15
    assert weighted["overall_accuracy_se"] == pytest.approx(np.sqrt(0.1075 / 15), rel=1e-12)
    assert report["area_unit"] == "ha" and weighted["total_area"] == pytest.approx(0.9, rel=1e-12)
    per_class = weighted["per_class"]
    assert [row["mapped_area"] for row in per_class] == pytest.approx([0.54, 0.36, 0.0], abs=1e-12)
    assert [row["users_accuracy"] for row in per_class[:2]] == pytest.approx([0.75, 0.5], abs=1e-12)
    # p̂_·0 = 0.6 · 12/16 + 0.4 · 8/16 = 0.65, p̂_·1 = 0.6 · 4/16 + 0.4 · 8/16 = 0.35
    assert [row["producers_accuracy"] for row in per_class[:2]] == pytest.approx([0.45 / 0.65, 0.2 / 0.35])
    assert [row["area"] for row in per_class] == pytest.approx([0.9 * 0.65, 0.9 * 0.35, 0.0], abs=1e-12)


def test_reference_in_another_crs_and_the_class_table_from_a_model(
    setting: dict, table: ClassTable, tmp_path: Path
) -> None:
    lonlat = read_fields(setting["folder"] / "reference.geojson", label_column="crop_code")
    in_utm = evaluate_map(setting["map"], setting["reference"], "crop_code")
    assert evaluate_map(setting["map"], lonlat, "crop_code")["n_samples"] == pytest.approx(in_utm["n_samples"], abs=2)

    bare = tmp_path / "bare.tif"
    with rasterio.open(setting["map"]) as src:
        profile = src.profile
        with rasterio.open(bare, "w", **profile) as dst:
            dst.write(src.read())
    assert map_class_table(setting["map"]) == table and map_class_table(bare) is None
    with pytest.raises(InputError, match="carries no class table"):
        evaluate_map(bare, setting["reference"], "crop_code")
    with_table = evaluate_map(bare, setting["reference"], "crop_code", class_table=table)
    assert with_table["overall_accuracy"] == in_utm["overall_accuracy"]
    with pytest.raises(InputError, match="no label column 'crop'"):
        evaluate_map(bare, setting["reference"], "crop", class_table=table)


def test_cli_evaluate_map_prints_json_and_writes_metrics(setting: dict, tmp_path: Path) -> None:
    reference = setting["folder"] / "reference.geojson"
    args = ["evaluate-map", "--map", str(setting["map"]), "--reference", str(reference), "--label-column", "crop_code"]
    result = CliRunner().invoke(app, [*args, "--area-weighted", "--out", str(tmp_path / "eval"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["unknown_classes"] and report["area_weighted"]["per_class"]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["overall_accuracy"] == report["overall_accuracy"]
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()

    text = CliRunner().invoke(app, [*args, "--model", str(default_model_path()), "--per-field"])
    assert text.exit_code == 0, text.output
    assert "overall accuracy" in text.output and "per field" in text.output and "9999" in text.output
    missing = CliRunner().invoke(app, [*args[:2], str(tmp_path / "nope.tif"), *args[3:]])
    assert missing.exit_code == 2 and "map not found" in missing.output


def test_reference_as_a_plain_geodataframe_needs_a_crs(setting: dict) -> None:
    frame = gpd.GeoDataFrame(setting["reference"]).set_crs(None, allow_override=True)
    with pytest.raises(InputError, match="coordinate reference system"):
        evaluate_map(setting["map"], frame, "crop_code")
