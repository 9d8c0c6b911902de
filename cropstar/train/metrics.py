"""Accuracy reports for classified samples (DESIGN.md, "Conventions of the field": accuracy reports)
and the stratified area estimators of Olofsson et al. (2014, Remote Sensing of Environment 148,
§4.2, eqs. 2–11).

The sample metrics follow scikit-learn's conventions exactly (``accuracy_score``, ``cohen_kappa_score``,
``precision_recall_fscore_support`` with ``zero_division=0``, macro averages over the labels present in
the reference or the prediction), computed here with numpy from one confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from cropstar.data.class_table import ClassTable
from cropstar.errors import DataError, InputError


# ---------------------------------------------------------------------------------------------------
# sample metrics
# ---------------------------------------------------------------------------------------------------
def _labels(values: Any, what: str) -> np.ndarray:
    """Integer labels of any shape as int64 (integral floats allowed)."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{what} must be integer class ids; found non-integral values")
    elif array.dtype.kind not in "iub":
        raise InputError(f"{what} must be integer class ids, got dtype {array.dtype}")
    return array.astype(np.int64)


def _select(
    y_true: Any, y_pred: Any, num_classes: int, ignore_index: int, sample_weight: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The labelled entries as flat (reference, prediction, weight); out-of-range ids raise DataError."""
    true, pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise InputError(f"y_true and y_pred must have the same shape, got {true.shape} and {pred.shape}")
    keep = true.ravel() != ignore_index
    true, pred = true.ravel()[keep], pred.ravel()[keep]
    weight = None
    if sample_weight is not None:
        weight = np.asarray(sample_weight, dtype=np.float64)
        if weight.shape != keep.shape and weight.shape != np.shape(y_true):
            raise InputError(
                f"sample_weight must have the shape of y_true {np.shape(y_true)}, got {weight.shape}"
            )
        weight = weight.ravel()[keep]
        if not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise InputError("sample_weight must be finite and non-negative")
    for values, what in ((true, "reference label"), (pred, "predicted class id")):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise DataError(
                f"{what} {int(bad[0])} outside the class table (0…{num_classes - 1}); "
                f"{bad.size} labelled sample(s) affected"
            )
    return true, pred, weight


def _confusion(true: np.ndarray, pred: np.ndarray, num_classes: int, weight: np.ndarray | None) -> np.ndarray:
    flat = np.bincount(true * num_classes + pred, weights=weight, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Counts ``(K, K)`` int64 with rows = reference (true) class, columns = predicted class.

    ``y_true``/``y_pred``: class ids of one shape ((N,) or (N, T)); entries whose reference is
    ``ignore_index`` are dropped. Ids outside 0…K−1 raise DataError.
    """
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    true, pred, _ = _select(y_true, y_pred, num_classes, ignore_index)
    return _confusion(true, pred, num_classes, None).astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _kappa(confusion: np.ndarray) -> float | None:
    """Cohen's kappa from a confusion matrix; None where undefined (no expected disagreement)."""
    total = confusion.sum()
    if total == 0:
        return None
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / total
    off_diagonal = ~np.eye(len(confusion), dtype=bool)
    expected_disagreement = expected[off_diagonal].sum()
    if expected_disagreement == 0:
        return None
    return float(1.0 - confusion[off_diagonal].sum() / expected_disagreement)


def _number(value: float) -> int | float:
    """A JSON number: integral counts as int, everything else as float."""
    return int(value) if float(value).is_integer() else float(value)


def accuracy_report(
    y_true: Any,
    y_pred: Any,
    class_table: ClassTable,
    ignore_index: int = -1,
    sample_weight: Any = None,
) -> dict[str, Any]:
    """The accuracy report of predictions against reference labels, as a JSON-ready dict.

    ``y_true``/``y_pred``: class ids of one shape ((N,) or (N, T)), flattened; entries whose reference
    is ``ignore_index`` are dropped; ``sample_weight`` (optional) has the shape of ``y_true``.

    Keys: ``overall_accuracy``, ``kappa`` (Cohen's; None where undefined, e.g. one class only),
    ``macro_f1`` (over the classes present in reference or prediction), ``weighted_f1`` (by support),
    ``per_class`` (every class of the table: id, code, name, precision = user's accuracy, recall =
    producer's accuracy, f1, support, predicted), ``confusion_matrix`` (rows = reference, columns =
    predicted), ``confusion_matrix_normalised`` (rows divided by their reference count; empty rows 0),
    ``n_samples``, ``classes`` (names). Precision/recall/F1 of a class with no prediction/reference are 0.
    """
    num_classes = len(class_table)
    true, pred, weight = _select(y_true, y_pred, num_classes, ignore_index, sample_weight)
    if true.size == 0:
        raise DataError("no labelled samples to evaluate")
    confusion = _confusion(true, pred, num_classes, weight)
    present = np.bincount(true, minlength=num_classes) + np.bincount(pred, minlength=num_classes) > 0

    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * tp, support + predicted)
    total = confusion.sum()
    weighted_f1 = float(np.sum(f1 * support) / support.sum()) if support.sum() > 0 else 0.0

    per_class = [
        {
            "id": entry.id,
            "code": entry.code,
            "name": entry.name,
            "precision": float(precision[entry.id]),
            "recall": float(recall[entry.id]),
            "f1": float(f1[entry.id]),
            "support": _number(support[entry.id]),
            "predicted": _number(predicted[entry.id]),
        }
        for entry in class_table
    ]
    normalised = _safe_divide(confusion, support[:, None])
    return {
        "n_samples": int(true.size),
        "overall_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "kappa": _kappa(confusion),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": weighted_f1,
        "classes": class_table.names,
        "per_class": per_class,
        "confusion_matrix": [[_number(v) for v in row] for row in confusion],
        "confusion_matrix_normalised": normalised.tolist(),
    }


def _date_text(value: Any) -> str | None:
    """An ISO date string for a time-grid entry (datetime64, datetime, date or text)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return str(np.datetime_as_string(np.datetime64(value, "D")))
    except (TypeError, ValueError):
        return str(value)


def per_timestep_report(
    y_true: Any,
    y_pred: Any,
    class_table: ClassTable,
    dates: Sequence[Any] | None = None,
    ignore_index: int = -1,
) -> list[dict[str, Any]]:
    """Accuracy as the season progresses: one row per time step of ``y_true``/``y_pred`` (N, T).

    Each row holds ``step``, ``date`` (ISO text or None), ``n_samples``, ``overall_accuracy``,
    ``macro_f1`` and ``kappa`` of that step's labelled entries; a step without labels has
    ``n_samples`` 0 and None metrics.
    """
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.ndim != 2 or true.shape != pred.shape:
        raise InputError(
            f"per-time-step labels must be (N, T) arrays of one shape, got {true.shape} and {pred.shape}"
        )
    steps = true.shape[1]
    if dates is not None and len(dates) != steps:
        raise InputError(f"dates must give one entry per time step ({steps}), got {len(dates)}")
    rows = []
    for step in range(steps):
        row: dict[str, Any] = {
            "step": step,
            "date": _date_text(dates[step]) if dates is not None else None,
            "n_samples": 0,
            "overall_accuracy": None,
            "macro_f1": None,
            "kappa": None,
        }
        if np.any(true[:, step] != ignore_index):
            report = accuracy_report(true[:, step], pred[:, step], class_table, ignore_index)
            row.update({key: report[key] for key in ("n_samples", "overall_accuracy", "macro_f1", "kappa")})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# area-weighted (stratified) estimators, Olofsson et al. 2014
# ---------------------------------------------------------------------------------------------------
def _optional(values: np.ndarray, defined: np.ndarray) -> list[float | None]:
    return [float(v) if ok else None for v, ok in zip(values, defined, strict=True)]


def area_weighted_report(
    confusion: Any,
    mapped_area: Sequence[float],
    class_table: ClassTable,
    *,
    rows: Literal["map", "reference"] = "map",
    z: float = 1.96,
) -> dict[str, Any]:
    """Error-adjusted accuracy and area from a stratified sample (Olofsson et al. 2014, §4.2, eqs. 2–11).

    ``confusion``: sample counts ``n_ij`` (K, K). **Orientation: rows = map class i (the strata),
    columns = reference class j** — the transpose of :func:`confusion_matrix` / ``accuracy_report``,
    whose rows are the reference. Pass ``rows="reference"`` to hand in such a matrix unchanged
    (it is transposed here). ``mapped_area``: the mapped area of each class (pixels, ha, …; areas
    come back in the same unit); the strata weights are W_i = mapped share.

    Estimators: p̂_ij = W_i n_ij / n_i·; overall accuracy Ô = Σ p̂_jj; user's accuracy
    Û_i = p̂_ii / p̂_i·; producer's accuracy P̂_j = p̂_jj / p̂_·j; area proportion p̂_·j and area
    Â_j = A p̂_·j. Their variances, with q_ij = n_ij / n_i·, N_i· the mapped area of class i and
    N̂_·j = A p̂_·j:

    - V(Ô) = Σ_i W_i² Û_i (1−Û_i) / (n_i·−1);  V(Û_i) = Û_i (1−Û_i) / (n_i·−1);
    - V(P̂_j) = N̂_·j⁻² [N_j·² (1−P̂_j)² Û_j (1−Û_j) / (n_j·−1)
      + P̂_j² Σ_{i≠j} N_i·² q_ij (1−q_ij) / (n_i·−1)];
    - S(p̂_·j)² = Σ_i W_i² q_ij (1−q_ij) / (n_i·−1);  S(Â_j) = A S(p̂_·j).

    ``*_se`` fields are standard errors, ``*_ci`` the half-widths z·S (z = 1.96: 95 %). Accuracies
    that are undefined (no mapped or no reference area) are None.
    """
    num_classes = len(class_table)
    counts = np.asarray(confusion, dtype=np.float64)
    if rows not in ("map", "reference"):
        raise InputError(f"rows must be 'map' or 'reference', got {rows!r}")
    if counts.shape != (num_classes, num_classes):
        raise InputError(
            f"confusion must be ({num_classes}, {num_classes}) for the class table, got {counts.shape}"
        )
    if rows == "reference":
        counts = counts.T
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise InputError("confusion must hold non-negative sample counts")
    area = np.asarray(mapped_area, dtype=np.float64)
    if area.shape != (num_classes,) or not np.all(np.isfinite(area)) or np.any(area < 0) or area.sum() <= 0:
        raise InputError(
            f"mapped_area must be {num_classes} finite non-negative areas with a positive sum, "
            f"got {area.tolist()}"
        )
    stratum_n = counts.sum(axis=1)
    for entry in class_table:
        if area[entry.id] > 0 and stratum_n[entry.id] < 2:
            raise DataError(
                f"map class {entry.name!r} (code {entry.code}) has a mapped area of {area[entry.id]:g} but "
                f"{stratum_n[entry.id]:g} sample(s); the stratified estimators need at least 2 per "
                "mapped class"
            )
    total_area = float(area.sum())
    weight = area / total_area
    share = _safe_divide(counts, stratum_n[:, None])  # n_ij / n_i·
    inverse_dof = _safe_divide(np.ones(num_classes), np.where(weight > 0, stratum_n - 1, 0))
    p = weight[:, None] * share  # p̂_ij
    p_map, p_ref, p_diag = p.sum(axis=1), p.sum(axis=0), np.diag(p)

    users = _safe_divide(p_diag, p_map)
    producers = _safe_divide(p_diag, p_ref)
    var_oa = float(np.sum(weight**2 * users * (1 - users) * inverse_dof))
    var_users = users * (1 - users) * inverse_dof
    cell_var = (weight**2 * inverse_dof)[:, None] * share * (1 - share)  # W_i² q_ij (1−q_ij)/(n_i·−1)
    var_p_ref = cell_var.sum(axis=0)
    others = var_p_ref - np.diag(cell_var)  # Σ_{i≠j}
    var_producers = _safe_divide(
        weight**2 * (1 - producers) ** 2 * users * (1 - users) * inverse_dof + producers**2 * others, p_ref**2
    )
    se_users, se_producers, se_p_ref = np.sqrt(var_users), np.sqrt(var_producers), np.sqrt(var_p_ref)

    ua_defined, pa_defined = p_map > 0, p_ref > 0
    columns = {
        "users_accuracy": _optional(users, ua_defined),
        "users_accuracy_se": _optional(se_users, ua_defined),
        "users_accuracy_ci": _optional(z * se_users, ua_defined),
        "producers_accuracy": _optional(producers, pa_defined),
        "producers_accuracy_se": _optional(se_producers, pa_defined),
        "producers_accuracy_ci": _optional(z * se_producers, pa_defined),
    }
    per_class = []
    for entry in class_table:
        j = entry.id
        row: dict[str, Any] = {
            "id": j,
            "code": entry.code,
            "name": entry.name,
            "mapped_area": float(area[j]),
            "weight": float(weight[j]),
            "n_samples": _number(stratum_n[j]),
        }
        row.update({key: values[j] for key, values in columns.items()})
        row.update(
            {
                "area_proportion": float(p_ref[j]),
                "area_proportion_se": float(se_p_ref[j]),
                "area": float(total_area * p_ref[j]),
                "area_se": float(total_area * se_p_ref[j]),
                "area_ci": float(z * total_area * se_p_ref[j]),
            }
        )
        per_class.append(row)
    return {
        "orientation": "error_matrix rows = map class (strata), columns = reference class",
        "z": float(z),
        "total_area": total_area,
        "n_samples": _number(counts.sum()),
        "overall_accuracy": float(p_diag.sum()),
        "overall_accuracy_se": float(np.sqrt(var_oa)),
        "overall_accuracy_ci": float(z * np.sqrt(var_oa)),
        "classes": class_table.names,
        "error_matrix": p.tolist(),
        "per_class": per_class,
    }
