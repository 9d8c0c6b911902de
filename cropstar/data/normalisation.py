"""Per-band normalisation statistics: mean and standard deviation of every band over the valid
time steps of the training samples (docs/data-formats.md: the ``normalisation`` attribute).

The statistics stream: :class:`BandStatistics` takes shard after shard and merges each shard's
count, mean and sum of squared deviations exactly (Chan, Golub & LeVeque's pairwise update), so the
result equals the statistics of all values at once without holding them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cropstar.errors import DataError


@dataclass(frozen=True)
class Normalisation:
    """Per-band ``mean`` and ``std`` (C,) of reflectance; :meth:`apply` gives (x − mean) / std.

    ``std`` is the population standard deviation; a constant band (std 0) is divided by 1.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64).ravel()
        std = np.asarray(self.std, dtype=np.float64).ravel()
        if mean.shape != std.shape:
            raise DataError(f"normalisation mean has {mean.size} bands but std has {std.size}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
            raise DataError(f"normalisation statistics must be finite with std ≥ 0: mean {mean}, std {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def num_bands(self) -> int:
        return int(self.mean.size)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Sequence[float]]) -> Normalisation:
        try:
            return cls(
                np.asarray(values["mean"], dtype=np.float64), np.asarray(values["std"], dtype=np.float64)
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"normalisation needs 'mean' and 'std' lists per band: {error}") from None

    def apply(self, patches: np.ndarray, band_axis: int = -3) -> np.ndarray:
        """Normalise ``patches`` (…, C, P, P) (band axis ``band_axis``) to float32."""
        shape = [1] * patches.ndim
        shape[band_axis] = self.num_bands
        if patches.shape[band_axis] != self.num_bands:
            raise DataError(
                f"patches have {patches.shape[band_axis]} bands, the normalisation {self.num_bands}"
            )
        std = np.where(self.std > 0, self.std, 1.0)
        out = (patches - self.mean.reshape(shape).astype(np.float32)) / std.reshape(shape).astype(np.float32)
        return out.astype(np.float32, copy=False)


class BandStatistics:
    """Streaming per-band mean / std over the valid steps of patch sequences.

    ``update(patches, mask)`` with patches (n, T, C, P, P) and mask (n, T) (True = valid step) adds
    every finite value of the valid steps, all P×P pixels, band by band; :meth:`result` returns the
    :class:`Normalisation`.
    """

    def __init__(self, num_bands: int) -> None:
        self.count = np.zeros(num_bands, dtype=np.float64)
        self.mean = np.zeros(num_bands, dtype=np.float64)
        self.m2 = np.zeros(num_bands, dtype=np.float64)

    def update(self, patches: np.ndarray, mask: np.ndarray) -> None:
        patches = np.asarray(patches)
        mask = np.asarray(mask, dtype=bool)
        if patches.ndim != 5 or mask.shape != patches.shape[:2] or patches.shape[2] != self.count.size:
            raise DataError(
                f"expected patches (n, T, {self.count.size}, P, P) and mask (n, T); "
                f"got {patches.shape} and {mask.shape}"
            )
        values = patches[mask]  # (M, C, P, P)
        values = np.moveaxis(values, 1, 0).reshape(self.count.size, -1).astype(np.float64)
        finite = np.isfinite(values)
        n_b = finite.sum(axis=1).astype(np.float64)
        safe = np.where(finite, values, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, safe.sum(axis=1) / np.maximum(n_b, 1), 0.0)
        m2_b = (np.where(finite, values - mean_b[:, None], 0.0) ** 2).sum(axis=1)
        total = self.count + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean_b - self.mean
            ratio = np.where(total > 0, n_b / np.maximum(total, 1), 0.0)
            self.mean = self.mean + delta * ratio
            self.m2 = self.m2 + m2_b + delta**2 * self.count * ratio
        self.count = total

    def result(self, band_names: Sequence[str] | None = None) -> Normalisation:
        """The statistics so far; a band with no valid value raises DataError naming it."""
        empty = np.flatnonzero(self.count == 0)
        if empty.size:
            names = [band_names[i] if band_names is not None else str(i) for i in empty]
            raise DataError(
                f"no valid training observation for band(s) {', '.join(names)}: cannot compute "
                "normalisation statistics (are all training steps masked?)"
            )
        return Normalisation(self.mean.copy(), np.sqrt(self.m2 / self.count))


def band_statistics(
    patches: np.ndarray, mask: np.ndarray, band_names: Sequence[str] | None = None
) -> Normalisation:
    """Per-band mean / std of ``patches`` (N, T, C, P, P) over the steps where ``mask`` (N, T) is True."""
    stats = BandStatistics(np.asarray(patches).shape[2])
    stats.update(patches, mask)
    return stats.result(band_names)
