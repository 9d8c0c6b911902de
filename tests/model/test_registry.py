"""The model registry: numbered versions, the current pointer, promotion, references, concurrency."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cropstar.data.class_table import ClassTable
from cropstar.data.normalisation import Normalisation
from cropstar.errors import BrokenModelError, InputError
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import ModelCard, TimeGrid, load_artifact, save_artifact
from cropstar.model.registry import ModelRegistry, metrics_summary, resolve_model


def _artifact(folder: Path, name: str = "crops", seed: int = 0, accuracy: float = 0.9) -> Path:
    """A small artifact (point samples, 2 bands, 4 steps) written without any dataset."""
    architecture = Architecture("star", 2, 4, 1, 2)
    card = ModelCard(
        architecture=architecture,
        class_table=ClassTable.from_codes(["11", "12"], {"11": "wheat", "12": "maize"}),
        bands=["B04", "B08"],
        patch_size=1,
        time_grid=TimeGrid("MS", ("2023-04-01", "2023-05-01", "2023-06-01", "2023-07-01")),
        normalisation=Normalisation(np.array([0.1, 0.3]), np.array([0.02, 0.1])),
        name=name,
        training={"fingerprint": f"abc{seed}"},
        metrics={"test": {"overall_accuracy": accuracy, "confusion": [[1, 0], [0, 1]]}, "best_epoch": 3},
    )
    torch.manual_seed(seed)
    return save_artifact(folder, build_classifier(architecture), card)


def test_versions_count_up_and_the_first_becomes_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    first = registry.register(_artifact(tmp_path / "a", seed=0), notes="season 2023")
    second = registry.register(_artifact(tmp_path / "b", seed=1, accuracy=0.95))
    assert (first.ref, second.ref) == ("crops:v1", "crops:v2")
    assert first.current and not second.current
    assert registry.current("crops").version == 1
    assert [(v.ref, v.current) for v in registry.list()] == [("crops:v1", True), ("crops:v2", False)]
    assert first.notes == "season 2023" and first.fingerprint == "abc0"
    assert second.metrics == {"test.overall_accuracy": 0.95, "best_epoch": 3}
    assert first.path == tmp_path / "registry" / "crops" / "v1"
    # the copy is a loadable artifact with the registered weights
    original, copy = load_artifact(tmp_path / "b").model, load_artifact(registry.path("crops:v2")).model
    copied = copy.state_dict()
    assert all(torch.equal(tensor, copied[name]) for name, tensor in original.state_dict().items())


def test_references_and_promote(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for seed in range(3):
        registry.register(_artifact(tmp_path / f"a{seed}", seed=seed))
    assert registry.show("crops").version == 1
    assert registry.show("crops:current").version == 1
    assert registry.show("crops:latest").version == 3
    assert registry.show("crops:v2").version == registry.show("crops:2").version == 2
    promoted = registry.promote("crops:v3")
    assert promoted.current and registry.show("crops").version == 3
    assert json.loads((tmp_path / "registry" / "crops" / "current.json").read_text()) == {"version": 3}
    assert [v.current for v in registry.list()] == [False, False, True]
    registry.register(_artifact(tmp_path / "a4", seed=4))  # a later version does not become current
    assert registry.current("crops").version == 3


def test_name_defaults_to_the_card_and_can_be_given(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(_artifact(tmp_path / "a", name="france"))
    registry.register(_artifact(tmp_path / "b", name="france"), name="corsica")
    assert [v.ref for v in registry.list()] == ["corsica:v1", "france:v1"]
    assert registry.current("corsica").current
    with pytest.raises(InputError, match="model name '../up'"):
        registry.register(_artifact(tmp_path / "c"), name="../up")


def test_unknown_references_list_what_is_known(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(_artifact(tmp_path / "a", name="france"))
    registry.register(_artifact(tmp_path / "b", name="france"))
    registry.register(_artifact(tmp_path / "c", name="corsica"))
    with pytest.raises(InputError, match=r"no model 'uganda' .*\(registered: corsica, france\)"):
        registry.show("uganda")
    with pytest.raises(
        InputError, match=r"no version 'v7' of model 'france' .*\(versions: v1, v2, current, latest\)"
    ):
        registry.path("france:v7")


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    artifact = _artifact(tmp_path / "a")
    barrier = threading.Barrier(6)
    results: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        barrier.wait()
        try:
            results.append(ModelRegistry(tmp_path / "registry").register(artifact).version)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert [v.version for v in registry.list()] == [1, 2, 3, 4, 5, 6]
    assert sum(v.current for v in registry.list()) == 1


def test_a_version_claimed_meanwhile_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(_artifact(tmp_path / "a"))
    numbers = registry._numbers
    # another process claims v1 between our listing and our mkdir: the listing we see is stale
    monkeypatch.setattr(registry, "_numbers", lambda name, complete=True: numbers(name) if complete else [])
    assert registry.register(_artifact(tmp_path / "b")).version == 2
    assert [v.version for v in registry.list()] == [1, 2]


def test_an_incomplete_version_is_ignored_and_its_number_skipped(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(_artifact(tmp_path / "a"))
    (tmp_path / "registry" / "crops" / "v2").mkdir()  # a registration that crashed while copying
    assert [v.ref for v in registry.list()] == ["crops:v1"]
    assert registry.show("crops:latest").version == 1
    assert registry.register(_artifact(tmp_path / "b")).version == 3


def test_register_refuses_a_broken_artifact(tmp_path: Path) -> None:
    folder = _artifact(tmp_path / "a")
    (folder / "model.safetensors").write_bytes(b"not weights")
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(BrokenModelError, match="model.safetensors does not match the checksum"):
        registry.register(folder)
    assert registry.list() == []


def test_resolve_model_accepts_a_folder_or_a_reference(tmp_path: Path) -> None:
    folder = _artifact(tmp_path / "a")
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(folder)
    assert resolve_model(folder) == folder
    assert resolve_model("crops", tmp_path / "registry") == tmp_path / "registry" / "crops" / "v1"
    assert resolve_model("crops:latest", tmp_path / "registry") == tmp_path / "registry" / "crops" / "v1"
    with pytest.raises(InputError, match="no model registry"):
        resolve_model("crops")
    with pytest.raises(InputError, match="is not a model artifact: it has no model.json"):
        resolve_model(tmp_path, tmp_path / "registry")


def test_metrics_summary_keeps_scalars() -> None:
    metrics = {"val": {"loss": 0.3, "per_class": [0.1]}, "epochs": 5, "curve": [1, 2]}
    assert metrics_summary(metrics) == {"val.loss": 0.3, "epochs": 5}
