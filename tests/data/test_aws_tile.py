"""The AWS ``sentinel-s2-l2a`` tile-folder reader on the real T01VCG ``metadata.xml`` and ``tileInfo.json``
(``../shared/data/s2-metadata/safe/aws-sentinel-s2-l2a``): a 2020 acquisition reprocessed at baseline
05.00, whose baseline is only the ``_N05.00`` suffix of its ids, gets the −1000 offset; tile, CRS, grid and
sensing time come from the tile files. The shared data holds no T01VCG band raster: the band files here
are small synthetic DN rasters placed on the real tile's grid, next to copies of the real metadata."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from cropstar.data.cube import open_cube
from cropstar.data.harmonise import decide_boa_offset
from cropstar.data.sources import source_kind
from cropstar.data.sources.aws_tile import read_aws_tile
from cropstar.errors import DataError, InputError

pytestmark = pytest.mark.realdata

AWS_TILE = "aws-sentinel-s2-l2a/S2B_MSIL2A_20200914T231559_N0500_R087_T01VCG_20230315T224658"
PRODUCT_NAME = "S2B_MSIL2A_20200914T231559_N0500_R087_T01VCG_20230315T224658"
SENSING_TIME = pd.Timestamp("2020-09-14T23:19:31.559091")
#: The upper-left corner of the synthetic band rasters: 600 m east and south of the tile's ULX/ULY.
LEFT, TOP = 300000.0 + 600, 6700020.0 - 600
#: The bucket path of the tile folder below the source folder.
BUCKET_PATH = "tiles/1/V/CG/2020/9/14/0"
SCL = np.array([[4, 4, 9, 9], [4, 5, 9, 9], [6, 4, 4, 3], [4, 4, 4, 4]], "uint8")


@pytest.fixture
def real_tile(shared_data: Path) -> Path:
    """The real tile folder (metadata.xml and tileInfo.json, no band files); skips where absent."""
    folder = shared_data / "s2-metadata" / "safe" / AWS_TILE
    if not (folder / "metadata.xml").is_file():
        pytest.skip(f"{folder} not found: the real AWS tile metadata is absent")
    return folder


def _write_jp2(path: Path, array: np.ndarray, res: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=array.shape[1], height=array.shape[0], count=1,
                       dtype=array.dtype, crs="EPSG:32601", transform=from_origin(LEFT, TOP, res, res), nodata=0,
                       REVERSIBLE="YES", QUALITY=100, RESOLUTIONS=1) as dst:  # fmt: skip
        dst.write(array, 1)


def make_tile_folder(
    real_tile: Path, top: Path, *, metadata: str | None = None, tile_info: dict | None = None,
    product_metadata: str | None = None,
) -> tuple[Path, dict]:  # fmt: skip
    """A tile folder at ``top/BUCKET_PATH``: the real metadata.xml and tileInfo.json (or the given edited
    copies), and synthetic band files in the bucket's layouts: ``R10m/B02.jp2``, ``R10m/B04.jp2`` (8 × 8),
    ``R20m/B02.jp2`` (coarser, not to be used), ``R20m/B11.jp2``, ``R20m/SCL.jp2`` (4 × 4), ``B08.jp2``
    in the folder itself, and files that are no bands (``TCI.jp2``, ``R20m/AOT.jp2``, ``qi/CLD_20m.jp2``)."""
    folder = top / BUCKET_PATH
    folder.mkdir(parents=True)
    if metadata is None:
        shutil.copyfile(real_tile / "metadata.xml", folder / "metadata.xml")
    else:
        (folder / "metadata.xml").write_text(metadata)
    if tile_info is None:
        shutil.copyfile(real_tile / "tileInfo.json", folder / "tileInfo.json")
    else:
        (folder / "tileInfo.json").write_text(json.dumps(tile_info))
    if product_metadata is not None:
        (folder / "product_metadata.xml").write_text(product_metadata)
    rng = np.random.default_rng(11)
    raw = {
        "B02": rng.integers(1500, 6000, (8, 8)).astype("uint16"),
        "B04": rng.integers(1500, 6000, (8, 8)).astype("uint16"),
        "B08": rng.integers(1500, 6000, (8, 8)).astype("uint16"),
        "B11": rng.integers(1500, 6000, (4, 4)).astype("uint16"),
    }
    _write_jp2(folder / "R10m" / "B02.jp2", raw["B02"], 10)
    _write_jp2(folder / "R10m" / "B04.jp2", raw["B04"], 10)
    _write_jp2(folder / "B08.jp2", raw["B08"], 10)
    _write_jp2(folder / "R20m" / "B02.jp2", np.full((4, 4), 9000, "uint16"), 20)
    _write_jp2(folder / "R20m" / "B11.jp2", raw["B11"], 20)
    _write_jp2(folder / "R20m" / "SCL.jp2", SCL, 20)
    for other in ("TCI.jp2", "R20m/AOT.jp2", "qi/CLD_20m.jp2"):
        _write_jp2(folder / other, np.ones((4, 4), "uint16"), 20)
    return folder, raw


def test_the_real_tile_files_give_tile_grid_time_and_baseline_from_the_id_suffix(real_tile: Path) -> None:
    tile = read_aws_tile(real_tile)
    meta = tile.metadata
    assert meta.tile == "01VCG" and meta.tile_id.endswith("_T01VCG_N05.00")
    assert meta.crs.to_epsg() == 32601 and meta.sensing_time == SENSING_TIME
    assert tuple(meta.grids[10].transform)[:6] == (10, 0, 300000, 0, -10, 6700020)
    assert meta.grids[20].shape == (5490, 5490) and meta.grids[60].shape == (1830, 1830)
    assert tile.product is None and tile.product_name == PRODUCT_NAME  # no product_metadata.xml here
    assert tile.processing_baseline == "05.00" and tile.found_by.endswith("metadata.xml (TILE_ID suffix)")
    decision = decide_boa_offset(found_baseline=tile.processing_baseline, found_by=tile.found_by)
    assert decision.boa_offset == -1000.0  # sensed in 2020, before 04.00 existed: the baseline decides
    assert meta.sensing_time < pd.Timestamp("2022-01-25")


def test_the_real_folder_is_an_aws_tile_and_without_band_files_says_so(real_tile: Path) -> None:
    assert source_kind(real_tile) == "aws_tile" and source_kind(real_tile.parent) == "aws_tile"
    with pytest.raises(InputError, match=r"no band files in the AWS tile folder.*B04\.jp2"):
        open_cube(real_tile)


def test_a_tile_folder_reads_as_a_cube_with_the_offset_of_its_baseline(
    real_tile: Path, tmp_path: Path
) -> None:
    _, raw = make_tile_folder(real_tile, tmp_path)
    assert source_kind(tmp_path / "tiles") == "aws_tile"
    cube = open_cube(tmp_path / "tiles", bands=["B02", "B04", "B08", "B11"])
    assert list(cube.times) == [SENSING_TIME]
    assert cube.data.shape == (1, 4, 8, 8) and cube.crs.to_epsg() == 32601
    assert tuple(cube.data.rio.transform())[:6] == (10.0, 0.0, LEFT, 0.0, -10.0, TOP)
    step = cube.data.isel(time=0).compute()
    for band in ("B02", "B04", "B08"):  # B02 from R10m (the finest), not R20m
        np.testing.assert_allclose(step.sel(band=band).values, (raw[band] - 1000.0) / 10000, rtol=1e-6)
    assert np.isfinite(step.sel(band="B11").values).all()
    (product,) = cube.attrs["products"]
    assert product["product"] == PRODUCT_NAME and product["tile"] == "01VCG"
    assert product["processing_baseline"] == "05.00" and product["boa_offset"] == -1000.0
    assert product["decided_by"].endswith("metadata.xml (TILE_ID suffix)")
    assert cube.attrs["source_kind"] == "aws_tile" and cube.attrs["layout"] == ["aws"]
    scl10 = np.repeat(np.repeat(SCL, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(cube.valid.isel(time=0).values, ~np.isin(scl10, [0, 1, 2, 3, 8, 9, 10]))
    override = open_cube(tmp_path / "tiles", bands=["B04"], processing_baseline="02.14")
    np.testing.assert_allclose(override.data.isel(time=0, band=0).values, raw["B04"] / 10000, rtol=1e-6)


def test_product_metadata_beside_the_tile_gives_the_offsets_and_must_agree(
    real_tile: Path, shared_data: Path, tmp_path: Path
) -> None:
    """A product_metadata.xml in the tile folder: copies of real MTD_MSIL2A.xml files. One edited to baseline
    05.00 with band_id 3 (B04) at −1003 is taken band by band; the unedited 05.09 one contradicts the
    tile's _N05.00 and is refused."""
    safe = shared_data / "s2-metadata" / "safe"
    real_0509 = (
        safe / "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE" / "MTD_MSIL2A.xml"
    ).read_text()
    edited = real_0509.replace("<PROCESSING_BASELINE>05.09<", "<PROCESSING_BASELINE>05.00<")
    edited = edited.replace('<BOA_ADD_OFFSET band_id="3">-1000<', '<BOA_ADD_OFFSET band_id="3">-1003<')
    _, raw = make_tile_folder(real_tile, tmp_path / "a", product_metadata=edited)
    cube = open_cube(tmp_path / "a", bands=["B04"])
    (product,) = cube.attrs["products"]
    assert product["boa_offset"] == -1003.0 and product["decided_by"].endswith("product_metadata.xml")
    np.testing.assert_allclose(
        cube.data.isel(time=0, band=0).values, (raw["B04"] - 1003.0) / 10000, rtol=1e-6
    )
    make_tile_folder(real_tile, tmp_path / "b", product_metadata=real_0509)
    with pytest.raises(
        DataError, match=r"product_metadata\.xml says processing baseline 05\.09.*says 05\.00"
    ):
        open_cube(tmp_path / "b", bands=["B04"])


def test_a_tile_info_of_another_tile_is_refused_naming_both_files(real_tile: Path, tmp_path: Path) -> None:
    info = json.loads((real_tile / "tileInfo.json").read_text())
    make_tile_folder(real_tile, tmp_path, tile_info={**info, "gridSquare": "CH"})
    with pytest.raises(
        DataError, match=r"tileInfo\.json says tile 01VCH but the TILE_ID .*metadata\.xml says 01VCG"
    ):
        open_cube(tmp_path, bands=["B04"])


def test_without_id_suffixes_the_product_name_then_the_argument_decides(
    real_tile: Path, tmp_path: Path
) -> None:
    stripped = re.sub(r"_N05\.00<", "<", (real_tile / "metadata.xml").read_text())
    assert "_N05.00<" not in stripped
    make_tile_folder(real_tile, tmp_path / "a", metadata=stripped)
    (product,) = open_cube(tmp_path / "a", bands=["B04"]).attrs["products"]
    assert product["boa_offset"] == -1000.0 and product["decided_by"].endswith("tileInfo.json (productName)")
    info = json.loads((real_tile / "tileInfo.json").read_text())
    del info["productName"]
    make_tile_folder(real_tile, tmp_path / "b", metadata=stripped, tile_info=info)
    with pytest.raises(DataError, match="unknown processing baseline"):
        open_cube(tmp_path / "b", bands=["B04"])
    (product,) = open_cube(tmp_path / "b", bands=["B04"], processing_baseline="05.00").attrs["products"]
    assert product["boa_offset"] == -1000.0
