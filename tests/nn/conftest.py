"""Fixtures for the cropstar.nn tests."""

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from cropstar.nn.star_steps import compiled_steps


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


@pytest.fixture(scope="session")
def star_steps_module() -> ModuleType | None:
    """STAR's C++ step loops, built (or imported from torch's extensions folder) once per session,
    before the tests that use them: a fresh machine compiles them once, tens of seconds; None where the
    build fails (the reason is logged) or CROPSTAR_NO_CPP is set."""
    return compiled_steps()
