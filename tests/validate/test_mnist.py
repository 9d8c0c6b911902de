"""MNIST IDX reading (checksums, header checks) and pixel / permuted sequences."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from cropstar.errors import DataError, InputError
from cropstar.validate.mnist import load_mnist, pixel_sequences, read_idx


def _write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def test_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / "a.gz", array)), array)


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    path = _write_idx(tmp_path / "a.gz", np.zeros((2, 2)))
    with pytest.raises(DataError, match="a.gz: md5"):
        read_idx(path, "0" * 32)
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x00\x01"))
    with pytest.raises(DataError, match="shape"):
        read_idx(path)
    with pytest.raises(InputError, match="not found"):
        read_idx(tmp_path / "missing.gz")


def test_pixel_sequences_shapes_scale_and_permutation() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x = pixel_sequences(images)
    assert x.shape == (3, 784, 1) and float(x.max()) <= 1.0
    torch.testing.assert_close(x[1, 28 * 5 + 7, 0], torch.tensor(images[1, 5, 7] / 255.0, dtype=torch.float32))
    small = pixel_sequences(images, downsample=2)
    assert small.shape == (3, 196, 1)
    torch.testing.assert_close(small[0, 0, 0], torch.tensor(images[0, :2, :2].mean() / 255.0, dtype=torch.float32))
    p1, p2 = pixel_sequences(images, permuted=True), pixel_sequences(images, permuted=True)
    torch.testing.assert_close(p1, p2)  # one fixed permutation
    assert not torch.equal(p1, x)
    torch.testing.assert_close(p1.sort(dim=1).values, x.sort(dim=1).values)  # the same pixels
    with pytest.raises(InputError, match="divide 28"):
        pixel_sequences(images, downsample=3)


@pytest.mark.realdata
def test_real_mnist_test_split(shared_data: Path) -> None:
    split = load_mnist(shared_data / "mnist", "test")
    assert split.images.shape == (10000, 28, 28) and split.labels.shape == (10000,)
    assert split.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(split.labels).min() > 800
