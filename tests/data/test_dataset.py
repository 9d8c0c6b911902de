"""On-disk datasets: write → open → torch Dataset round trip, shards, atomic writes, validation,
``dataset info``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.class_table import ClassTable
from cropstar.data.dataset import (
    PatchSequenceDataset,
    copy_dataset,
    info,
    open_dataset,
    validate_dataset,
    write_dataset,
)
from cropstar.data.normalisation import Normalisation
from cropstar.data.splits import split_by_field
from cropstar.errors import DataError, InputError

N, T, C, P = 20, 5, 3, 3
DATES = ["2023-03-01", "2023-03-11", "2023-03-21", "2023-04-01", "2023-04-11"]
BANDS = ["B02", "B04", "B08"]


def _arrays(seed: int = 0, per_timestep: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    patches = (
        rng.random((N, T, C, P, P), dtype=np.float32)
        * np.array([0.1, 0.2, 0.5], dtype=np.float32)[None, None, :, None, None]
    )
    mask = rng.random((N, T)) > 0.3
    mask[:, 0] = True  # every sample has a valid step
    field_ids = np.array([f"parcel-{i // 2}" for i in range(N)])  # two samples per field
    labels = rng.integers(0, 3, N)
    labels[1::2] = labels[::2]  # a field's samples share its label
    labels[5] = -1
    if per_timestep:
        labels = np.repeat(labels[:, None], T, axis=1)
        labels[:, 2] = -1
    split = split_by_field(field_ids, labels, seed=0)
    return {
        "patches": patches,
        "mask": mask,
        "labels": labels,
        "field_ids": field_ids,
        "split": split,
        "class_table": ClassTable.from_codes([110, 220, 330], {"110": "wheat", "220": "maize"}),
        "dates": DATES,
        "bands": BANDS,
    }


def test_round_trip_values_masks_labels(tmp_path: Path) -> None:
    data = _arrays()
    path = write_dataset(tmp_path / "ds", **data, provenance={"source": "test"}, shard_size=7)
    reader = open_dataset(path)
    assert reader.shape == (N, T, C, P, P)
    assert reader.dates == DATES and reader.bands == BANDS and reader.patch_size == P
    assert reader.task == "per_sequence" and reader.class_table == data["class_table"]
    assert reader.shard_size == 7 and reader.num_shards == 3
    np.testing.assert_array_equal(reader.read("patches"), data["patches"])
    np.testing.assert_array_equal(reader.read("mask"), data["mask"])
    np.testing.assert_array_equal(reader.read("labels"), data["labels"])
    np.testing.assert_array_equal(reader.read("field_ids"), data["field_ids"])
    np.testing.assert_array_equal(reader.read("split"), data["split"])
    np.testing.assert_array_equal(reader.read("n_valid_obs"), data["mask"].sum(axis=1))
    assert reader.provenance["source"] == "test" and "created" in reader.provenance
    assert reader.splits == {
        name: int((data["split"] == code).sum()) for code, name in enumerate(("train", "val", "test"))
    }
    assert len(reader.fingerprint) == 64 and reader.validate() == []


def test_normalisation_is_computed_over_valid_training_steps(tmp_path: Path) -> None:
    data = _arrays()
    reader = open_dataset(write_dataset(tmp_path / "ds", **data, shard_size=7))
    train = data["split"] == 0
    values = np.moveaxis(data["patches"][train][data["mask"][train]], 1, 0).reshape(C, -1).astype(np.float64)
    np.testing.assert_allclose(reader.normalisation.mean, values.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(reader.normalisation.std, values.std(axis=1), rtol=1e-6)


def test_a_copy_keeps_the_chosen_samples_with_their_new_split(tmp_path: Path) -> None:
    source = open_dataset(write_dataset(tmp_path / "ds", **_arrays(), shard_size=7))
    rows = np.arange(0, N, 2)
    split = np.where(np.arange(len(rows)) < 6, 0, 2).astype(np.uint8)
    copy = open_dataset(copy_dataset(source, tmp_path / "copy", split, rows))
    for name in ("patches", "mask", "labels", "field_ids", "n_valid_obs"):
        np.testing.assert_array_equal(copy.read(name), source.read(name)[rows])
    np.testing.assert_array_equal(copy.read("split"), split)
    assert copy.dates == source.dates and copy.class_table == source.class_table
    assert not np.allclose(copy.normalisation.mean, source.normalisation.mean)  # its own training samples
    kept = open_dataset(copy_dataset(source, tmp_path / "kept", split, rows, normalisation=source.normalisation))
    np.testing.assert_array_equal(kept.normalisation.mean, source.normalisation.mean)
    with pytest.raises(InputError, match="10 samples but 3 split codes"):
        copy_dataset(source, tmp_path / "bad", split[:3], rows)


@pytest.mark.parametrize("split", ["train", "val", "test", None])
def test_torch_dataset_items_and_split_selection(tmp_path: Path, split: str | None) -> None:
    data = _arrays()
    data["patches"][3, 1, 0, 0, 0] = np.nan  # a value nothing could fill
    path = write_dataset(tmp_path / "ds", **data, shard_size=7)
    dataset = PatchSequenceDataset(path, split)
    rows = (
        np.arange(N)
        if split is None
        else np.flatnonzero(data["split"] == {"train": 0, "val": 1, "test": 2}[split])
    )
    assert len(dataset) == len(rows) and dataset.input_size == C * P * P and dataset.seq_len == T
    norm = open_dataset(path).normalisation
    for i, row in enumerate(rows):
        x, mask, label = dataset[i]
        assert x.shape == (T, C * P * P) and x.dtype == torch.float32
        assert mask.dtype == torch.bool and label.dtype == torch.int64 and label.shape == ()
        expected = (data["patches"][row] - norm.mean[None, :, None, None]) / norm.std[None, :, None, None]
        expected = np.nan_to_num(expected.reshape(T, -1), nan=0.0)  # C-order of (C, P, P)
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mask.numpy(), data["mask"][row])
        assert int(label) == data["labels"][row]
    np.testing.assert_array_equal(dataset.labels(), data["labels"][rows])


def test_shard_boundaries_and_sequential_reads(tmp_path: Path) -> None:
    data = _arrays()
    path = write_dataset(tmp_path / "ds", **data, shard_size=7)
    zarr_chunks = sorted(p.name for p in (path / "patches" / "c").iterdir())
    assert zarr_chunks == ["0", "1", "2"]  # 7 + 7 + 6 samples
    dataset = PatchSequenceDataset(path, split=None, normalise=False)
    for i in range(N):  # sequential access crosses both shard boundaries
        np.testing.assert_allclose(dataset[i][0].numpy(), data["patches"][i].reshape(T, -1))
    assert dataset.shard_reads == 3
    dataset[0]
    assert dataset.shard_reads == 4  # one shard cached; going back reads again
    cached = PatchSequenceDataset(path, split=None, cache_shards=3)
    for i in (0, 19, 8, 1, 13):
        cached[i]
    assert cached.shard_reads == 3
    with pytest.raises(IndexError):
        dataset[N]


def test_dataset_pickles_for_workers_and_batches(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "ds", **_arrays(), shard_size=7)
    dataset = PatchSequenceDataset(path, "train")
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.shard_reads == dataset.shard_reads and torch.equal(clone[1][0], dataset[1][0])
    x, mask, label = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert x.shape == (4, T, C * P * P) and mask.shape == (4, T) and label.shape == (4,)


def test_per_timestep_labels_and_override_normalisation(tmp_path: Path) -> None:
    data = _arrays(per_timestep=True)
    path = write_dataset(tmp_path / "ds", **data, shard_size=7)
    assert open_dataset(path).task == "per_timestep"
    norm = Normalisation(np.zeros(C), np.ones(C))
    x, _, label = PatchSequenceDataset(path, None, normalisation=norm)[4]
    assert label.shape == (T,) and int(label[2]) == -1
    np.testing.assert_allclose(x.numpy(), data["patches"][4].reshape(T, -1))


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failure_mid_write_leaves_no_dataset(tmp_path: Path) -> None:
    data = _arrays()
    data["labels"][17] = 9  # outside the class table: found in the third shard
    with pytest.raises(DataError, match="label 9 of sample 17 \\(field parcel-8\\)"):
        write_dataset(tmp_path / "ds", **data, shard_size=7)
    assert _listing(tmp_path) == []

    def crash(stage: str, done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset(tmp_path / "ds", **_arrays(), shard_size=7, progress=crash)
    assert _listing(tmp_path) == []


def test_existing_target_untouched_unless_overwrite(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "ds", **_arrays(0), shard_size=7)
    before = open_dataset(path).fingerprint
    with pytest.raises(InputError, match="already exists.*overwrite"):
        write_dataset(path, **_arrays(1))
    with pytest.raises(RuntimeError):
        write_dataset(
            path, **_arrays(1), overwrite=True, progress=lambda *_: (_ for _ in ()).throw(RuntimeError())
        )
    assert open_dataset(path).fingerprint == before and _listing(tmp_path) == ["ds"]
    write_dataset(path, **_arrays(1), overwrite=True)
    assert open_dataset(path).fingerprint != before and _listing(tmp_path) == ["ds"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a cropstar dataset"):
        write_dataset(tmp_path / "mine", **_arrays(), overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_input_validation_names_the_problem(tmp_path: Path) -> None:
    data = _arrays()
    cases = [
        ({"dates": DATES[:4]}, "T=5 time steps but 4 dates"),
        ({"bands": ["B02", "B04"]}, "C=3 bands but 2 band names"),
        ({"bands": ["B02", "B02", "B08"]}, "unique"),
        ({"mask": data["mask"][:, :4]}, "mask must have shape \\(20, 5\\)"),
        ({"labels": data["labels"][:5]}, "labels must be"),
        ({"dates": DATES[::-1]}, "increase strictly"),
        ({"split": np.full(N, 3)}, "split 3 of sample 0"),
        ({"patches": data["patches"][:, :, :, :2]}, "square"),
    ]
    for change, message in cases:
        with pytest.raises(DataError, match=message):
            write_dataset(tmp_path / "ds", **{**data, **change})
    split = np.full(N, 1)
    with pytest.raises(DataError, match="no training samples"):
        write_dataset(tmp_path / "ds", **{**data, "split": split})
    assert _listing(tmp_path) == []


def test_open_and_validate_name_problems(tmp_path: Path) -> None:
    import zarr

    with pytest.raises(InputError, match="dataset not found"):
        open_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot open"):
        open_dataset(tmp_path / "empty")
    path = write_dataset(tmp_path / "ds", **_arrays(), shard_size=7)
    group = zarr.open_group(path, mode="r+")
    group["labels"][3] = 7
    group["split"][0] = (int(group["split"][1]) + 1) % 3  # parcel-0's two samples now in two splits
    problems = validate_dataset(path)
    assert any("sample 3" in p and "label outside" in p for p in problems)
    assert any("field parcel-0 is in two splits" in p for p in problems)
    assert any("fingerprint" in p for p in problems)
    group.attrs["bands"] = ["B02", "B04"]
    with pytest.raises(DataError, match="array 'patches' has shape"):
        open_dataset(path)
    group.attrs["format"] = "something-else"
    with pytest.raises(DataError, match="format attribute"):
        open_dataset(path)


def test_info_summary(tmp_path: Path) -> None:
    data = _arrays()
    path = write_dataset(tmp_path / "ds", **data, shard_size=7)
    summary = info(path)
    assert summary["shape"] == [N, T, C, P, P] and summary["bands"] == BANDS and summary["dates"] == DATES
    assert sum(summary["splits"].values()) == N and summary["n_fields"] == N // 2
    assert [c["name"] for c in summary["classes"]] == ["wheat", "maize", "330"]
    assert sum(c["count"] for c in summary["classes"]) == int((data["labels"] >= 0).sum())
    assert summary["valid_fraction"] == pytest.approx(data["mask"].mean())
    json.dumps(summary)


def test_cli_dataset_info(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "ds", **_arrays(), shard_size=7)
    runner = CliRunner()
    result = runner.invoke(app, ["dataset", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"shape", "classes", "bands", "dates", "splits"} <= set(summary)
    assert summary["shape"] == [N, T, C, P, P]
    result = runner.invoke(app, ["dataset", "info", str(path), "--check"])
    assert result.exit_code == 0 and "wheat" in result.stdout and "(20, 5, 3, 3, 3)" in result.stdout
    result = runner.invoke(app, ["dataset", "info", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "dataset not found" in result.output and "Traceback" not in result.output
