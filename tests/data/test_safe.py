"""open_cube on Sentinel-2 L2A SAFE products: JP2 band files in GRANULE/*/IMG_DATA/R10m|R20m|R60m, the BOA
offset of each product from its MTD_MSIL2A.xml, finest resolution per band, SCL masking, geo-referencing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasters

from cropstar.data.cube import open_cube
from cropstar.data.sources import source_kind
from cropstar.data.sources.safe import read_mtd
from cropstar.errors import DataError, InputError

CRS = "EPSG:32632"
LEFT, TOP = 600000.0, 5300040.0
TILE = "32UPU"
#: (sensing time, processing baseline, explicit BOA_ADD_OFFSET values in the MTD)
PRODUCTS = [("20230601T102559", "04.00", True), ("20180611T102601", "02.14", False)]
ESA_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def write_jp2(path: Path, array: np.ndarray, res: float) -> None:
    """A lossless one-band JPEG 2000 file (uint16, nodata 0) with its upper-left corner at (LEFT, TOP)."""
    rasters.write_raster(path, array, res, crs=CRS, left=LEFT, top=TOP, driver="JP2OpenJPEG",
                         REVERSIBLE="YES", QUALITY=100, RESOLUTIONS=1)


def bilinear_10m(array20: np.ndarray) -> np.ndarray:
    """rasterio's reference: a 20 m DN array warped bilinearly onto the 10 m grid (DN 0 = no data)."""
    return rasters.bilinear_upsampled(array20, crs=CRS, left=LEFT, top=TOP)


def mtd_xml(baseline: str | None, offsets: bool) -> str:
    """A minimal MTD_MSIL2A.xml laid out as ESA writes it (PSD 14.x)."""
    info = f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>" if baseline else ""
    offset_list = ""
    if offsets:
        offset_list = (
            "<BOA_ADD_OFFSET_VALUES_LIST>"
            + "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
            + "</BOA_ADD_OFFSET_VALUES_LIST>"
        )
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b}"><RESOLUTION>10</RESOLUTION></Spectral_Information>'
        for i, b in enumerate(ESA_BANDS)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      {info}
      <PRODUCT_START_TIME>2023-06-01T10:25:59.024Z</PRODUCT_START_TIME>
    </Product_Info>
    <Product_Image_Characteristics>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      {offset_list}
      <Spectral_Information_List>{spectral}</Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def write_product(
    parent: Path, ts: str, baseline: str | None, offsets: bool, rng: np.random.Generator
) -> tuple[Path, dict]:
    """One SAFE product: B02, B03, B04, B08 at 10 m (8×8); B02, B11, B12, SCL at 20 m (4×4); B11 at 60 m."""
    number = f"N{baseline.replace('.', '')}" if baseline else "N9999"
    root = parent / f"S2A_MSIL2A_{ts}_{number}_R065_T{TILE}_{ts[:8]}T150000.SAFE"
    img = root / "GRANULE" / f"L2A_T{TILE}_A041000_{ts}" / "IMG_DATA"
    raw: dict = {}
    for band in ("B02", "B03", "B04", "B08"):
        raw[band] = rng.integers(1500, 6000, (8, 8)).astype("uint16")
        write_jp2(img / "R10m" / f"T{TILE}_{ts}_{band}_10m.jp2", raw[band], 10)
    for band in ("B02", "B11", "B12"):
        raw[band, 20] = rng.integers(1500, 6000, (4, 4)).astype("uint16")
        write_jp2(img / "R20m" / f"T{TILE}_{ts}_{band}_20m.jp2", raw[band, 20], 20)
    raw["SCL"] = np.array([[4, 4, 9, 9], [4, 5, 9, 9], [6, 4, 4, 3], [4, 4, 4, 4]], "uint8")
    write_jp2(img / "R20m" / f"T{TILE}_{ts}_SCL_20m.jp2", raw["SCL"].astype("uint16"), 20)
    raw["B11", 60] = rng.integers(1500, 6000, (2, 2)).astype("uint16")
    write_jp2(img / "R60m" / f"T{TILE}_{ts}_B11_60m.jp2", raw["B11", 60], 60)
    write_jp2(img / "R10m" / f"T{TILE}_{ts}_TCI_10m.jp2", np.ones((8, 8), "uint16"), 10)  # not a band
    (root / "MTD_MSIL2A.xml").write_text(mtd_xml(baseline, offsets))
    (root / "manifest.safe").write_text("<xfdu:XFDU/>")
    return root, raw


@pytest.fixture
def safe_products(tmp_path: Path) -> tuple[Path, list[Path], list[dict]]:
    rng = np.random.default_rng(7)
    roots, raws = [], []
    for ts, baseline, offsets in PRODUCTS:
        root, raw = write_product(tmp_path / "products", ts, baseline, offsets, rng)
        roots.append(root)
        raws.append(raw)
    return tmp_path / "products", roots, raws


def test_read_mtd_gives_baseline_and_offsets_by_band(safe_products):
    _, roots, _ = safe_products
    info = read_mtd(roots[0] / "MTD_MSIL2A.xml")
    assert info.processing_baseline == "04.00"
    assert info.boa_offsets["B02"] == -1000 and info.boa_offsets["B12"] == -1000
    assert "B10" in info.boa_offsets and len(info.boa_offsets) == 13
    old = read_mtd(roots[1] / "MTD_MSIL2A.xml")
    assert old.processing_baseline == "02.14" and old.boa_offsets == {}


def test_folder_of_safe_products_offsets_per_product(safe_products):
    folder, roots, raws = safe_products
    assert source_kind(folder) == "safe" and source_kind(roots[0]) == "safe"
    cube = open_cube(folder, bands=["B02", "B04", "B11"])
    times = [pd.Timestamp(ts) for ts, _, _ in PRODUCTS]
    assert list(cube.times) == sorted(times)
    assert cube.data.shape == (2, 3, 8, 8)
    assert cube.crs.to_epsg() == 32632
    assert tuple(cube.data.rio.transform())[:6] == (10.0, 0.0, LEFT, 0.0, -10.0, TOP)
    loaded = cube.compute()
    for (ts, baseline, _), raw in zip(PRODUCTS, raws, strict=True):
        offset = -1000.0 if baseline == "04.00" else 0.0
        step = loaded.data.sel(time=pd.Timestamp(ts))
        # B02 comes from R10m (the finest), not R20m
        np.testing.assert_allclose(step.sel(band="B02").values, (raw["B02"] + offset) / 10000, rtol=1e-6)
        np.testing.assert_allclose(step.sel(band="B04").values, (raw["B04"] + offset) / 10000, rtol=1e-6)
        # B11 from R20m (not R60m), resampled bilinearly to 10 m
        np.testing.assert_allclose(
            step.sel(band="B11").values, (bilinear_10m(raw["B11", 20]) + offset) / 10000, rtol=1e-5
        )
    products = {p["time"]: p for p in cube.attrs["products"]}
    new, old = products[times[0].isoformat()], products[times[1].isoformat()]
    assert new["processing_baseline"] == "04.00" and new["boa_offset"] == -1000.0
    assert old["processing_baseline"] == "02.14" and old["boa_offset"] == 0.0
    assert new["decided_by"].endswith("MTD_MSIL2A.xml") and roots[0].name in new["decided_by"]
    assert new["product"] == roots[0].name
    assert cube.attrs["source_kind"] == "safe"
    assert cube.attrs["native_resolution"] == {"B02": [10.0], "B04": [10.0], "B11": [20.0]}
    json.dumps(cube.attrs)


def test_scl_masks_cloud_and_shadow(safe_products):
    _, roots, raws = safe_products
    cube = open_cube(roots[0], bands=["B02", "B08"]).compute()
    scl10 = np.repeat(np.repeat(raws[0]["SCL"], 2, axis=0), 2, axis=1)
    expected = ~np.isin(scl10, [0, 1, 2, 3, 8, 9, 10])
    np.testing.assert_array_equal(cube.valid.isel(time=0).values, expected)
    assert cube.attrs["scl"] == "all acquisitions"


def test_single_product_and_arguments_override(safe_products):
    _, roots, raws = safe_products
    cube = open_cube(roots[1], bands=["B03"], boa_offset=-1000)
    assert cube.data.sizes["time"] == 1
    expected = (raws[1]["B03"].astype("float32") - 1000) / 10000
    np.testing.assert_allclose(cube.data.isel(time=0, band=0).values, expected, rtol=1e-6)
    assert cube.attrs["products"][0]["decided_by"] == "argument boa_offset"


def test_mtd_without_baseline_names_the_file(tmp_path):
    _, _ = write_product(tmp_path, "20230601T102559", None, False, np.random.default_rng(0))
    with pytest.raises(DataError, match=r"MTD_MSIL2A\.xml.*PROCESSING_BASELINE"):
        open_cube(tmp_path, bands=["B02"])
    cube = open_cube(tmp_path, bands=["B02"], processing_baseline="05.09")
    assert cube.attrs["products"][0]["boa_offset"] == -1000.0


def test_missing_band_and_empty_product(safe_products, tmp_path):
    folder, _, _ = safe_products
    with pytest.raises(DataError, match="band B05 not found"):
        open_cube(folder, bands=["B05"])
    (tmp_path / "S2B_MSIL2A_EMPTY.SAFE").mkdir()
    with pytest.raises(InputError, match="not a readable Sentinel-2 L2A SAFE product"):
        open_cube(tmp_path / "S2B_MSIL2A_EMPTY.SAFE")
