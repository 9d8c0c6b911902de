"""The SAFE reader on real ESA products (``../shared/data/s2-metadata/safe``, described in its PROVENANCE.md):
the BOA offset of each real MTD_MSIL2A.xml, the tile metadata of each real MTD_TL.xml, the real T29UNU JP2s
(SCL classes, B04 DNs carrying the +1000 offset, georeferencing against MTD_TL) and ingest → classify end
to end on a SAFE product assembled in tmp_path around the real metadata and cuts of the real JP2s."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window
from typer.testing import CliRunner

from cropstar.data.bands import SCL_INVALID
from cropstar.data.harmonise import decide_boa_offset
from cropstar.data.sources.safe import ESA_BAND_ORDER, read_mtd, read_tile_metadata
from cropstar.data.sources.tiff_folder import scan_folder

pytestmark = pytest.mark.realdata

T29UNU = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
T29UNU_GRANULE = "GRANULE/L2A_T29UNU_A038058_20221005T115407"
T29UNU_IMG = f"{T29UNU_GRANULE}/IMG_DATA"
#: The real JP2s: (path in the T29UNU product, resolution).
JP2S = {
    "SCL_20m": (f"{T29UNU_IMG}/R20m/T29UNU_20221005T115411_SCL_20m.jp2", 20),
    "SCL_60m": (f"{T29UNU_IMG}/R60m/T29UNU_20221005T115411_SCL_60m.jp2", 60),
    "B04_60m": (f"{T29UNU_IMG}/R60m/T29UNU_20221005T115411_B04_60m.jp2", 60),
}
#: (product, processing baseline, BOA offset of every band, tile metadata file or None)
PRODUCTS = [
    (T29UNU, "04.00", -1000.0, T29UNU_GRANULE),
    ("S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE", "04.00", -1000.0,
     "GRANULE/L2A_T33XWJ_A026649_20220413T150756"),
    ("S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE", "05.09", -1000.0, None),
    ("S2B_MSIL2A_20210122T133229_N0214_R081_T22HBD_20210122T155500.SAFE", "02.14", 0.0, None),
    ("S2B_MSIL2A_20191228T210519_N0212_R071_T01CCV_20201003T104658.SAFE", "02.12", 0.0,
     "GRANULE/L2A_T01CCV_A014683_20191228T210521"),
]  # fmt: skip
#: The AWS bucket copy of a tile's metadata (its MTD_TL.xml).
AWS_TILE = "aws-sentinel-s2-l2a/S2B_MSIL2A_20200914T231559_N0500_R087_T01VCG_20230315T224658"
#: (tile metadata file, tile, baseline suffix, EPSG, ULX, ULY, SENSING_TIME, single-quoted XML declaration)
TILE_METADATA = [
    (f"{T29UNU}/{T29UNU_GRANULE}/MTD_TL.xml", "29UNU", "04.00", 32629, 499980, 5900040,
     "2022-10-05T11:56:49.581767", False),
    (f"{PRODUCTS[1][0]}/{PRODUCTS[1][3]}/MTD_TL.xml", "33XWJ", "04.00", 32633, 499980, 8900040,
     "2022-04-13T15:08:07.846358", True),
    (f"{PRODUCTS[4][0]}/{PRODUCTS[4][3]}/MTD_TL.xml", "01CCV", "02.12", 32701, 300000, 2000020,
     "2019-12-28T21:05:52.062315", True),
    (f"{AWS_TILE}/metadata.xml", "01VCG", "05.00", 32601, 300000, 6700020, "2020-09-14T23:19:31.559091", False),
]  # fmt: skip


@pytest.fixture
def safe_dir(shared_data: Path) -> Path:
    """The real SAFE metadata folder; skips where this part of the shared data is absent."""
    folder = shared_data / "s2-metadata" / "safe"
    if not (folder / T29UNU / "MTD_MSIL2A.xml").is_file():
        pytest.skip(f"{folder} holds no {T29UNU}: the real SAFE metadata is absent")
    return folder


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# ---------------------------------------------------------------------------------------------- MTD_MSIL2A


@pytest.mark.parametrize(
    ("product", "baseline", "offset", "granule"), PRODUCTS, ids=[p[0][38:44] for p in PRODUCTS]
)
def test_each_real_product_xml_gives_its_baseline_and_the_offset_of_every_band(
    safe_dir: Path, product: str, baseline: str, offset: float, granule: str | None
) -> None:
    mtd = safe_dir / product / "MTD_MSIL2A.xml"
    info = read_mtd(mtd)
    assert info.processing_baseline == baseline
    if offset:  # 04.00 and later: all 13 bands listed by band_id, B10 included, B8A at index 8
        assert list(info.boa_offsets) == list(ESA_BAND_ORDER)
        assert set(info.boa_offsets.values()) == {offset}
    else:  # before 04.00: no BOA_ADD_OFFSET_VALUES_LIST at all
        assert info.boa_offsets == {}
    for band in ("B02", "B04", "B8A", "B11", "B12"):
        decision = decide_boa_offset(
            found_offset=info.boa_offsets.get(band),
            found_baseline=info.processing_baseline,
            found_by=str(mtd),
        )
        assert decision.boa_offset == offset and decision.processing_baseline == baseline
    root = ET.parse(mtd).getroot()
    assert root.find("General_Info") is None  # only General_Info carries the n1: prefix
    assert _local(root[0].tag) == "General_Info" and root[0].tag.startswith("{")
    if granule is not None:  # the tile metadata never carries the offset
        tile_xml = ET.parse(safe_dir / product / granule / "MTD_TL.xml").getroot()
        assert not any("OFFSET" in _local(el.tag) for el in tile_xml.iter())


@pytest.mark.parametrize("product", [p[0] for p in PRODUCTS if p[2]], ids=lambda p: p[38:44])
def test_band_id_counts_b8a_and_b10_on_the_real_layout(safe_dir: Path, tmp_path: Path, product: str) -> None:
    """The real files give −1000 to every band, so a wrong index map would still read −1000: a copy of the
    real file in tmp_path gives band_id i the offset −(1000 + i), nothing else changed."""
    text = (safe_dir / product / "MTD_MSIL2A.xml").read_text()
    renumbered, count = re.subn(
        r'(<BOA_ADD_OFFSET band_id="(\d+)">)-1000(</BOA_ADD_OFFSET>)',
        lambda m: f"{m.group(1)}-{1000 + int(m.group(2))}{m.group(3)}",
        text,
    )
    assert count == 13
    (tmp_path / "MTD_MSIL2A.xml").write_text(renumbered)
    offsets = read_mtd(tmp_path / "MTD_MSIL2A.xml").boa_offsets
    assert offsets["B08"] == -1007 and offsets["B8A"] == -1008 and offsets["B09"] == -1009
    assert offsets["B10"] == -1010 and offsets["B11"] == -1011 and offsets["B12"] == -1012
    assert offsets["B01"] == -1000 and offsets["B04"] == -1003


@pytest.mark.parametrize("product", [p[0] for p in PRODUCTS], ids=lambda p: p[38:44])
def test_every_image_file_the_product_lists_is_found_in_any_order(
    safe_dir: Path, tmp_path: Path, product: str
) -> None:
    """The ESRI-centre products list IMAGE_FILE R20m, R60m, R10m; ESA's R10m, R20m, R60m. Empty files at the
    listed paths: the reader finds every band file by its name, whatever the order."""
    root = ET.parse(safe_dir / product / "MTD_MSIL2A.xml").getroot()
    listed = [el.text.strip() for el in root.iter() if _local(el.tag) == "IMAGE_FILE" and el.text]
    assert len(listed) >= 35
    for name in listed:
        path = tmp_path / product / f"{name}.jp2"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    found = {(bf.band, bf.resolution) for bf in scan_folder(tmp_path)}
    expected = set()
    for name in listed:
        band, resolution = Path(name).stem.split("_")[-2:]
        if band not in ("AOT", "WVP", "TCI"):
            expected.add((band, float(resolution.removesuffix("m"))))
    assert found == expected
    assert ("B02", 10.0) in found and ("SCL", 20.0) in found and ("B09", 60.0) in found


# ---------------------------------------------------------------------------------------------- MTD_TL


@pytest.mark.parametrize(
    ("path", "tile", "baseline", "epsg", "ulx", "uly", "sensing", "single_quoted"),
    TILE_METADATA,
    ids=[t[1] for t in TILE_METADATA],
)
def test_each_real_tile_xml_gives_tile_baseline_crs_grids_and_sensing_time(
    safe_dir: Path, path: str, tile: str, baseline: str, epsg: int, ulx: float, uly: float, sensing: str,
    single_quoted: bool,
) -> None:  # fmt: skip
    assert (safe_dir / path).read_text().startswith("<?xml version='1.0'") == single_quoted
    meta = read_tile_metadata(safe_dir / path)
    assert meta.tile == tile and meta.tile_id.endswith(f"_T{tile}_N{baseline}")
    assert meta.processing_baseline == baseline and meta.datastrip_id.endswith(f"_N{baseline}")
    assert meta.crs.to_epsg() == epsg
    assert meta.sensing_time == pd.Timestamp(sensing) and meta.sensing_time.tzinfo is None
    assert sorted(meta.grids) == [10, 20, 60]
    for resolution, grid in meta.grids.items():
        assert tuple(grid.transform)[:6] == (resolution, 0, ulx, 0, -resolution, uly)
        assert grid.shape == (109800 // resolution,) * 2 and grid.crs.to_epsg() == epsg


def test_tile_xml_reads_the_same_reordered_reformatted_and_without_microseconds(
    safe_dir: Path, tmp_path: Path
) -> None:
    """A copy of the real T29UNU MTD_TL.xml as another centre could write it: single-quoted declaration, no
    indentation, the Geoposition blocks before the Size blocks and in reverse order, millisecond time."""
    real = safe_dir / TILE_METADATA[0][0]
    text = real.read_text()
    sizes = re.findall(r"<Size resolution=.*?</Size>", text, re.DOTALL)
    positions = re.findall(r"<Geoposition resolution=.*?</Geoposition>", text, re.DOTALL)
    assert len(sizes) == len(positions) == 3
    for block in sizes + positions:
        text = text.replace(block, "", 1)
    text = text.replace(
        "<HORIZONTAL_CS_CODE>", "".join(positions[::-1] + sizes[::-1]) + "<HORIZONTAL_CS_CODE>"
    )
    text = text.replace(
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>', "<?xml version='1.0' encoding='UTF-8'?>"
    )
    text = re.sub(r">\s+<", "><", text).replace("11:56:49.581767Z", "11:56:49.581Z")
    (tmp_path / "MTD_TL.xml").write_text(text)
    original, variant = read_tile_metadata(real), read_tile_metadata(tmp_path / "MTD_TL.xml")
    assert variant.grids == original.grids and variant.tile_id == original.tile_id
    assert variant.sensing_time == pd.Timestamp("2022-10-05T11:56:49.581")


# ---------------------------------------------------------------------------------------------- the real JP2s


def test_real_scl_classes_lie_in_0_to_11_and_both_resolutions_agree(safe_dir: Path) -> None:
    with rasterio.open(safe_dir / T29UNU / JP2S["SCL_20m"][0]) as src:
        assert src.driver == "JP2OpenJPEG" and src.dtypes[0] == "uint8" and src.shape == (5490, 5490)
        scl20 = src.read(1)
    with rasterio.open(safe_dir / T29UNU / JP2S["SCL_60m"][0]) as src:
        scl60 = src.read(1)
    assert scl20.max() <= 11 and scl60.max() <= 11
    assert {4, 8, 9} <= set(np.unique(scl60).tolist())  # vegetation and clouds on this October scene
    assert (scl60 == scl20[1::3, 1::3]).mean() > 0.95  # a 60 m pixel's centre is its middle 20 m pixel


def test_real_b04_dns_carry_the_offset_and_harmonise_to_plausible_reflectance(safe_dir: Path) -> None:
    with rasterio.open(safe_dir / T29UNU / JP2S["B04_60m"][0]) as src:
        assert src.dtypes[0] == "uint16" and src.shape == (1830, 1830)
        dn = src.read(1)
    with rasterio.open(safe_dir / T29UNU / JP2S["SCL_60m"][0]) as src:
        scl = src.read(1)
    offset = read_mtd(safe_dir / T29UNU / "MTD_MSIL2A.xml").boa_offsets["B04"]
    valid = dn > 0
    assert (dn[valid] >= 1000).mean() > 0.99  # baseline 04.00: DN = 10000 · reflectance + 1000
    reflectance = (dn[valid] + offset) / 10000
    assert 0.0 < np.median(reflectance) < 0.5
    assert (reflectance < 0).mean() < 0.01  # noise over dark targets only
    water, vegetation = (scl == 6) & valid, (scl == 4) & valid
    assert water.sum() > 1000 and vegetation.sum() > 1000
    assert np.median((dn[water] + offset) / 10000) < 0.03  # dark water: red reflectance of a few percent
    assert np.median(dn[water] / 10000) > 0.1  # which it would not be without the offset
    assert 0.01 < np.median((dn[vegetation] + offset) / 10000) < 0.08


@pytest.mark.parametrize("name", list(JP2S))
def test_jp2_georeferencing_agrees_with_the_tile_xml_grid(safe_dir: Path, name: str) -> None:
    """MTD_TL's ULX/ULY is the grid's corner; the JP2's GML origin is the centre of its first pixel, half a
    pixel in; rasterio (GDAL) turns it into the corner. Agreement is asked within a tenth of a pixel."""
    relative, resolution = JP2S[name]
    grid = read_tile_metadata(safe_dir / T29UNU / T29UNU_GRANULE / "MTD_TL.xml").grids[resolution]
    path = safe_dir / T29UNU / relative
    with rasterio.open(path) as src:
        transform, crs, shape = src.transform, src.crs, src.shape
    assert crs == grid.crs and shape == grid.shape
    assert (transform.a, transform.e) == (grid.transform.a, grid.transform.e)
    assert abs(transform.c - grid.transform.c) / resolution < 0.1
    assert abs(transform.f - grid.transform.f) / resolution < 0.1
    header = path.read_bytes()[:20000].decode("latin-1")
    gml = re.search(r"<gml:origin>.*?<gml:pos>\s*([\d.]+)\s+([\d.]+)\s*</gml:pos>", header, re.DOTALL)
    assert gml is not None, "no GML origin in the JP2 header"
    origin = float(gml.group(1)), float(gml.group(2))
    assert origin == (grid.transform.c + resolution / 2, grid.transform.f - resolution / 2)  # pixel centre


# ---------------------------------------------------------------------------------------------- end to end

#: The window of the real 60 m rasters cut into the test product: vegetation, bare soil, water, thin and
#: thick clouds (rows 792–815, columns 228–251 of the T29UNU 60 m grid).
WINDOW_60M = Window(228, 792, 24, 24)
#: Reflectance of each derived band as a multiple of the real B04 reflectance (B04 itself: 1).
DERIVED_BANDS = {"B02": 0.8, "B03": 1.1, "B08": 4.0, "B11": 2.5, "B12": 1.6}


def _cut(src_path: Path, window: Window, out: Path) -> np.ndarray:
    """Write ``window`` of the real raster as a lossless JP2 with the same CRS and the window's transform."""
    with rasterio.open(src_path) as src:
        array = src.read(1, window=window)
        profile = {"crs": src.crs, "transform": src.window_transform(window), "dtype": src.dtypes[0]}
    _write_jp2(out, array, **profile)
    return array


def _write_jp2(out: Path, array: np.ndarray, **profile: object) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", driver="JP2OpenJPEG", width=array.shape[1], height=array.shape[0], count=1,
                       nodata=0, REVERSIBLE="YES", QUALITY=100, RESOLUTIONS=1, **profile) as dst:  # fmt: skip
        dst.write(array, 1)


@pytest.fixture
def real_cut_product(safe_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A SAFE product in tmp_path around the real T29UNU metadata (MTD_MSIL2A.xml, MTD_TL.xml copied) and
    24 × 24-pixel cuts of the real 60 m B04 and the real 20 m and 60 m SCL (same CRS, the window's
    transform). The model's other bands (B02, B03, B08, B11, B12) have no real raster here: they are
    derived from the real B04 tile, reflectance × DERIVED_BANDS, written with the same +1000 offset."""
    real = safe_dir / T29UNU
    product = tmp_path / "products" / T29UNU
    img = product / T29UNU_IMG
    (product / T29UNU_GRANULE).mkdir(parents=True)
    shutil.copyfile(real / "MTD_MSIL2A.xml", product / "MTD_MSIL2A.xml")
    shutil.copyfile(real / T29UNU_GRANULE / "MTD_TL.xml", product / T29UNU_GRANULE / "MTD_TL.xml")
    stem = "T29UNU_20221005T115411"
    raw = {
        "B04": _cut(real / JP2S["B04_60m"][0], WINDOW_60M, img / "R60m" / f"{stem}_B04_60m.jp2"),
        "SCL_60m": _cut(real / JP2S["SCL_60m"][0], WINDOW_60M, img / "R60m" / f"{stem}_SCL_60m.jp2"),
        "SCL_20m": _cut(
            real / JP2S["SCL_20m"][0],
            Window(
                WINDOW_60M.col_off * 3, WINDOW_60M.row_off * 3, WINDOW_60M.width * 3, WINDOW_60M.height * 3
            ),
            img / "R20m" / f"{stem}_SCL_20m.jp2",
        ),
    }
    with rasterio.open(img / "R60m" / f"{stem}_B04_60m.jp2") as src:
        profile = {"crs": src.crs, "transform": src.transform, "dtype": "uint16"}
    reflectance = (raw["B04"].astype("float64") - 1000) / 10000
    for band, factor in DERIVED_BANDS.items():
        dn = np.clip(np.round(reflectance * factor * 10000 + 1000), 1, 65535).astype("uint16")
        _write_jp2(img / "R60m" / f"{stem}_{band}_60m.jp2", np.where(raw["B04"] == 0, 0, dn), **profile)
    return tmp_path / "products", raw


def test_ingest_then_classify_a_safe_product_cut_from_the_real_files(
    real_cut_product: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from cropstar.cli import app
    from cropstar.data.cube import open_cube
    from cropstar.data.dataset import open_dataset
    from cropstar.data.fields import Fields
    from cropstar.data.ingest import ingest
    from cropstar.model.artifact import load_artifact
    from cropstar.model.default_model import default_model_path

    folder, raw = real_cut_product
    card = load_artifact(default_model_path()).card
    cube = open_cube(folder, bands=card.bands, resolution=60)
    assert cube.attrs["source_kind"] == "safe" and cube.data.shape == (1, 6, 24, 24)
    (product,) = cube.attrs["products"]
    assert product["boa_offset"] == -1000.0 and product["processing_baseline"] == "04.00"
    assert product["decided_by"].endswith(f"{T29UNU}/MTD_MSIL2A.xml")
    b04 = cube.data.sel(band="B04").isel(time=0).values
    for row, col in [(0, 0), (5, 20), (16, 3), (23, 23), (12, 12)]:  # clouds, water, vegetation, soil
        assert b04[row, col] == pytest.approx((int(raw["B04"][row, col]) - 1000) / 10000, abs=1e-7)
    scl_at_60m = raw["SCL_20m"][1::3, 1::3]  # the finest SCL, nearest onto the 60 m grid
    expected_valid = ~np.isin(scl_at_60m, sorted(SCL_INVALID))
    assert 0.3 < expected_valid.mean() < 0.9
    np.testing.assert_array_equal(cube.valid.isel(time=0).values, expected_valid)

    left, top = 499980 + 60 * WINDOW_60M.col_off, 5900040 - 60 * WINDOW_60M.row_off
    # rows r0–r1 and columns c0–c1 (ends excluded) of the cut: clouds, soil and vegetation; vegetation only
    field_boxes = {"mixed": (9, 17, 1, 23), "green": (17, 23, 1, 23)}
    fields = gpd.GeoDataFrame(
        {"field_id": list(field_boxes), "code": ["1101060000", "2001020022"]},
        geometry=[box(left + 60 * c0, top - 60 * r1, left + 60 * c1, top - 60 * r0)
                  for r0, r1, c0, c1 in field_boxes.values()],
        crs="EPSG:32629",
    )  # fmt: skip
    in_fields = np.zeros((24, 24), bool)
    for r0, r1, c0, c1 in field_boxes.values():
        in_fields[r0:r1, c0:c1] = True
    report = ingest(cube, Fields(fields), "code", tmp_path / "dataset", period=None, patch_size=1)
    reader = open_dataset(report.path)
    patches, coords = reader.read("patches"), reader.read("coords")
    rows = np.round((top - coords[:, 1]) / 60 - 0.5).astype(int)
    cols = np.round((coords[:, 0] - left) / 60 - 0.5).astype(int)
    sampled = np.zeros((24, 24), bool)
    sampled[rows, cols] = True
    np.testing.assert_array_equal(sampled, in_fields & expected_valid)  # cloudy pixels left out: SCL masking
    assert (in_fields & ~expected_valid).sum() > 20
    b04_index = list(reader.bands).index("B04")
    np.testing.assert_allclose(
        patches[:, 0, b04_index, 0, 0], (raw["B04"][rows, cols].astype("float64") - 1000) / 10000, atol=1e-6
    )

    out = tmp_path / "map.tif"
    result = CliRunner().invoke(
        app, ["classify", "--cube", str(folder), "--out", str(out), "--threads", "1", "--block-size", "144"]
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32629 and src.res == (10.0, 10.0) and src.shape == (144, 144)
        assert (src.transform.c, src.transform.f) == (left, top)
        assert src.tags()["model"] == card.name
        classes = src.read(1)
    valid_10m = np.repeat(np.repeat(~np.isin(raw["SCL_20m"], sorted(SCL_INVALID)), 2, axis=0), 2, axis=1)
    assert set(np.unique(classes[valid_10m]).tolist()) <= set(range(len(card.class_table.codes)))
    assert (classes[~valid_10m] == 255).all()  # clouds and shadows: no valid observation, no class


def test_without_the_product_xml_the_tile_id_suffix_decides_the_offset(
    real_cut_product: tuple[Path, dict[str, np.ndarray]],
) -> None:
    """The same cut product without its MTD_MSIL2A.xml: MTD_TL.xml holds no offset, but its TILE_ID ends
    ``_N04.00``, and the baseline decides."""
    from cropstar.data.cube import open_cube

    folder, raw = real_cut_product
    (folder / T29UNU / "MTD_MSIL2A.xml").unlink()
    cube = open_cube(folder, bands=["B04"], resolution=60)
    (product,) = cube.attrs["products"]
    assert product["boa_offset"] == -1000.0 and product["processing_baseline"] == "04.00"
    assert product["decided_by"].endswith("MTD_TL.xml")
    np.testing.assert_allclose(
        cube.data.isel(time=0, band=0).values, (raw["B04"].astype("float64") - 1000) / 10000, atol=1e-6
    )


def test_the_cli_offset_option_overrides_the_products_baseline(
    real_cut_product: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    """``--boa-offset 0`` (e.g. for catalogue items whose pixels are harmonised whatever their metadata
    says) replaces the −1000 the product's baseline 04.00 gives, and the dataset records it."""
    import json

    from shapely.geometry import box, mapping

    from cropstar.cli import app
    from cropstar.data.dataset import open_dataset

    folder, _ = real_cut_product
    left, top = 499980 + 60 * WINDOW_60M.col_off, 5900040 - 60 * WINDOW_60M.row_off
    field = box(left + 60, top - 60 * 23, left + 60 * 23, top - 60 * 17)  # vegetation
    fields = tmp_path / "fields.geojson"
    fields.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::32629"}}, "features": [
        {"type": "Feature", "properties": {"field_id": "green", "code": "2001020022"}, "geometry": mapping(field)}]}))  # fmt: skip
    b04 = {}
    for offset in (None, 0):
        out = tmp_path / f"dataset_{offset}"
        args = ["ingest", "--cube", str(folder), "--fields", str(fields), "--label-column", "code", "--out", str(out),
                "--bands", "B04", "--patch-size", "1"]  # fmt: skip
        result = CliRunner().invoke(app, args + ([] if offset is None else ["--boa-offset", str(offset)]))
        assert result.exit_code == 0, result.output
        reader = open_dataset(out)
        (product,) = reader.attrs["provenance"]["cube"]["products"]
        assert product["boa_offset"] == (-1000.0 if offset is None else 0.0)
        b04[offset] = reader.read("patches")[:, 0, 0, 0, 0]
    np.testing.assert_allclose(b04[0] - b04[None], 0.1, atol=1e-6)
