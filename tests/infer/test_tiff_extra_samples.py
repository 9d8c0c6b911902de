"""Marking the COG driver's alpha band as data (cropstar.infer.tiff_extra_samples): on real COGs GDAL
writes (classic TIFF and BigTIFF, with overviews), only the ExtraSamples values change — one byte per
image directory, the pixels and the COG layout as they were — and GDAL then reads band 2 as data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from cropstar.infer.tiff_extra_samples import mark_extra_samples_unspecified


def _two_band_cog(folder: Path, bigtiff: str) -> Path:
    staging, out = folder / "staging.tif", folder / "cog.tif"
    data = np.random.default_rng(0).integers(0, 8, (2, 300, 300), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 300, "height": 300, "count": 2, "dtype": "uint8", "crs": "EPSG:32632",
               "transform": from_origin(690000, 5360000, 10, 10), "photometric": "minisblack"}  # fmt: skip
    with rasterio.open(staging, "w", **profile) as dst:
        dst.write(data)
        dst.write_colormap(1, {value: (value * 30, 255 - value * 30, 0, 255) for value in range(8)})  # a class band
    rasterio.shutil.copy(staging, out, driver="COG", BLOCKSIZE=128, OVERVIEW_COUNT=2, BIGTIFF=bigtiff)
    return out


@pytest.mark.parametrize("bigtiff", ["NO", "YES"])
def test_only_the_extra_samples_values_change(tmp_path: Path, bigtiff: str) -> None:
    cog = _two_band_cog(tmp_path, bigtiff)
    with rasterio.open(cog) as src:
        assert src.colorinterp[1] == ColorInterp.alpha  # what the COG driver writes
        before_pixels, levels = src.read(), len(src.overviews(1)) + 1
    before = cog.read_bytes()
    assert mark_extra_samples_unspecified(cog) == levels  # the full image and each overview
    after = cog.read_bytes()
    assert len(after) == len(before)
    assert int(np.count_nonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))) == levels
    with rasterio.open(cog) as src:
        assert src.colorinterp == (ColorInterp.palette, ColorInterp.undefined)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(src.read(), before_pixels)
    assert mark_extra_samples_unspecified(cog) == 0  # nothing left to change


def test_a_file_that_is_not_a_tiff_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "map.tif"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    with pytest.raises(ValueError, match="map.tif: not a TIFF file"):
        mark_extra_samples_unspecified(other)
