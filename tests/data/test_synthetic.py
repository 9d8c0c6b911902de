"""Synthetic Sentinel-2 scenes: determinism, the files (names, grids, DN offset, SCL), phenology,
fields.geojson (RFC 7946) against the truth raster, and the ``cropstar synth`` command."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.bands import RESOLUTION, SCL_INVALID
from cropstar.data.synthetic import (
    CLASSES,
    CLOUD_THRESHOLD,
    FILENAME,
    SyntheticScene,
    band_filename,
    make_scene,
    write_scene,
)
from cropstar.errors import InputError

SIZE, DATES = 48, 6


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return make_scene(size=SIZE, dates=DATES, seed=0)


@pytest.fixture(scope="module")
def written(scene: SyntheticScene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_scene(scene, out)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as src:
        return src.read(1), src.profile


# ------------------------------------------------------------------------------------ in memory


def test_same_seed_same_scene_other_seed_differs(scene: SyntheticScene) -> None:
    again = make_scene(size=SIZE, dates=DATES, seed=0)
    np.testing.assert_array_equal(again.reflectance, scene.reflectance)  # NaN compare equal here
    np.testing.assert_array_equal(again.scl, scene.scl)
    np.testing.assert_array_equal(again.times, scene.times)
    assert again.fields.geometry.geom_equals_exact(scene.fields.geometry, tolerance=0).all()
    other = make_scene(size=SIZE, dates=DATES, seed=1)
    assert not np.array_equal(other.labels, scene.labels)
    assert not np.array_equal(other.times, scene.times)


def test_fields_do_not_depend_on_the_number_of_dates(scene: SyntheticScene) -> None:
    longer = make_scene(size=SIZE, dates=DATES + 3, seed=0)
    np.testing.assert_array_equal(longer.labels, scene.labels)


def test_shapes_types_and_grid(scene: SyntheticScene) -> None:
    assert scene.reflectance.shape == (DATES, 10, SIZE, SIZE) and scene.reflectance.dtype == np.float32
    assert scene.scl.shape == (DATES, SIZE // 2, SIZE // 2) and scene.scl.dtype == np.uint8
    assert scene.labels.dtype == np.int16 and scene.field_ids.dtype == np.int32
    assert scene.crs == "EPSG:32632" and scene.transform.a == 10 and scene.transform.e == -10
    # 20 m bands hold 20 m information: constant over each 2×2 block
    b11 = np.nan_to_num(scene.band("B11"))
    np.testing.assert_array_equal(b11[:, ::2, ::2], b11[:, 1::2, 1::2])
    b08 = np.nan_to_num(scene.band("B08"))
    assert not np.array_equal(b08[:, ::2, ::2], b08[:, 1::2, 1::2])
    cube = scene.to_dataarray()
    assert cube.dims == ("time", "band", "y", "x") and cube.rio.crs.to_epsg() == 32632
    assert cube.rio.transform() == scene.transform


def test_dates_irregular_over_the_season() -> None:
    times = make_scene(size=16, dates=26, seed=0).times
    assert len(times) == 26 and np.all(np.diff(times) > np.timedelta64(0, "s"))
    assert times[0] >= np.datetime64("2026-03-01") and times[-1] <= np.datetime64("2026-11-01")
    assert times[-1] - times[0] > np.timedelta64(180, "D")
    assert len(set(np.diff(times.astype("datetime64[D]")).tolist())) > 3
    given = make_scene(size=16, dates=["2026-05-01T10:20:31", "2026-04-01T10:20:31"], seed=0).times
    assert [str(t) for t in given] == ["2026-04-01T10:20:31", "2026-05-01T10:20:31"]


def test_bad_arguments_raise_input_error() -> None:
    for kwargs in ({"size": 47}, {"size": 8}, {"dates": 0}, {"dates": 1000}, {"seed": -1}):
        with pytest.raises(InputError):
            make_scene(**{"size": 16, "dates": 2, **kwargs})


def test_cloud_cover_varies_and_scl_matches_the_cloud_opacity(scene: SyntheticScene) -> None:
    assert scene.cloud_cover.min() == 0.0 and scene.cloud_cover.max() >= 0.5
    scl = scene.scl_10m
    observed = scl != 0
    cloudy_truth = np.maximum(scene.cloud, scene.cirrus) >= CLOUD_THRESHOLD
    flagged = np.isin(scl, [8, 9, 10])
    assert np.all(flagged[cloudy_truth & observed])  # every cloudy pixel is flagged…
    block_any = cloudy_truth.reshape(DATES, SIZE // 2, 2, SIZE // 2, 2).any(axis=(2, 4))
    # …and only the 20 m cells holding a cloudy pixel are
    np.testing.assert_array_equal(np.isin(scene.scl, [8, 9, 10]), block_any & (scene.scl != 0))
    # clouds are bright in blue; valid pixels are not
    blue = scene.band("B02")
    assert np.nanmean(blue[scl == 9]) > 0.3 > np.nanmean(blue[scene.valid])
    assert np.array_equal(scene.valid, ~np.isin(scl, list(SCL_INVALID)))
    assert np.all(np.isnan(scene.reflectance.transpose(1, 0, 2, 3)[:, scl == 0]))
    assert not np.any(np.isnan(scene.reflectance.transpose(1, 0, 2, 3)[:, scl != 0]))


def test_class_phenology_is_distinct() -> None:
    clear = make_scene(size=64, dates=16, seed=2)
    ndvi = clear.ndvi()
    names = [c.name for c in CLASSES]

    def peak_day(name: str) -> int:
        mask = clear.valid & (clear.labels == names.index(name))[None]
        means = [ndvi[t][mask[t]].mean() if mask[t].sum() > 3 else -1.0 for t in range(len(clear.times))]
        return int(clear.times[int(np.argmax(means))].astype("datetime64[D]").item().timetuple().tm_yday)

    assert peak_day("maize") > peak_day("winter_wheat") + 30
    assert peak_day("winter_rapeseed") < peak_day("maize")
    # per-field truth: wheat is green in April when maize fields are bare; the reverse in August
    april, august = np.argmin(np.abs(clear.times - np.datetime64("2026-04-25"))), np.argmin(
        np.abs(clear.times - np.datetime64("2026-08-15")))
    crop = clear.fields["crop"].to_numpy()
    wheat, maize = clear.field_ndvi[crop == "winter_wheat"], clear.field_ndvi[crop == "maize"]
    assert wheat[:, april].min() > maize[:, april].max()
    assert maize[:, august].min() > wheat[:, august].max()


# ---------------------------------------------------------------------------------------- files


def test_files_named_georeferenced_and_typed(scene: SyntheticScene, written: Path) -> None:
    cube = written / "cube"
    names = sorted(p.name for p in cube.glob("*.tif"))
    assert len(names) == DATES * 11
    assert all(FILENAME.match(n) for n in names)
    first = scene.times[0]
    stamp = str(first).replace("-", "").replace(":", "")
    assert band_filename("T32UPU", first, "B02") == f"T32UPU_{stamp}_B02_10m.tif"
    for band, res in [("B02", 10), ("B08", 10), ("B11", 20), ("B8A", 20), ("SCL", 20)]:
        data, profile = _read(cube / f"T32UPU_{stamp}_{band}_{res}m.tif")
        assert profile["crs"].to_epsg() == 32632
        assert profile["transform"] == rasterio.Affine(res, 0, scene.transform.c, 0, -res, scene.transform.f)
        assert data.shape == (SIZE * 10 // res,) * 2
        assert data.dtype == (np.uint8 if band == "SCL" else np.uint16)
        assert profile["nodata"] == 0
    with rasterio.open(cube / f"T32UPU_{stamp}_B04_10m.tif") as src:
        assert src.tags()["PROCESSING_BASELINE"] == "05.09" and src.tags()["BOA_ADD_OFFSET"] == "-1000"
        assert src.descriptions == ("B04",)


def test_reading_back_and_undoing_the_offset_gives_the_reflectance(
    scene: SyntheticScene, written: Path
) -> None:
    for t, time in enumerate(scene.times):
        for c, band in enumerate(scene.bands):
            dn, _ = _read(written / "cube" / band_filename("T32UPU", time, band))
            reflectance = np.where(dn == 0, np.nan, (dn.astype(np.float32) - 1000) / 10000)
            expected = scene.reflectance[t, c]
            if RESOLUTION[band] == 20:
                expected = expected[::2, ::2]
            np.testing.assert_allclose(reflectance, expected, rtol=0, atol=1e-7)
        scl, _ = _read(written / "cube" / band_filename("T32UPU", time, "SCL"))
        np.testing.assert_array_equal(scl, scene.scl[t])


def test_metadata_records_the_offset_and_every_file(scene: SyntheticScene, written: Path) -> None:
    meta = json.loads((written / "cube" / "metadata.json").read_text())
    assert meta["processing_baseline"] == "05.09" and meta["BOA_ADD_OFFSET"] == -1000
    assert meta["tile"] == "T32UPU" and meta["crs"] == "EPSG:32632"
    assert meta["grids"]["20"]["width"] == SIZE // 2
    listed = {name for acquisition in meta["acquisitions"] for name in acquisition["files"].values()}
    assert listed == {p.name for p in (written / "cube").glob("*.tif")}
    assert [a["datetime"] for a in meta["acquisitions"]] == [str(t) for t in scene.times]


def test_written_files_are_deterministic_and_replace_older_runs(tmp_path: Path, written: Path) -> None:
    out = tmp_path / "again"
    write_scene(make_scene(size=SIZE, dates=DATES + 2, seed=0), out)  # a previous run with other dates
    write_scene(make_scene(size=SIZE, dates=DATES, seed=0), out)
    assert _digests(out) == _digests(written)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path, scene: SyntheticScene) -> None:
    (tmp_path / "cube").mkdir()
    (tmp_path / "cube" / "precious.txt").write_text("mine")
    with pytest.raises(InputError, match="precious.txt"):
        write_scene(scene, tmp_path)
    assert (tmp_path / "cube" / "precious.txt").exists()


def test_progress_is_reported_per_date(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    write_scene(make_scene(size=16, dates=3, seed=0, progress=lambda *a: calls.append(a)), tmp_path,
                progress=lambda *a: calls.append(a))
    steps = (1, 2, 3)
    assert calls == [("simulating dates", i, 3) for i in steps] + [("writing dates", i, 3) for i in steps]


def test_truth_rasters_and_class_table(scene: SyntheticScene, written: Path) -> None:
    labels, profile = _read(written / "truth" / "labels.tif")
    assert profile["dtype"] == "int16" and profile["nodata"] == -1
    np.testing.assert_array_equal(labels, scene.labels)
    table = json.loads((written / "truth" / "class_table.json").read_text())
    assert [e["id"] for e in table] == list(range(len(CLASSES)))
    assert all(isinstance(e["code"], str) for e in table)
    assert set(np.unique(labels)) <= {-1, *range(len(table))}
    field_ids, _ = _read(written / "truth" / "field_ids.tif")
    np.testing.assert_array_equal(field_ids > 0, labels >= 0)


def test_fields_geojson_is_rfc7946_and_rasterises_to_the_labels(scene: SyntheticScene, written: Path) -> None:
    raw = json.loads((written / "fields.geojson").read_text())
    assert raw["type"] == "FeatureCollection" and "crs" not in raw
    decimals = re.findall(r"\.(\d+)", json.dumps([f["geometry"] for f in raw["features"]]))
    assert decimals and max(len(d) for d in decimals) <= 7
    fields = gpd.read_file(written / "fields.geojson")
    assert fields.crs.to_epsg() == 4326
    assert fields.is_valid.all() and (fields.geom_type == "Polygon").all()
    assert all(shapely.is_ccw(g.exterior) for g in fields.geometry)
    assert {"field_id", "crop", "crop_code"} <= set(fields.columns)
    assert fields["field_id"].is_unique and len(fields) >= len(CLASSES)
    codes = {c.name: c.code for c in CLASSES}
    pairs = zip(fields["crop"], fields["crop_code"], strict=True)
    assert all(codes[crop] == code for crop, code in pairs)

    class_id = {c.name: i for i, c in enumerate(CLASSES)}
    local = fields.to_crs(scene.crs)
    raster = rasterio.features.rasterize(
        zip(local.geometry, (class_id[c] for c in local["crop"]), strict=True),
        out_shape=scene.labels.shape, transform=scene.transform, fill=-1, dtype="int16",
    )
    assert (raster == scene.labels).mean() > 0.95


def test_boundary_pixels_mix_their_neighbours(scene: SyntheticScene) -> None:
    """A field's interior is homogeneous up to texture and noise; pixels on its edge are not."""
    clear = int(np.argmin(scene.cloud_cover))
    nir = scene.band("B08")[clear]
    labels = scene.labels
    interior = np.zeros_like(labels, bool)
    interior[1:-1, 1:-1] = (
        (labels[1:-1, 1:-1] == labels[:-2, 1:-1]) & (labels[1:-1, 1:-1] == labels[2:, 1:-1])
        & (labels[1:-1, 1:-1] == labels[1:-1, :-2]) & (labels[1:-1, 1:-1] == labels[1:-1, 2:])
    )
    assert (~interior[1:-1, 1:-1]).any() and (labels == -1).any()
    spread = [np.nanstd(nir[(scene.field_ids == f) & interior]) for f in np.unique(scene.field_ids[interior])]
    assert np.nanmedian(spread) < 0.05


# ------------------------------------------------------------------------------------------ CLI


def test_cli_synth_writes_the_scene(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["synth", "--out", str(out), "--size", "32", "--dates", "4", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "fields" in result.output
    assert len(list((out / "cube").glob("*_SCL_20m.tif"))) == 4
    assert (out / "fields.geojson").is_file() and (out / "truth" / "labels.tif").is_file()
    expected = make_scene(size=32, dates=4, seed=3)
    labels, _ = _read(out / "truth" / "labels.tif")
    np.testing.assert_array_equal(labels, expected.labels)


def test_cli_synth_bad_size_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--size", "33"])
    assert result.exit_code == 2
    assert "size must be an even number" in result.output and "Traceback" not in result.output
