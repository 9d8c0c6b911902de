"""MNIST from the original IDX files (md5-checked) as pixel sequences: pixel MNIST and pMNIST
(paper §5.1: 28×28 images flattened to 784 steps of one value; pMNIST with one fixed permutation)."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cropstar.errors import DataError, InputError

Split = Literal["train", "test"]

FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
PERMUTATION_SEED = 0


@dataclass
class MnistSplit:
    """Images (N, 28, 28) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: Path, expected_md5: str | None = None) -> np.ndarray:
    """Read a (gzipped) IDX file into an array, checking its md5 when given."""
    if not path.is_file():
        raise InputError(f"MNIST file not found: {path}")
    raw = path.read_bytes()
    if expected_md5 is not None and hashlib.md5(raw).hexdigest() != expected_md5:
        raise DataError(f"{path}: md5 {hashlib.md5(raw).hexdigest()} differs from the published {expected_md5}")
    data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header promises shape {shape}, file holds {body.size} values")
    return body.reshape(shape)


def load_mnist(root: Path, split: Split = "train") -> MnistSplit:
    """The MNIST ``split`` from the four original files in ``root``."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    images = read_idx(root / FILES[f"{split}_images"][0], FILES[f"{split}_images"][1])
    labels = read_idx(root / FILES[f"{split}_labels"][0], FILES[f"{split}_labels"][1])
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
    return MnistSplit(images=images, labels=labels.astype(np.int64))


def pixel_sequences(images: np.ndarray, *, permuted: bool = False, downsample: int = 1) -> Tensor:
    """Images (N, 28, 28) → sequences (N, T, 1) in [0, 1], T = (28 / downsample)².

    ``downsample`` averages non-overlapping blocks; ``permuted`` applies the fixed pMNIST permutation
    (seed :data:`PERMUTATION_SEED`) of the T pixels.
    """
    if downsample < 1 or images.shape[-1] % downsample:
        raise InputError(f"downsample must divide 28, got {downsample}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if downsample > 1:
        x = torch.nn.functional.avg_pool2d(x.unsqueeze(1), downsample).squeeze(1)
    x = x.flatten(1)
    if permuted:
        generator = torch.Generator().manual_seed(PERMUTATION_SEED)
        x = x[:, torch.randperm(x.shape[1], generator=generator)]
    return x.unsqueeze(-1)
