"""Fixtures for the cropstar.nn tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread() -> Iterator[None]:
    """Run the tiny tensors of these tests on one intra-op thread.

    At these sizes threads only add overhead, and on a busy machine spinning OpenMP workers make
    small convolutions tens of times slower; the previous setting is restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
