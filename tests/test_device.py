"""Device options (cropstar.device): auto, cpu, cuda[:N] checked with errors naming the option."""

from __future__ import annotations

import pytest
import torch

from cropstar.device import check_device, describe_device, resolve_device
from cropstar.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@no_cuda
def test_auto_is_the_cpu_without_cuda() -> None:
    assert check_device("auto") == "cpu"
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert describe_device(resolve_device("auto")) == "cpu"


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused_naming_the_option(name: str) -> None:
    with pytest.raises(InputError, match=f"^--device {name} asked for, but CUDA is not available .*use --device cpu"):
        resolve_device(name, option="--device")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:0", "auto:1", ""])
def test_unknown_names_are_refused_naming_the_option(name: str) -> None:
    with pytest.raises(InputError, match=f"^--device must be auto, cpu, cuda or cuda:N, got {name!r}"):
        check_device(name, option="--device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resolves_to_the_local_rank_and_is_described_with_the_card() -> None:
    assert resolve_device("cuda") == torch.device("cuda:0") and check_device("auto") == "cuda"
    assert describe_device("cuda:0") == f"cuda:0 ({torch.cuda.get_device_name(0)})"
    with pytest.raises(InputError, match="CUDA device"):
        check_device(f"cuda:{torch.cuda.device_count()}")
