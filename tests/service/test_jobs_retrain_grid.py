"""A retrain job from a model whose time grid the stored dataset does not fit is refused when it is
submitted (422 model-mismatch naming each difference and the fix), not run into a failed job; the
same dataset trains when no model is named."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cropstar.data.class_table import ClassTable
from cropstar.data.dataset import write_dataset
from cropstar.data.splits import split_by_field
from cropstar.model.registry import ModelRegistry
from cropstar.train.config import load_config
from cropstar.train.trainer import train
from service.app import create_app
from service.security import HEADER, hash_key
from service.settings import ApiKey, Settings

KEY = "test-key-0123456789"
CODES = ("1110", "1510", "1200")


def _season(path: Path, first_date: str, steps: int) -> Path:
    """A small per-sequence dataset on a 10-day grid of ``steps`` steps from ``first_date``."""
    rng = np.random.default_rng(steps)
    n_fields, per_field = 30, 2
    labels = np.repeat(np.arange(n_fields) % 3, per_field)
    field_ids = np.repeat([f"field-{i}" for i in range(n_fields)], per_field)
    dates = np.arange(np.datetime64(first_date), np.datetime64(first_date) + 10 * steps, 10)
    return write_dataset(
        path, patches=rng.normal(0.1, 0.02, (len(labels), steps, 6, 3, 3)).astype(np.float32),
        mask=np.ones((len(labels), steps), bool), labels=labels, field_ids=field_ids,
        split=split_by_field(field_ids, labels, seed=0), class_table=ClassTable.from_codes(CODES),
        dates=[str(d) for d in dates], bands=["B02", "B03", "B04", "B08", "B11", "B12"],
        provenance={"period": "10D"}, shard_size=64,
    )  # fmt: skip


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """A service whose registry holds crops:v1, trained on an 8-step season; datasets of 8 and 9 steps."""
    settings = load_config(None, ["epochs=1", "model.hidden_size=4", "model.num_layers=1", "device=cpu"])
    run = train(settings, _season(tmp_path / "season1", "2023-03-01", 8), tmp_path / "run")
    registry = tmp_path / "registry"
    ModelRegistry(registry).register(run.model, "crops")
    datasets = {
        "fits": str(_season(tmp_path / "fits", "2024-03-03", 8)),
        "longer": str(_season(tmp_path / "longer", "2024-03-03", 9)),
    }
    return TestClient(create_app(Settings(
        registry=registry, datasets=datasets, work_dir=tmp_path / "work", cache_dir=tmp_path / "cache",
        api_keys=[ApiKey(name="tester", hash=hash_key(KEY), scopes=["jobs"])], preload=False,
    )))  # fmt: skip


def _submit(client: TestClient, **inputs: object) -> object:
    return client.post("/v1/processes/retrain/execution", json={"inputs": inputs}, headers={HEADER: KEY})


def test_a_dataset_on_another_grid_is_refused_at_submission(client: TestClient) -> None:
    response = _submit(client, dataset="longer", init_from="crops")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "dataset 'longer' does not fit model 'crops:v1': time steps: model expects 8" in detail
    assert "`cropstar ingest … --like crops:v1`" in detail
    assert str(Path.cwd()) not in detail and "/tmp" not in detail  # no server paths
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_a_dataset_that_fits_and_a_new_model_are_accepted(client: TestClient) -> None:
    assert _submit(client, dataset="fits", init_from="crops").status_code == 201
    assert _submit(client, dataset="longer").status_code == 201  # a new model takes any grid
    assert len(client.get("/v1/jobs").json()["jobs"]) == 2


def test_a_finished_retrain_shows_no_server_folder(client: TestClient, tmp_path: Path) -> None:
    with client:  # the jobs run
        job = _submit(client, dataset="fits", init_from="crops", config={"epochs": 1}).json()
        deadline = time.monotonic() + 120
        while (info := client.get(f"/v1/jobs/{job['jobID']}").json())["status"] not in ("successful", "failed"):
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        assert info["status"] == "successful", info
        answers = [client.get(f"/v1/jobs/{job['jobID']}/results")]
        answers += [client.get(f"/v1/jobs/{job['jobID']}/results/{name}") for name in ("model_card", "config", "training")]
    assert [answer.status_code for answer in answers] == [200] * 4, [a.text[:300] for a in answers]
    assert answers[1].json()["training"]["dataset"] == "fits"  # the dataset's folder name, as it is known
    for answer in answers:
        assert str(tmp_path) not in answer.text and "/tmp/" not in answer.text, answer.text[:400]
