"""Field-level predictions: per-field aggregation, statuses of unclassifiable fields, output files, CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from rasterio.features import rasterize
from shapely.geometry import Point, Polygon, box
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.cube import Cube, open_cube
from cropstar.data.fields import field_pixels
from cropstar.data.patches import extract_patches
from cropstar.data.synthetic import SyntheticScene, make_scene, write_scene
from cropstar.errors import DataError, InputError
from cropstar.infer.cog import PALETTE
from cropstar.infer.fields import RESULT_COLUMNS, classify_fields, join_results, write_fields
from cropstar.infer.geojson import from_feature_collection, to_feature_collection
from cropstar.infer.predict import predict_patches, prepare_cube
from cropstar.model.architecture import build_classifier
from cropstar.model.artifact import LoadedModel, load_artifact
from cropstar.model.default_model import default_model_path

SIZE = 64
DARK = (slice(0, 8), slice(SIZE - 8, SIZE))  # never observed: DN 0 and SCL 0 on every date


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_artifact(default_model_path())


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticScene, Path]:
    scene = make_scene(size=SIZE, dates=26, seed=11)
    scene.reflectance[:, :, DARK[0], DARK[1]] = np.nan
    scene.scl[:, 0:4, SIZE // 2 - 4 :] = 0
    folder = tmp_path_factory.mktemp("fields-scene")
    write_scene(scene, folder)
    return scene, folder


@pytest.fixture(scope="module")
def cube(scene_folder: tuple[SyntheticScene, Path], model: LoadedModel) -> Cube:
    return open_cube(scene_folder[1] / "cube", bands=model.card.bands)


def _pixel_box(scene: SyntheticScene, rows: tuple[float, float], cols: tuple[float, float]) -> Polygon:
    """A box spanning pixel edges rows[0]…rows[1], cols[0]…cols[1] of the scene's grid."""
    (x0, y0), (x1, y1) = scene.transform * (cols[0], rows[0]), scene.transform * (cols[1], rows[1])
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@pytest.fixture(scope="module")
def frame(scene_folder: tuple[SyntheticScene, Path]) -> gpd.GeoDataFrame:
    """The scene's fields, then one field of each problem."""
    scene = scene_folder[0]
    x, y = scene.transform * (20, 30)
    extras = {
        "outside": box(x + 50_000, y, x + 50_100, y + 100),
        "tiny": box(x + 1, y + 1, x + 3, y + 3),  # between pixel centres
        "bowtie": Polygon([(x, y), (x + 80, y + 80), (x + 80, y), (x, y + 80)]),  # self-intersecting
        "empty": Polygon(),
        "point": Point(x, y),
        "dark": _pixel_box(scene, (1, 7), (SIZE - 7, SIZE - 1)),
    }
    fields = scene.fields[["field_id", "crop", "crop_code", "geometry"]].copy()
    fields["field_id"] = fields["field_id"].astype(str)
    added = gpd.GeoDataFrame({"field_id": list(extras)}, geometry=list(extras.values()), crs=scene.crs)
    return pd.concat([fields, added], ignore_index=True)


@pytest.fixture(scope="module")
def result(model: LoadedModel, cube: Cube, frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return classify_fields(model, cube, frame)


def _real(result: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return result[result["input_crop_code"].notna()]


def test_fields_come_back_in_order_with_their_properties_and_the_results(
    frame: gpd.GeoDataFrame, result: gpd.GeoDataFrame
) -> None:
    assert list(result["field_id"]) == list(frame["field_id"])
    assert set(RESULT_COLUMNS) <= set(result.columns)
    assert {"input_crop", "input_crop_code"} <= set(result.columns)  # the input's own crop columns kept
    assert result.crs == frame.crs
    ok = result[result["status"] == "ok"]
    assert set(ok["model"]) == {"cropstar-demo-star:1"}
    assert set(result["season"]) == {"2026-03-11/2026-11-05"}  # 24 ten-day steps from the model's first date


def test_most_fields_get_their_true_crop(result: gpd.GeoDataFrame) -> None:
    real = _real(result)
    ok = real[real["status"] == "ok"]
    assert len(ok) >= len(real) - 2  # at most the fields touching the dark corner could be lost
    assert (ok["crop_code"] == ok["input_crop_code"]).mean() >= 0.7


def test_probabilities_sum_to_one_and_confidence_is_the_chosen_class(
    result: gpd.GeoDataFrame, model: LoadedModel
) -> None:
    table = model.card.class_table
    for row in result[result["status"] == "ok"].itertuples():
        assert list(row.probabilities) == table.codes
        assert sum(row.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert row.confidence == max(row.probabilities.values())
        assert row.probabilities[row.crop_code] == row.confidence
        assert table[row.crop_id].code == row.crop_code and table[row.crop_id].name == row.crop
        assert row.crop_colour == PALETTE[row.crop_id % len(PALETTE)]  # the class map's colour
        assert 0 < row.n_valid_obs <= model.card.time_grid.steps


def test_n_pixels_counts_the_observed_pixel_centres_inside_each_field(
    scene_folder: tuple[SyntheticScene, Path], frame: gpd.GeoDataFrame, result: gpd.GeoDataFrame
) -> None:
    scene = scene_folder[0]

    def centres_in(geometry: shapely.Geometry) -> np.ndarray:
        return rasterize([(geometry, 1)], out_shape=(SIZE, SIZE), transform=scene.transform, fill=0) == 1

    observed = np.ones((SIZE, SIZE), bool)
    observed[DARK] = False
    bowtie = centres_in(shapely.make_valid(frame.set_index("field_id").geometry["bowtie"]))
    reduced = 0
    for geometry, row in zip(frame.geometry[: len(scene.fields)], _real(result).itertuples(), strict=True):
        inside = centres_in(geometry)
        assert row.n_pixels == (inside & observed).sum() > 0  # overlapping fields (the bowtie) take nothing
        reduced += (inside & ~observed).any()
    assert reduced  # some field reaches into the never-observed corner and keeps its other pixels
    assert result.set_index("field_id")["n_pixels"]["bowtie"] == bowtie.sum() > 0


def test_unclassifiable_fields_come_back_with_their_status_not_a_crash(result: gpd.GeoDataFrame) -> None:
    rows = result.set_index("field_id")
    expected = {
        "outside": ("outside_cube", "outside the cube"),
        "tiny": ("no_pixels", "no pixel centre"),
        "empty": ("invalid_geometry", "empty geometry"),
        "point": ("invalid_geometry", "Point is not a polygon"),
        "dark": ("no_valid_observations", "valid observation"),
        "bowtie": ("ok", "Self-intersection.*repaired"),
    }
    for field_id, (status, message) in expected.items():
        row = rows.loc[field_id]
        assert row["status"] == status, (field_id, row["message"])
        assert re.search(message, row["message"]), row["message"]
        if status != "ok":
            assert pd.isna(row["crop"]) and row["probabilities"] is None and pd.isna(row["crop_id"])
            assert pd.isna(row["confidence"]) and row["n_pixels"] == 0 and pd.isna(row["crop_colour"])
    assert rows.loc["bowtie", "n_pixels"] > 0
    assert rows.loc["bowtie"].geometry.is_valid  # the repaired geometry is returned


def test_fields_beyond_what_the_cubes_crs_can_express_are_outside(model: LoadedModel, cube: Cube) -> None:
    """A field in longitude / latitude that the cube's UTM zone cannot express (PROJ gives inf) is
    outside the cube, not a GEOS error."""
    far = gpd.GeoDataFrame(
        {"field_id": ["far", "near-antimeridian"]},
        geometry=[Polygon([(0, 1), (-72, 0), (0, 0)]), box(179.0, -10.0, 179.5, -9.5)], crs="EPSG:4326",
    )  # fmt: skip
    result = classify_fields(model, cube, far)
    assert list(result["status"]) == ["outside_cube", "outside_cube"]


@pytest.fixture(scope="module")
def one_field(model: LoadedModel, cube: Cube, frame: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """Field 3 alone, and its pixels' patches and masks cut from the whole prepared cube in memory."""
    one = frame.iloc[[3]]
    prepared = prepare_cube(model.card, cube).compute()
    rows, cols, _ = field_pixels(one, prepared.grid.transform, prepared.grid.shape, prepared.crs)
    patches = extract_patches(prepared.data.values, rows, cols, model.card.patch_size)
    return one, patches, prepared.valid.values[:, rows, cols].T


def test_input_properties_named_like_results_are_renamed_without_repeating_a_name() -> None:
    frame = gpd.GeoDataFrame({"crop": ["a"], "input_crop": ["b"], "status": ["c"]}, geometry=[box(0, 0, 1, 1)],
                             crs="EPSG:32631")  # fmt: skip
    results = pd.DataFrame([dict.fromkeys(RESULT_COLUMNS)], columns=list(RESULT_COLUMNS))
    joined = join_results(frame, results)
    assert joined.columns.is_unique
    assert joined[["input_crop", "input_input_crop", "input_status"]].iloc[0].tolist() == ["a", "b", "c"]


def test_mean_and_majority_equal_the_pixel_predictions_aggregated_by_hand(
    model: LoadedModel, cube: Cube, one_field: tuple, result: gpd.GeoDataFrame
) -> None:
    one, patches, mask = one_field
    pixels = predict_patches(model, patches, mask)
    codes = model.card.class_table.codes

    mean = pixels.mean(axis=0)
    got = result.iloc[3]
    np.testing.assert_allclose([got["probabilities"][c] for c in codes], mean, atol=6e-5)
    assert got["crop_code"] == codes[int(mean.argmax())]

    majority = classify_fields(model, cube, one, aggregate="majority").iloc[0]
    shares = np.bincount(pixels.argmax(axis=1), minlength=len(codes)) / len(pixels)
    np.testing.assert_allclose([majority["probabilities"][c] for c in codes], shares, atol=6e-5)
    assert majority["confidence"] == pytest.approx(shares.max(), abs=6e-5)
    assert majority["n_pixels"] == len(pixels) == got["n_pixels"]


def test_per_timestep_models_are_read_at_their_last_step(model: LoadedModel, cube: Cube, one_field: tuple) -> None:
    one, patches, mask = one_field
    architecture = replace(model.card.architecture, head="per_timestep")
    per_step = LoadedModel(build_classifier(architecture).eval(), replace(model.card, architecture=architecture),
                           model.path)
    pixels = predict_patches(per_step, patches, mask)
    assert pixels.ndim == 3
    got = classify_fields(per_step, cube, one).iloc[0]
    codes = model.card.class_table.codes
    np.testing.assert_allclose([got["probabilities"][c] for c in codes], pixels[:, -1].mean(axis=0), atol=6e-5)


def test_fields_in_wgs84_give_the_same_result(
    model: LoadedModel, cube: Cube, frame: gpd.GeoDataFrame, result: gpd.GeoDataFrame
) -> None:
    picked = [0, 1, 2, 3, 4]
    lonlat = classify_fields(model, cube, frame.iloc[picked].to_crs("EPSG:4326"))
    same = result.iloc[picked].reset_index(drop=True)
    assert list(lonlat["crop_code"]) == list(same["crop_code"])
    assert list(lonlat["n_pixels"]) == list(same["n_pixels"])
    for a, b in zip(lonlat["probabilities"], same["probabilities"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert lonlat.crs.to_epsg() == 4326


def test_bad_options_are_input_errors(model: LoadedModel, cube: Cube, frame: gpd.GeoDataFrame) -> None:
    with pytest.raises(InputError, match="aggregate"):
        classify_fields(model, cube, frame, aggregate="median")
    with pytest.raises(DataError, match="no acquisition between 2025-01-01 and 2025-12-31"):
        classify_fields(model, cube, frame, season=2025)
    with pytest.raises(InputError, match="coordinate reference system"):
        classify_fields(model, cube, frame.set_crs(None, allow_override=True))


def _decimals(value: float) -> int:
    text = repr(float(value))
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def test_geojson_output_follows_rfc7946(result: gpd.GeoDataFrame, tmp_path: Path) -> None:
    path = write_fields(result, tmp_path / "fields.geojson")
    document = json.loads(path.read_text())
    assert "crs" not in document and document["type"] == "FeatureCollection"
    assert len(document["features"]) == len(result)
    polygons = 0
    for feature in document["features"]:
        assert feature["id"] == feature["properties"]["field_id"]
        geometry = feature["geometry"]
        if geometry is None:
            continue
        shape = shapely.geometry.shape(geometry)
        coords = shapely.get_coordinates(shape)
        assert np.all((-180 <= coords[:, 0]) & (coords[:, 0] <= 180) & (-90 <= coords[:, 1]) & (coords[:, 1] <= 90))
        assert max(_decimals(v) for v in coords.ravel()) <= 7
        for polygon in getattr(shape, "geoms", [shape]):
            if polygon.geom_type == "Polygon":
                assert shapely.is_ccw(polygon.exterior)
                polygons += 1
    assert polygons >= len(_real(result))
    first = document["features"][0]["properties"]
    assert isinstance(first["probabilities"], dict) and first["status"] == "ok"
    assert next(f for f in document["features"] if f["id"] == "empty")["geometry"] is None
    back = gpd.read_file(path)
    assert back.crs.to_epsg() == 4326 and list(back["field_id"]) == list(result["field_id"])
    assert list(back["status"]) == list(result["status"])


def test_feature_collections_read_back_with_ids_from_the_features(result: gpd.GeoDataFrame) -> None:
    document = to_feature_collection(result[["field_id", "crop_code", "geometry"]].iloc[:3])
    for feature in document["features"]:
        del feature["properties"]["field_id"]  # a client may give the id only as the feature's id
    back = from_feature_collection(document)
    assert back.crs.to_epsg() == 4326 and list(back["field_id"]) == list(result["field_id"][:3])
    assert back.geometry.iloc[0].equals_exact(result.to_crs("EPSG:4326").geometry.iloc[0], tolerance=1e-6)
    with pytest.raises(InputError, match="FeatureCollection"):
        from_feature_collection({"type": "Feature"})


@pytest.mark.parametrize("suffix", [".gpkg", ".parquet"])
def test_gpkg_and_parquet_round_trip(result: gpd.GeoDataFrame, tmp_path: Path, suffix: str) -> None:
    path = write_fields(result, tmp_path / f"fields{suffix}")
    back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
    assert back.crs == result.crs and len(back) == len(result)
    for column in ("field_id", "crop_code", "status", "n_pixels", "season"):
        assert list(back[column]) == list(result[column]), column
    ok = result["status"] == "ok"
    assert [json.loads(p) for p in back["probabilities"][ok]] == list(result["probabilities"][ok])
    np.testing.assert_allclose(back["confidence"][ok], result["confidence"][ok])
    assert back.geometry[ok].geom_equals_exact(result.geometry[ok], tolerance=1e-6).all()
    assert [p.name for p in tmp_path.iterdir()] == [f"fields{suffix}"]  # no temporary left behind


def test_unknown_suffix_is_an_input_error(result: gpd.GeoDataFrame, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.geojson, \.gpkg or \.parquet"):
        write_fields(result, tmp_path / "fields.csv")


def test_cli_fields_writes_the_file_and_reports_skipped_fields(
    scene_folder: tuple[SyntheticScene, Path], frame: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    source = tmp_path / "in.geojson"
    picked = frame[frame["field_id"].isin(["1", "2", "outside", "empty"])].to_crs("EPSG:4326")
    picked.to_file(source, driver="GeoJSON")
    out = tmp_path / "out" / "fields.geojson"
    command = ["fields", "--cube", str(scene_folder[1] / "cube"), "--fields", str(source), "--out", str(out)]
    result = CliRunner().invoke(app, [*command, "--aggregate", "majority", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["fields"] == 4
    assert summary["status"] == {"ok": 2, "outside_cube": 1, "invalid_geometry": 1}
    assert summary["model"] == "cropstar-demo-star:1" and sum(summary["crops"].values()) == 2
    written = json.loads(out.read_text())["features"]
    assert [f["properties"]["status"] for f in written] == ["ok", "ok", "outside_cube", "invalid_geometry"]
    assert written[-1]["geometry"] is None and "empty geometry" in written[-1]["properties"]["message"]

    bad = CliRunner().invoke(app, [*command[:-1], str(tmp_path / "fields.txt")])
    assert bad.exit_code == 2 and "use .geojson, .gpkg or .parquet" in bad.output
