"""Per-band normalisation statistics over valid steps, streamed shard by shard."""

from __future__ import annotations

import numpy as np
import pytest

from cropstar.data.normalisation import BandStatistics, Normalisation, band_statistics
from cropstar.errors import DataError


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    patches = (
        rng.normal(size=(23, 7, 4, 3, 3)) * np.array([1, 2, 3, 4])[None, None, :, None, None] + 5
    ).astype(np.float32)
    mask = rng.random((23, 7)) > 0.4
    patches[~mask] = 1000.0  # invalid steps hold junk that must not count
    return patches, mask


def _numpy_reference(patches: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.moveaxis(patches[mask].astype(np.float64), 1, 0).reshape(patches.shape[2], -1)
    return values.mean(axis=1), values.std(axis=1)


def test_equals_numpy_over_valid_steps() -> None:
    patches, mask = _data()
    stats = band_statistics(patches, mask)
    mean, std = _numpy_reference(patches, mask)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(stats.std, std, rtol=1e-10)


def test_streaming_equals_one_shot() -> None:
    patches, mask = _data(1)
    running = BandStatistics(4)
    for start in range(0, 23, 5):  # uneven shards, one of them smaller
        running.update(patches[start : start + 5], mask[start : start + 5])
    running.update(patches[:0], mask[:0])  # an empty shard changes nothing
    mean, std = _numpy_reference(patches, mask)
    result = running.result()
    np.testing.assert_allclose(result.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(result.std, std, rtol=1e-10)


def test_nan_values_are_ignored_and_empty_bands_named() -> None:
    patches, mask = _data(2)
    patches[0, np.flatnonzero(mask[0])[0], 1, 0, 0] = np.nan
    stats = band_statistics(patches, mask)
    assert np.all(np.isfinite(stats.mean)) and np.all(np.isfinite(stats.std))
    patches[:, :, 2] = np.nan
    with pytest.raises(DataError, match="band.*B04"):
        band_statistics(patches, mask, ["B02", "B03", "B04", "B08"])


def test_apply_and_round_trip() -> None:
    norm = Normalisation(np.array([1.0, 2.0]), np.array([2.0, 0.0]))
    x = np.array([[[[3.0]], [[5.0]]]], dtype=np.float32)  # (1, C=2, 1, 1)
    out = norm.apply(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [1.0, 3.0])  # std 0: divided by 1
    again = Normalisation.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.mean, norm.mean)
    with pytest.raises(DataError, match="3 bands"):
        norm.apply(np.zeros((3, 1, 1), dtype=np.float32))
    with pytest.raises(DataError, match="std"):
        Normalisation(np.array([0.0]), np.array([-1.0]))
