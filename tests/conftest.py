"""Shared pytest fixtures: the real-data folder, deterministic torch seeding and small learnable crop
datasets (see crop_datasets.py)."""

from pathlib import Path

import pytest
import torch
from crop_datasets import make_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder ../shared/data beside the repository; skips the test where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            "../shared/data not found: real-data tests need the shared data folder beside the repo"
        )
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Seed torch's global generator before every test, for deterministic results."""
    torch.manual_seed(0)


@pytest.fixture
def crop_dataset(tmp_path: Path) -> Path:
    """A per-sequence dataset: 240 samples, 8 steps, 3 classes, 3×3 patches."""
    return make_dataset(tmp_path / "crops")


@pytest.fixture
def crop_dataset_per_timestep(tmp_path: Path) -> Path:
    """The same samples with per-time-step labels (−1 on masked steps)."""
    return make_dataset(tmp_path / "crops-steps", task="per_timestep")
