"""Small learnable datasets for the training tests, written by :func:`make_dataset` into a test's
tmp_path: each class has its own phenology (a bump in the "NIR" band at a class-specific step), so a
few epochs of a small STAR model separate them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropstar.data.class_table import ClassTable
from cropstar.data.dataset import write_dataset
from cropstar.data.splits import split_by_field

DATES = [str(d) for d in np.arange("2023-03-01", "2023-09-01", 10, dtype="datetime64[D]")]
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]


def make_dataset(
    path: Path,
    *,
    n_fields: int = 60,
    pixels_per_field: int = 4,
    codes: tuple[str, ...] = ("1110", "1510", "1200"),
    names: tuple[str, ...] = ("wheat", "maize", "barley"),
    steps: int = 8,
    patch_size: int = 3,
    task: str = "per_sequence",
    seed: int = 0,
) -> Path:
    """Write a dataset of ``n_fields`` fields (``pixels_per_field`` samples each) at ``path``."""
    rng = np.random.default_rng(seed)
    k = len(codes)
    n = n_fields * pixels_per_field
    field_class = np.arange(n_fields) % k
    labels = np.repeat(field_class, pixels_per_field)
    field_ids = np.repeat([f"field-{i}" for i in range(n_fields)], pixels_per_field)
    t = np.arange(steps)
    peaks = np.linspace(1, steps - 2, k)[labels]  # class-specific timing of the green-up
    ndvi_like = np.exp(-0.5 * ((t[None, :] - peaks[:, None]) / 1.2) ** 2)  # (N, T)
    patches = rng.normal(0.08, 0.01, (n, steps, len(BANDS), patch_size, patch_size)).astype(np.float32)
    patches[:, :, 3] += 0.3 * ndvi_like[:, :, None, None].astype(np.float32)
    mask = rng.random((n, steps)) > 0.2
    mask[:, 0] = True
    split = split_by_field(field_ids, labels, seed=seed)
    if task == "per_timestep":
        labels = np.where(mask, labels[:, None], -1)
    return write_dataset(
        path,
        patches=patches,
        mask=mask,
        labels=labels,
        field_ids=field_ids,
        split=split,
        class_table=ClassTable.from_codes(codes, dict(zip(codes, names))),
        dates=DATES[:steps],
        bands=BANDS,
        provenance={"source": "tests/train/conftest.py", "period": "10D"},
        shard_size=64,
    )
