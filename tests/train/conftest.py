"""Fixtures of the training tests: small learnable datasets (see crop_datasets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from crop_datasets import make_dataset


@pytest.fixture
def crop_dataset(tmp_path: Path) -> Path:
    """A per-sequence dataset: 240 samples, 8 steps, 3 classes, 3×3 patches."""
    return make_dataset(tmp_path / "crops")


@pytest.fixture
def crop_dataset_per_timestep(tmp_path: Path) -> Path:
    """The same samples with per-time-step labels (−1 on masked steps)."""
    return make_dataset(tmp_path / "crops-steps", task="per_timestep")
