"""Sentinel-2 band names, aliases and the BOA offset rule."""

from __future__ import annotations

import pytest

from cropstar.data.bands import BANDS, DEFAULT_BANDS, RESOLUTION, boa_offset, canonical_band
from cropstar.errors import DataError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("B2", "B02"), ("b02", "B02"), ("B02_10m", "B02"), ("S2-L2A-B02", "B02"), ("blue", "B02"),
        ("OPTICAL-B11-ts3-20m", "B11"), ("B8A", "B8A"), ("b8a", "B8A"), ("S2-L2A-B8A", "B8A"),
        ("nir", "B08"), ("nir08", "B8A"), ("swir22", "B12"), ("scl", "SCL"), ("SCL_20m", "SCL"),
        ("rededge071", "B05"), ("rededge078", "B07"), ("B8A_20m", "B8A"),
    ],
)
def test_provider_names_map_to_canonical_bands(given: str, expected: str) -> None:
    assert canonical_band(given) == expected


@pytest.mark.parametrize("name", ["B10", "B13", "ndvi", ""])
def test_unknown_band_names_are_named_in_the_error(name: str) -> None:
    with pytest.raises(DataError, match=repr(name)):
        canonical_band(name)


def test_band_table() -> None:
    assert all(canonical_band(b) == b for b in BANDS)
    assert set(DEFAULT_BANDS) <= set(BANDS)
    assert [b for b in BANDS if RESOLUTION[b] == 10] == ["B02", "B03", "B04", "B08"]


def test_boa_offset_follows_the_processing_baseline() -> None:
    assert boa_offset("04.00") == -1000.0
    assert boa_offset("05.09") == -1000.0
    assert boa_offset("02.14") == 0.0
    assert boa_offset(3.99) == 0.0
    with pytest.raises(DataError, match="unknown processing baseline"):
        boa_offset(None)
    assert boa_offset("N0400") == -1000.0
    assert boa_offset("N0214") == 0.0
    with pytest.raises(DataError, match="'baseline4'"):
        boa_offset("baseline4")
