"""The real-data suite: folds every method shares, pooled reports, and a smoke run on France 2023
that resumes without training again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cropstar.data.class_table import ClassTable
from cropstar.train.metrics import accuracy_report
from cropstar.validate.real import BUDGETS, fold_splits, run_identity, run_suite, subsample
from cropstar.validate.real_report import pooled_report, write_real_report


def test_folds_test_each_sample_once_and_validate_every_class() -> None:
    labels = np.repeat(np.arange(4), [30, 12, 9, 6])
    plans = fold_splits(labels, 3)
    tested = np.sum([plan == 2 for plan in plans], axis=0)
    assert np.all(tested == 1)
    for plan in plans:
        assert set(labels[plan == 1]) == {0, 1, 2, 3}  # at least one of each class to validate on
        assert abs((plan == 1).sum() - 0.15 * (plan < 2).sum()) <= 4
    assert [p.tolist() for p in fold_splits(labels, 3)] == [p.tolist() for p in plans]  # seeded
    kept = subsample(labels, 20)
    assert len(kept) == 20 and set(labels[kept]) == {0, 1, 2, 3} and subsample(labels, None).size == 57


def test_pooled_report_is_the_report_of_the_folds_together() -> None:
    table = ClassTable.from_codes(["1", "2", "3"])
    rng = np.random.default_rng(0)
    truths = [rng.integers(0, 3, 20), rng.integers(0, 3, 15)]
    predictions = [np.where(rng.random(len(t)) < 0.7, t, rng.integers(0, 3, len(t))) for t in truths]
    pooled = pooled_report([accuracy_report(t, p, table) for t, p in zip(truths, predictions, strict=True)])
    whole = accuracy_report(np.concatenate(truths), np.concatenate(predictions), table)
    assert pooled["overall_accuracy"] == pytest.approx(whole["overall_accuracy"])
    assert pooled["macro_f1"] == pytest.approx(whole["macro_f1"]) and pooled["kappa"] == pytest.approx(whole["kappa"])


def test_a_changed_training_setting_trains_again_but_not_the_forest() -> None:
    smoke = BUDGETS["smoke"]
    wider = replace(smoke, settings=(*smoke.settings, "model.hidden_size=16"))
    assert run_identity("ucr-crop", "star", 0, smoke) != run_identity("ucr-crop", "star", 0, wider)
    assert run_identity("ucr-crop", "star", 0, smoke) != run_identity("ucr-crop", "star", 0, replace(smoke, refit=True))
    assert run_identity("ucr-crop", "star", 0, smoke) != run_identity("ucr-crop", "star", 1, smoke)  # the seed
    assert run_identity("ucr-crop", "lstm", 0, smoke)["config"]["model"]["cell"] == "lstm"
    assert run_identity("ucr-crop", "star_refit", 0, smoke)["refit"] and not run_identity("ucr-crop", "star", 0, smoke)["refit"]
    assert "shift_steps" not in str(run_identity("ucr-crop", "star", 0, BUDGETS["cpu"]))  # defaults left out
    assert run_identity("ucr-crop", "random_forest", 0, smoke) == run_identity("ucr-crop", "random_forest", 0, wider)


@pytest.mark.realdata
def test_smoke_run_on_france_resumes(shared_data: Path, tmp_path: Path) -> None:
    methods = ["star", "star_refit", "random_forest", "nearest_neighbour"]
    runs = run_suite(shared_data, tmp_path, BUDGETS["smoke"], ["france-2023"], methods)
    assert [(r.method, r.fold) for r in runs] == [(m, k) for k in range(2) for m in methods]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["france-2023-star-fold1", "france-2023-star-fold2"]
    assert (tmp_path / "train" / "france-2023-star-fold1" / "refit" / "model").is_dir()  # refit after STAR's run
    forest = [r.report["overall_accuracy"] for r in runs if r.method == "random_forest"]
    assert min(forest) > 0.5  # France 2023's random forest: about 0.66 on all parcels (PROVENANCE.md)
    written = write_real_report(runs, tmp_path)
    assert {p.name for p in written} == {"results.csv", "results.md", "accuracy.png", "confusion_france-2023.png"}
    assert "| france-2023 | random_forest | 2 |" in (tmp_path / "results.md").read_text()
    again = run_suite(shared_data, tmp_path, BUDGETS["smoke"], ["france-2023"], methods)
    assert [r.seconds for r in again] == [r.seconds for r in runs]  # read back, not trained again
    stored = run_suite(shared_data, tmp_path, BUDGETS["smoke"], ["france-2023"], [*methods, "gru"], train_missing=False)
    assert [(r.method, r.seconds) for r in stored] == [(r.method, r.seconds) for r in runs]  # no GRU trained
    assert not (tmp_path / "train" / "france-2023-gru-fold1").exists()


def test_cli_report_only_says_when_there_is_nothing_to_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cropstar.cli import app

    result = CliRunner().invoke(app, ["validate", "real", "--report-only", "--out", str(tmp_path)])
    assert result.exit_code != 0 and f"no finished runs of these data sets and methods in {tmp_path / 'runs'}" in (
        " ".join(result.output.split())
    )
    assert not (tmp_path / "data").exists()  # nothing imported, nothing trained


@pytest.mark.realdata
def test_sentinel1_and_indices_keep_the_clear_sky_steps_of_the_bands(shared_data: Path, tmp_path: Path) -> None:
    from cropstar.data.dataset import open_dataset
    from cropstar.validate.real import DATASETS, import_dataset

    optical = open_dataset(import_dataset(DATASETS["france-2023"], shared_data, tmp_path / "s2"))
    both = open_dataset(import_dataset(DATASETS["france-2023-s1-indices"], shared_data, tmp_path / "all"))
    assert both.bands == [*optical.bands, "VV", "VH", "NDVI", "NDRE", "NDMI"]
    ids, kept = list(optical.read("field_ids")), list(both.read("field_ids"))
    assert 400 <= len(kept) < len(ids) and set(kept) < set(ids)  # a few parcels have no Sentinel-1 at all
    rows = [ids.index(field) for field in kept]
    np.testing.assert_array_equal(both.read("mask"), optical.read("mask")[rows])  # Sentinel-1 days do not count
    np.testing.assert_allclose(both.read("patches")[:, :, :9], optical.read("patches")[rows], rtol=1e-6)
