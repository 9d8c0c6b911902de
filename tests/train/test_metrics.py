"""Accuracy reports against scikit-learn, the early-season view, and the Olofsson et al. (2014) estimators."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from cropstar.data.class_table import ClassTable
from cropstar.errors import DataError, InputError
from cropstar.train.metrics import (
    accuracy_report,
    area_weighted_report,
    confusion_matrix,
    per_timestep_report,
)

NAMES = {
    "11": "maize", "12": "winter wheat", "13": "barley", "14": "rapeseed", "15": "meadow", "16": "sugar beet"
}
K = len(NAMES)


@pytest.fixture
def class_table() -> ClassTable:
    return ClassTable.from_codes(NAMES, NAMES)


def random_labels(seed: int, shape: tuple[int, ...] = (300, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Reference in {0, 1, 2, 3}, with −1 gaps; predictions in {0, 1, 2, 4}: class 3 is never predicted,
    class 4 only predicted, class 5 absent from both."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0, 1, 2, 3], size=shape, p=[0.4, 0.3, 0.2, 0.1])
    y_pred = np.where(rng.random(shape) < 0.6, y_true, rng.choice([0, 1, 2, 4], size=shape))
    y_pred[y_pred == 3] = 2
    y_true[rng.random(shape) < 0.15] = -1
    return y_true, y_pred


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_equals_scikit_learn(class_table: ClassTable, seed: int, weighted: bool) -> None:
    y_true, y_pred = random_labels(seed)
    weight = np.random.default_rng(seed + 10).uniform(0.2, 3.0, y_true.shape) if weighted else None
    report = accuracy_report(y_true, y_pred, class_table, sample_weight=weight)

    keep = y_true.ravel() != -1
    t, p = y_true.ravel()[keep], y_pred.ravel()[keep]
    w = weight.ravel()[keep] if weighted else None
    labels = list(range(K))
    assert report["n_samples"] == keep.sum()
    assert report["overall_accuracy"] == pytest.approx(skm.accuracy_score(t, p, sample_weight=w), abs=1e-12)
    assert report["kappa"] == pytest.approx(skm.cohen_kappa_score(t, p, sample_weight=w), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(
        skm.f1_score(t, p, average="macro", sample_weight=w), abs=1e-12
    )
    assert report["weighted_f1"] == pytest.approx(
        skm.f1_score(t, p, average="weighted", sample_weight=w), abs=1e-12
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        t, p, labels=labels, zero_division=0, sample_weight=w
    )
    rows = report["per_class"]
    assert [r["name"] for r in rows] == report["classes"] == list(NAMES.values())
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-12)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-12)
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-12)
    np.testing.assert_allclose([r["support"] for r in rows], support, atol=1e-9)
    np.testing.assert_allclose(
        [r["predicted"] for r in rows], np.bincount(p, weights=w, minlength=K), atol=1e-9
    )
    np.testing.assert_allclose(
        report["confusion_matrix"], skm.confusion_matrix(t, p, labels=labels, sample_weight=w), atol=1e-9
    )
    np.testing.assert_allclose(
        report["confusion_matrix_normalised"],
        skm.confusion_matrix(t, p, labels=labels, sample_weight=w, normalize="true"),
        atol=1e-12,
    )
    # the edge cases the labels were built for
    assert rows[3]["predicted"] == 0 and rows[3]["precision"] == 0.0 and rows[3]["support"] > 0
    assert rows[4]["support"] == 0 and rows[4]["recall"] == 0.0 and rows[4]["predicted"] > 0
    assert rows[5]["support"] == rows[5]["predicted"] == 0
    assert report["confusion_matrix_normalised"][5] == [0.0] * K
    # macro F1 averages the 5 present classes, not all 6 of the table
    assert report["macro_f1"] == pytest.approx(np.mean(f1[:5]))
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_confusion_matrix_orientation_and_ignore(class_table: ClassTable) -> None:
    y_true = np.array([[0, 0, -1], [1, 2, -1]])
    y_pred = np.array([[1, 1, 9], [1, 2, -5]])  # predictions on ignored entries are not checked
    counts = confusion_matrix(y_true, y_pred, 3)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [[0, 2, 0], [0, 1, 0], [0, 0, 1]])  # row = reference
    t, p = random_labels(5, (400,))
    keep = t != -1
    np.testing.assert_array_equal(
        confusion_matrix(t, p, K), skm.confusion_matrix(t[keep], p[keep], labels=list(range(K)))
    )
    np.testing.assert_array_equal(
        confusion_matrix(np.where(t == -1, 99, t), p, K, ignore_index=99), confusion_matrix(t, p, K)
    )


def test_out_of_range_and_empty_inputs_raise(class_table: ClassTable) -> None:
    with pytest.raises(DataError, match="predicted class id 6 outside the class table"):
        accuracy_report([0, 1], [0, 6], class_table)
    with pytest.raises(DataError, match="reference label 7 outside"):
        confusion_matrix([7, 1], [0, 1], K)
    with pytest.raises(DataError, match="no labelled samples to evaluate"):
        accuracy_report(np.full((4, 3), -1), np.zeros((4, 3), int), class_table)
    with pytest.raises(InputError, match="same shape"):
        accuracy_report(np.zeros((4, 3), int), np.zeros((4,), int), class_table)
    with pytest.raises(InputError, match="sample_weight"):
        accuracy_report([0, 1], [0, 1], class_table, sample_weight=[1.0, -1.0])


def test_kappa_is_none_where_undefined(class_table: ClassTable) -> None:
    report = accuracy_report([2, 2, 2], [2, 2, 2], class_table)
    assert report["overall_accuracy"] == 1.0 and report["kappa"] is None and report["macro_f1"] == 1.0
    assert accuracy_report([0, 1, 1], [0, 1, 1], class_table)["kappa"] == pytest.approx(1.0)


def test_per_timestep_rows(class_table: ClassTable) -> None:
    y_true, y_pred = random_labels(3, (120, 5))
    y_true[:, 4] = -1  # a step without any label
    dates = np.array(["2023-03-01", "2023-04-01", "2023-05-01", "2023-06-01", "2023-07-01"], "datetime64[ns]")
    rows = per_timestep_report(y_true, y_pred, class_table, dates=dates)
    assert [r["step"] for r in rows] == list(range(5))
    assert [r["date"] for r in rows] == [str(d)[:10] for d in dates.astype("datetime64[D]")]
    for step in range(4):
        keep = y_true[:, step] != -1
        t, p = y_true[keep, step], y_pred[keep, step]
        assert rows[step]["n_samples"] == keep.sum()
        assert rows[step]["overall_accuracy"] == pytest.approx(skm.accuracy_score(t, p))
        assert rows[step]["macro_f1"] == pytest.approx(skm.f1_score(t, p, average="macro"))
        assert rows[step]["kappa"] == pytest.approx(skm.cohen_kappa_score(t, p))
    assert rows[4] == {"step": 4, "date": "2023-07-01", "n_samples": 0, "overall_accuracy": None,
                       "macro_f1": None, "kappa": None}
    assert per_timestep_report(y_true, y_pred, class_table)[0]["date"] is None
    with pytest.raises(InputError, match="one entry per time step"):
        per_timestep_report(y_true, y_pred, class_table, dates=dates[:3])
    with pytest.raises(InputError, match=r"\(N, T\)"):
        per_timestep_report(y_true[:, 0], y_pred[:, 0], class_table)


# ---------------------------------------------------------------------------------------------------
# Olofsson et al. (2014), Section 5: the worked example (Tables 8 and 9)
# ---------------------------------------------------------------------------------------------------
OLOFSSON_NAMES = ["Deforestation", "Forest gain", "Stable forest", "Stable non-forest"]
#: sample counts, rows = map class (strata), columns = reference class (Table 8)
OLOFSSON_COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
OLOFSSON_MAPPED_PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]
PIXEL_HA = 0.09  # 30 m Landsat pixels


@pytest.fixture
def olofsson_table() -> ClassTable:
    return ClassTable.from_codes([1, 2, 3, 4], dict(zip("1234", OLOFSSON_NAMES, strict=True)))


def test_olofsson_published_example(olofsson_table: ClassTable) -> None:
    """The published figures (rounded as printed): Table 9 proportions; OA 0.95 ± 0.02; user's accuracy
    0.88 ± 0.07, 0.73 ± 0.10, 0.93 ± 0.04, 0.96 ± 0.02; producer's 0.75 ± 0.21, 0.85, 0.93 ± 0.03, 0.96;
    deforestation 235,086 ± 68,418 pixels = 21,158 ± 6,158 ha (forest gain 11,686 ± 3,756 ha, stable
    forest 285,770 ± 15,510 ha, stable non-forest 581,386 ± 16,282 ha)."""
    report = area_weighted_report(OLOFSSON_COUNTS, OLOFSSON_MAPPED_PIXELS, olofsson_table)
    table9 = [[0.0176, 0, 0.0013, 0.0011], [0, 0.0110, 0.0016, 0.0024],
              [0.0019, 0, 0.2967, 0.0213], [0.0040, 0.0020, 0.0179, 0.6212]]
    np.testing.assert_allclose(report["error_matrix"], table9, atol=5e-5)
    assert report["overall_accuracy"] == pytest.approx(0.947, abs=5e-4)
    assert report["overall_accuracy_ci"] == pytest.approx(0.018, abs=5e-4)
    rows = report["per_class"]
    np.testing.assert_allclose([r["users_accuracy"] for r in rows], [0.88, 0.73, 0.93, 0.96], atol=5e-3)
    np.testing.assert_allclose([r["users_accuracy_ci"] for r in rows], [0.07, 0.10, 0.04, 0.02], atol=5e-3)
    np.testing.assert_allclose([r["producers_accuracy"] for r in rows], [0.75, 0.85, 0.93, 0.96], atol=5e-3)
    # eq. 7 as printed gives ±0.21 and ±0.03 as published; for forest gain and stable non-forest the
    # printed ±0.23 and ±0.01 are not reproducible from the equation (0.254 and 0.018 here)
    np.testing.assert_allclose(
        [r["producers_accuracy_ci"] for r in rows], [0.213, 0.254, 0.034, 0.018], atol=5e-4
    )
    assert rows[0]["area"] == pytest.approx(235_086, abs=1)
    assert rows[0]["area_ci"] == pytest.approx(68_418, abs=1)
    hectares = [r["area"] * PIXEL_HA for r in rows]
    np.testing.assert_allclose(hectares, [21_158, 11_686, 285_770, 581_386], atol=1)
    half_widths = [r["area_ci"] * PIXEL_HA for r in rows]
    np.testing.assert_allclose(half_widths, [6_158, 3_756, 15_510, 16_282], atol=1)
    assert sum(r["area"] for r in rows) == pytest.approx(report["total_area"])


def test_olofsson_equals_brute_force_over_sample_units(olofsson_table: ClassTable) -> None:
    """Every estimate and standard error against the generic stratified estimator computed unit by unit
    (stratum means and sample variances of indicator variables; ratio estimators linearised)."""
    report = area_weighted_report(OLOFSSON_COUNTS, OLOFSSON_MAPPED_PIXELS, olofsson_table)
    mapped = np.repeat(np.arange(4), OLOFSSON_COUNTS.sum(axis=1))
    reference = np.concatenate([np.repeat(np.arange(4), row) for row in OLOFSSON_COUNTS])
    weight = np.asarray(OLOFSSON_MAPPED_PIXELS, float) / sum(OLOFSSON_MAPPED_PIXELS)

    def total(y: np.ndarray) -> tuple[float, float]:
        """Stratified estimate of the population mean of y and its variance."""
        mean = sum(weight[h] * y[mapped == h].mean() for h in range(4))
        var = sum(weight[h] ** 2 * y[mapped == h].var(ddof=1) / (mapped == h).sum() for h in range(4))
        return mean, var

    def ratio(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
        r = total(y)[0] / total(x)[0]
        return r, total(y - r * x)[1] / total(x)[0] ** 2

    oa, var_oa = total((mapped == reference).astype(float))
    assert report["overall_accuracy"] == pytest.approx(oa)
    assert report["overall_accuracy_se"] == pytest.approx(var_oa**0.5)
    for j, row in enumerate(report["per_class"]):
        correct = ((mapped == j) & (reference == j)).astype(float)
        ua, var_ua = ratio(correct, (mapped == j).astype(float))
        pa, var_pa = ratio(correct, (reference == j).astype(float))
        prop, var_prop = total((reference == j).astype(float))
        estimates = (row["users_accuracy"], row["producers_accuracy"], row["area_proportion"])
        assert estimates == pytest.approx((ua, pa, prop))
        assert row["users_accuracy_se"] == pytest.approx(var_ua**0.5)
        assert row["producers_accuracy_se"] == pytest.approx(var_pa**0.5)
        assert row["area_proportion_se"] == pytest.approx(var_prop**0.5)


def test_area_weighted_orientation_units_and_errors(olofsson_table: ClassTable) -> None:
    by_map = area_weighted_report(OLOFSSON_COUNTS, OLOFSSON_MAPPED_PIXELS, olofsson_table)
    by_reference = area_weighted_report(
        OLOFSSON_COUNTS.T, OLOFSSON_MAPPED_PIXELS, olofsson_table, rows="reference"
    )
    assert by_reference == by_map
    # a transposed matrix passed as rows = map gives different answers: the orientation matters
    swapped = area_weighted_report(OLOFSSON_COUNTS.T, OLOFSSON_MAPPED_PIXELS, olofsson_table)
    assert swapped["per_class"][0]["users_accuracy"] != pytest.approx(0.88, abs=5e-3)
    mapped_ha = np.asarray(OLOFSSON_MAPPED_PIXELS) * PIXEL_HA
    in_ha = area_weighted_report(OLOFSSON_COUNTS, mapped_ha, olofsson_table)
    assert in_ha["overall_accuracy"] == pytest.approx(by_map["overall_accuracy"])
    assert in_ha["per_class"][0]["area"] == pytest.approx(21_158, abs=1)
    assert json.loads(json.dumps(by_map, allow_nan=False)) == by_map

    thin = OLOFSSON_COUNTS.copy()
    thin[1] = [0, 1, 0, 0]
    with pytest.raises(DataError, match="'Forest gain'.*1 sample"):
        area_weighted_report(thin, OLOFSSON_MAPPED_PIXELS, olofsson_table)
    with pytest.raises(InputError, match=r"\(4, 4\)"):
        area_weighted_report(OLOFSSON_COUNTS[:3], OLOFSSON_MAPPED_PIXELS, olofsson_table)
    with pytest.raises(InputError, match="mapped_area"):
        area_weighted_report(OLOFSSON_COUNTS, [1, 2, 3], olofsson_table)
    # a reference class never observed: producer's accuracy undefined (None), area 0
    no_gain = OLOFSSON_COUNTS.copy()
    no_gain[:, 1] = 0
    no_gain[1, 2] = 60
    row = area_weighted_report(no_gain, OLOFSSON_MAPPED_PIXELS, olofsson_table)["per_class"][1]
    assert row["producers_accuracy"] is None and row["area"] == 0.0 and row["users_accuracy"] == 0.0
