"""Shared pytest fixtures: the real-data folder and deterministic torch seeding."""

from pathlib import Path

import pytest
import torch

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
