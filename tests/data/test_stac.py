"""open_cube on STAC: an ItemCollection JSON (written with pystac) over local GeoTIFFs with relative hrefs,
provider asset names, item datetimes, BOA offsets from item properties, missing bands and baselines; the
catalogue rules on small items made here (Earth Search flag and ``*-jp2`` twins, CDSE resolutions and
asset-level raster offsets, non-L2A items, disagreeing metadata). The real catalogue items are in
test_stac_catalogues.py."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasters

from cropstar.data.cube import open_cube
from cropstar.data.sources import source_kind
from cropstar.data.sources.stac import decide_item_offset
from cropstar.data.sources.stac_catalogues import read_catalogue_item
from cropstar.errors import DataError, MetadataConflictWarning

CRS = "EPSG:32632"
LEFT, TOP = 600000.0, 5300040.0
#: item id, datetime, properties
ITEMS = [
    (
        "S2B_32UPU_20230611_0_L2A",
        datetime(2023, 6, 11, 10, 26, 1, tzinfo=UTC),
        {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False},
    ),
    (
        "S2A_32UPU_20230601_0_L2A",
        datetime(2023, 6, 1, 10, 25, 59, tzinfo=UTC),
        {"processing:version": "02.14"},
    ),
    (
        "S2A_32UPU_20230621_0_L2A",
        datetime(2023, 6, 21, 10, 25, 59, tzinfo=UTC),
        {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True},
    ),
]
OFFSETS = {ITEMS[0][0]: -1000.0, ITEMS[1][0]: 0.0, ITEMS[2][0]: 0.0}
#: asset key → (canonical band, resolution)
ASSETS = {
    "blue": ("B02", 10),
    "B03_10m": ("B03", 10),
    "nir": ("B08", 10),
    "swir16": ("B11", 20),
    "scl": ("SCL", 20),
}


def write_tif(path: Path, array: np.ndarray, res: float) -> None:
    rasters.write_raster(path, array, res, crs=CRS, left=LEFT, top=TOP)


def make_items(
    folder: Path, *, drop: tuple[str, str] | None = None, strip: str | None = None
) -> tuple[list, dict]:
    """Items over GeoTIFFs in ``folder``/{item id}/: 10 m bands 8×8, 20 m bands 4×4; asset hrefs relative
    to ``folder``. ``drop``: (item id, asset key) left out; ``strip``: property removed from every item."""
    rng = np.random.default_rng(3)
    items, raw = [], {}
    for item_id, when, props in ITEMS:
        props = {k: v for k, v in props.items() if k != strip}
        item = pystac.Item(item_id, None, None, when, {**props, "s2:mgrs_tile": "32UPU"})
        for key, (band, res) in ASSETS.items():
            size = 80 // res
            if band == "SCL":
                array = np.full((size, size), 4, "uint8")
                array[0, :] = 9  # cloud in the top 20 m row
            else:
                array = rng.integers(1500, 6000, (size, size)).astype("uint16")
            raw[item_id, band] = array
            write_tif(folder / item_id / f"{key}.tif", array, res)
            if (item_id, key) != drop:
                item.add_asset(key, pystac.Asset(f"{item_id}/{key}.tif", media_type=pystac.MediaType.GEOTIFF))
        item.add_asset("thumbnail", pystac.Asset(f"{item_id}/thumb.png", roles=["thumbnail"]))
        items.append(item)
    return items, raw


def write_collection(folder: Path, items: list) -> Path:
    path = folder / "search.json"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    return path


def test_item_collection_json_gives_values_times_and_offsets(tmp_path):
    items, raw = make_items(tmp_path / "stac")
    path = write_collection(tmp_path / "stac", items)
    assert source_kind(path) == "stac"
    cube = open_cube(path, bands=["blue", "B03", "nir", "swir16"])
    assert cube.bands == ("B02", "B03", "B08", "B11")
    assert list(cube.times) == sorted(pd.Timestamp(when).tz_convert(None) for _, when, _ in ITEMS)
    assert cube.data.shape == (3, 4, 8, 8)
    assert tuple(cube.data.rio.transform())[:6] == (10.0, 0.0, LEFT, 0.0, -10.0, TOP)
    loaded = cube.compute()
    for item_id, when, _ in ITEMS:
        step = loaded.data.sel(time=pd.Timestamp(when).tz_convert(None))
        for band in ("B02", "B03", "B08"):
            expected = (raw[item_id, band].astype("float32") + OFFSETS[item_id]) / 10000
            np.testing.assert_allclose(step.sel(band=band).values, expected, rtol=1e-6)
        assert np.isfinite(step.sel(band="B11").values).all()
        # SCL cloud in the top 20 m row → the top two 10 m rows are invalid
        valid = loaded.valid.sel(time=pd.Timestamp(when).tz_convert(None)).values
        assert not valid[:2].any() and valid[2:].all()
    products = {p["product"]: p for p in cube.attrs["products"]}
    assert {k: p["boa_offset"] for k, p in products.items()} == OFFSETS
    assert products[ITEMS[0][0]]["decided_by"] == "item property s2:processing_baseline"
    assert products[ITEMS[1][0]]["processing_baseline"] == "02.14"
    assert products[ITEMS[2][0]]["decided_by"] == "item property earthsearch:boa_offset_applied"
    assert cube.attrs["source_kind"] == "stac" and cube.attrs["tile"] == "32UPU"
    json.dumps(cube.attrs)


def test_in_memory_item_collection_and_time_selection(tmp_path):
    items, raw = make_items(tmp_path / "stac")
    for item in items:  # absolute hrefs for an in-memory collection
        for asset in item.assets.values():
            asset.href = str(tmp_path / "stac" / asset.href)
    cube = open_cube(pystac.ItemCollection(items), bands=["B02"], time=("2023-06-05", "2023-06-15"))
    assert list(cube.times) == [pd.Timestamp("2023-06-11T10:26:01")]
    expected = (raw[ITEMS[0][0], "B02"].astype("float32") - 1000) / 10000
    np.testing.assert_allclose(cube.data.isel(time=0, band=0).values, expected, rtol=1e-6)


def test_missing_band_names_the_band_and_the_item(tmp_path):
    items, _ = make_items(tmp_path / "stac", drop=(ITEMS[1][0], "nir"))
    path = write_collection(tmp_path / "stac", items)
    with pytest.raises(DataError, match=f"band B08 missing in STAC item {ITEMS[1][0]}"):
        open_cube(path, bands=["B02", "B08"])
    assert open_cube(path, bands=["B02"]).data.sizes["time"] == 3


def test_missing_baseline_names_the_item(tmp_path):
    items, _ = make_items(tmp_path / "stac", strip="processing:version")
    path = write_collection(tmp_path / "stac", items)
    with pytest.raises(DataError, match=f"unknown processing baseline for STAC item {ITEMS[1][0]}"):
        open_cube(path, bands=["B02"]).compute()
    cube = open_cube(path, bands=["B02"], processing_baseline="02.14")
    assert [p["boa_offset"] for p in cube.attrs["products"]] == [0.0, 0.0, 0.0]


def test_remote_hrefs_pass_through_to_gdal(tmp_path):
    from cropstar.data.sources.stac import _href

    item = pystac.Item("x", None, None, datetime(2023, 6, 1, tzinfo=UTC), {})
    for href in ("https://bucket.example.com/a/B02.tif", "s3://bucket/a/B02.tif", "/vsicurl/https://h/x.tif"):
        item.add_asset("blue", pystac.Asset(href))
        assert _href(item.assets["blue"], item, str(tmp_path)) == href
    item.add_asset("blue", pystac.Asset("B02.tif"))
    assert _href(item.assets["blue"], item, "https://h/search") == "https://h/search/B02.tif"
    assert _href(item.assets["blue"], item, str(tmp_path)) == tmp_path / "B02.tif"


#: raster extension v1 (Earth Search) and v2 (CDSE) declarations of the L2A offset −0.1 at scale 0.0001
RASTER_V1 = {"raster:bands": [{"scale": 0.0001, "offset": -0.1, "nodata": 0}]}
RASTER_V2 = {"raster:scale": 0.0001, "raster:offset": -0.1}


def write_item(
    folder: Path, item_id: str, props: dict, assets: dict[str, tuple[np.ndarray, float, dict]]
) -> Path:
    """A one-item ItemCollection JSON in ``folder`` over GeoTIFFs: asset key → (array, resolution, extra
    asset fields)."""
    item = pystac.Item(item_id, None, None, datetime(2023, 6, 11, 10, 26, 1, tzinfo=UTC), props)
    for key, (array, res, fields) in assets.items():
        write_tif(folder / f"{key}.tif", array, res)
        item.add_asset(key, pystac.Asset(f"{key}.tif", extra_fields={"gsd": res, **fields}))
    return write_collection(folder, [item])


def test_earth_search_flag_wins_over_declared_offset_and_twins_are_not_read(tmp_path):
    cog = np.random.default_rng(5).integers(1500, 6000, (8, 8)).astype("uint16")
    props = {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}
    props["s2:mgrs_tile"] = "32UPU"
    path = write_item(
        tmp_path,
        "S2A_32UPU_20230611_0_L2A",
        props,
        {
            "red": (cog, 10, RASTER_V1),  # harmonised COG: the offset is already in the DN
            "red-jp2": (cog + 1000, 10, RASTER_V1),  # the original JP2 twin, same declared metadata
            "scl": (np.full((4, 4), 4, "uint8"), 20, {}),
        },
    )
    declared = (
        r"S2A_32UPU_20230611_0_L2A .*: assets red declare raster offset -0.1 and scale 0.0001 "
        r"\(= -1000 DN\), but the BOA offset used is 0 DN"
    )
    with pytest.warns(MetadataConflictWarning, match=declared):
        cube = open_cube(path, bands=["B04"])
    np.testing.assert_allclose(cube.data.isel(time=0, band=0).values, cog / 10000, rtol=1e-6)
    assert cube.attrs["products"][0]["decided_by"] == "item property earthsearch:boa_offset_applied"
    with warnings.catch_warnings():  # an explicit offset overrides everything, without warnings
        warnings.simplefilter("error", MetadataConflictWarning)
        cube = open_cube(path, bands=["B04"], boa_offset=-1000)
    np.testing.assert_allclose(cube.data.isel(time=0, band=0).values, (cog - 1000.0) / 10000, rtol=1e-6)


def test_finest_asset_and_asset_level_raster_offsets(tmp_path):
    rng = np.random.default_rng(6)
    fine, coarse = (rng.integers(1500, 6000, (n, n)).astype("uint16") for n in (8, 4))
    props = {"processing:version": "05.11", "grid:code": "MGRS-32UPU", "platform": "sentinel-2c"}
    path = write_item(
        tmp_path,
        "S2C_MSIL2A_20230611T102601_N0511_R122_T32UPU_20230611T145914",
        props,
        {
            "B04_20m": (coarse, 20, RASTER_V2),
            "B04_10m": (fine, 10, RASTER_V2),
            "AOT_10m": (fine, 10, RASTER_V2),  # CDSE declares the reflectance offset on AOT too: ignored
            "SCL_20m": (np.full((4, 4), 4, "uint8"), 20, {}),
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataConflictWarning)
        cube = open_cube(path, bands=["B04"])
    np.testing.assert_allclose(cube.data.isel(time=0, band=0).values, (fine - 1000.0) / 10000, rtol=1e-6)
    assert cube.attrs["tile"] == "32UPU"
    assert cube.attrs["products"][0]["decided_by"] == "item property processing:version"


def test_item_of_another_product_level_is_named():
    when = datetime(2023, 6, 11, tzinfo=UTC)
    l2a = pystac.Item("S2B_32UPU_20230611_0_L2A", None, None, when, {"s2:processing_baseline": "05.09"})
    l1c = pystac.Item("S2B_32UPU_20230611_0_L1C", None, None, when, {"s2:product_type": "S2MSI1C"})
    with pytest.raises(DataError, match=r"STAC item S2B_32UPU_20230611_0_L1C .*s2:product_type is 'S2MSI1C'"):
        open_cube(pystac.ItemCollection([l1c, l2a]), bands=["B04"])


def test_disagreeing_metadata_is_warned_or_refused():
    when = datetime(2023, 6, 11, tzinfo=UTC)
    props = {
        "s2:processing_baseline": "05.09",
        "s2:product_uri": "S2A_MSIL2A_20230611T102601_N0312_R065_T32UPU_20230611T120000.SAFE",
    }
    scene = read_catalogue_item(pystac.Item("S2A_32UPU_20230611_0_L2A", None, None, when, props))
    other = r"baseline 03.12 \(N0312 in item property s2:product_uri\)"
    with pytest.warns(MetadataConflictWarning, match=other):
        assert decide_item_offset(scene).boa_offset == -1000.0
    item = pystac.Item("S2A_32UPU_20230611_0_L2A", None, None, when, props)
    item.add_asset("nir", pystac.Asset("B8A.tif", extra_fields={"eo:bands": [{"name": "B8A"}]}))
    with pytest.raises(DataError, match=r"asset 'nir' names band B08 but its band entry says 'B8A'"):
        read_catalogue_item(item)
