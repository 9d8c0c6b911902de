"""Input features: what a model reads besides (or instead of) Sentinel-2 reflectance.

A feature is one channel of a cube, a dataset or a model's input, named in its ``bands`` list. Four
kinds, told apart by name:

- ``reflectance``: a Sentinel-2 band (``B02`` …, any provider's alias), surface reflectance 0–1;
- ``index``: a spectral index computed from those bands (:data:`SPECTRAL_INDICES`: NDVI, EVI …), or
  given as it is (UCR Crop's NDVI profiles);
- ``backscatter``: Sentinel-1 ``VV`` / ``VH`` in dB;
- ``other``: any other named column of a table (meteorological data, another sensor), taken as given.

Only reflectance is rescaled on import (digital numbers / 10000); indices can be recomputed from
the bands at inference, so a map gets the inputs its model was trained on (:func:`add_indices`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from cropstar.data.bands import SCL, canonical_band
from cropstar.errors import CropstarError, DataError, InputError

if TYPE_CHECKING:
    from cropstar.data.cube import Cube

FeatureKind = Literal["reflectance", "index", "backscatter", "other"]
BACKSCATTER = ("VV", "VH")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
#: Sentinel-1 backscatter as extractions name it: ``VV``, ``S1-SIGMA0-VV``, ``SAR-VH``, ``vh_db`` …
_BACKSCATTER = re.compile(r"^(?:s1[-_](?:sigma0[-_])?|sar[-_]|sigma0[-_])?(vv|vh)(?:[-_]db)?$", re.IGNORECASE)


@dataclass(frozen=True)
class SpectralIndex:
    """A normalised-difference or enhanced index of Sentinel-2 reflectance bands."""

    name: str
    formula: str
    bands: tuple[str, ...]
    compute: Callable[..., Any]  # the bands' arrays (numpy, xarray or dask) in ``bands`` order → the index
    reference: str


def _normalised_difference(a: Any, b: Any) -> Any:
    return (a - b) / (a + b)


#: The spectral indices ``ingest --indices`` computes, by name.
SPECTRAL_INDICES: dict[str, SpectralIndex] = {
    index.name: index
    for index in (
        SpectralIndex("NDVI", "(B08 − B04) / (B08 + B04)", ("B08", "B04"), _normalised_difference,
                      "Rouse et al. 1974"),
        SpectralIndex("EVI", "2.5 (B08 − B04) / (B08 + 6 B04 − 7.5 B02 + 1)", ("B08", "B04", "B02"),
                      lambda nir, red, blue: 2.5 * (nir - red) / (nir + 6.0 * red - 7.5 * blue + 1.0),
                      "Huete et al. 2002"),
        SpectralIndex("NDWI", "(B03 − B08) / (B03 + B08)", ("B03", "B08"), _normalised_difference,
                      "McFeeters 1996"),
        SpectralIndex("NDMI", "(B08 − B11) / (B08 + B11)", ("B08", "B11"), _normalised_difference,
                      "Gao 1996 (NDWI of SWIR), Wilson & Sader 2002"),
        SpectralIndex("NDRE", "(B08 − B05) / (B08 + B05)", ("B08", "B05"), _normalised_difference,
                      "Gitelson & Merzlyak 1994"),
        SpectralIndex("NBR", "(B08 − B12) / (B08 + B12)", ("B08", "B12"), _normalised_difference,
                      "Key & Benson 2006"),
        SpectralIndex("SAVI", "1.5 (B08 − B04) / (B08 + B04 + 0.5)", ("B08", "B04"),
                      lambda nir, red: 1.5 * (nir - red) / (nir + red + 0.5), "Huete 1988"),
    )
}  # fmt: skip


def canonical_feature(name: str) -> str:
    """The canonical name of a feature: a Sentinel-2 band as :func:`canonical_band` spells it
    (``blue`` → ``B02``), a known index or Sentinel-1 polarisation in capitals (``ndvi`` → ``NDVI``,
    ``S1-SIGMA0-VV`` or ``SAR-VV`` → ``VV``), any other name as given. InputError for an empty name, SCL (it makes the
    validity mask, not an input) or characters that could not be a column group's name."""
    text = str(name).strip()
    if not text:
        raise InputError("a feature name is empty")
    try:
        band = canonical_band(text)
    except CropstarError:
        band = None
    if band == SCL:
        raise InputError("SCL is not an input feature: it makes the validity mask")
    if band is not None:
        return band
    upper = text.upper()
    if upper in SPECTRAL_INDICES:
        return upper
    polarisation = _BACKSCATTER.match(text)
    if polarisation:
        return polarisation.group(1).upper()
    if not _NAME.match(text):
        raise InputError(
            f"feature name {name!r} must start with a letter and hold only letters, digits and _ . + -"
        )
    return text


def feature_kind(name: str) -> FeatureKind:
    """Which kind of feature a canonical name is (see the module's docstring)."""
    try:
        canonical_band(name)
        return "reflectance"
    except CropstarError:
        pass
    if name in SPECTRAL_INDICES:
        return "index"
    if name in BACKSCATTER:
        return "backscatter"
    return "other"


def canonical_features(names: Sequence[str], what: str = "features") -> list[str]:
    """:func:`canonical_feature` of each name; InputError where one is listed twice (by any spelling)."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        feature = canonical_feature(name)
        if feature in out:
            raise InputError(f"{what}: {name!r} ({feature}) is listed twice")
        out.append(feature)
    if not out:
        raise InputError(f"{what} is empty: give at least one")
    return out


def spectral_index(name: str) -> SpectralIndex:
    """The index called ``name`` (any case); InputError listing the known ones otherwise."""
    index = SPECTRAL_INDICES.get(str(name).strip().upper())
    if index is None:
        raise InputError(f"unknown spectral index {name!r}; known: {', '.join(SPECTRAL_INDICES)}")
    return index


def describe_features(names: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per feature for a model's card: name, kind, unit, and for a spectral index its
    formula and bands (inference computes it from a cube's bands where the cube lacks it)."""
    entries = []
    for name in names:
        kind = feature_kind(name)
        entry: dict[str, Any] = {"name": name, "kind": kind}
        if kind == "reflectance":
            entry["unit"] = "reflectance (0–1)"
        elif kind == "backscatter":
            entry["unit"] = "dB"
        elif kind == "index":
            index = SPECTRAL_INDICES[name]
            entry.update(formula=index.formula, bands=list(index.bands))
        entries.append(entry)
    return entries


def index_inputs(names: Sequence[str], available: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The bands each of the indices ``names`` needs; DataError naming the index and the bands the
    ``available`` ones lack."""
    needs = {}
    for name in names:
        index = spectral_index(name)
        lacking = [band for band in index.bands if band not in available]
        if lacking:
            raise DataError(
                f"index {index.name} = {index.formula} needs band(s) {', '.join(lacking)}, which the data "
                f"lacks (it has {', '.join(available)})"
            )
        needs[index.name] = index.bands
    return needs


def add_indices(cube: Cube, names: Sequence[str]) -> Cube:
    """``cube`` with the spectral indices ``names`` appended to its bands, computed from its
    reflectance (lazily on a dask cube) as float32, NaN where a band is missing or the denominator
    is 0; an index the cube already holds is kept as it is. DataError names an index whose bands
    the cube lacks."""
    from cropstar.data.cube import Cube

    wanted = list(dict.fromkeys(spectral_index(name).name for name in names))
    wanted = [name for name in wanted if name not in cube.bands]
    if not wanted:
        return cube
    index_inputs(wanted, cube.bands)
    layers = []
    for name in wanted:
        index = SPECTRAL_INDICES[name]
        arrays = [cube.data.sel(band=band, drop=True) for band in index.bands]
        with np.errstate(divide="ignore", invalid="ignore"):
            value = index.compute(*arrays)
        value = value.where(np.isfinite(value)).astype(np.float32)
        layers.append(value.expand_dims(band=[name]).transpose("time", "band", "y", "x"))
    data = xr.concat([cube.data, *layers], dim="band", combine_attrs="override").rename(cube.data.name)
    attrs = {**cube.attrs, "indices_computed": [*cube.attrs.get("indices_computed", []), *wanted]}
    return Cube(data, cube.valid, attrs, cube.condition)


def index_values(values: np.ndarray, features: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """The spectral indices ``names`` of ``values`` (features on the last axis, named ``features``):
    float32 with the indices on the last axis, NaN where a band is missing or the denominator is 0.
    DataError names an index whose bands ``features`` lack."""
    index_inputs(names, features)
    columns = []
    for name in names:
        index = spectral_index(name)
        arrays = [values[..., list(features).index(band)] for band in index.bands]
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.asarray(index.compute(*arrays), dtype=np.float32)
        columns.append(np.where(np.isfinite(value), value, np.float32(np.nan)))
    return np.stack(columns, axis=-1) if columns else np.empty((*values.shape[:-1], 0), np.float32)


def bands_to_read(features: Sequence[str]) -> list[str]:
    """The Sentinel-2 bands a cube must be opened with to give ``features``: the reflectance
    features and the bands of the spectral indices (computed by :func:`select_features`). DataError
    names a feature that no Sentinel-2 cube can give (backscatter, meteorology, an unknown name)."""
    bands: list[str] = []
    for feature in features:
        kind = feature_kind(feature)
        if kind == "reflectance":
            needed: Sequence[str] = [canonical_band(feature)]
        elif kind == "index":
            needed = SPECTRAL_INDICES[feature].bands
        else:
            raise DataError(
                f"feature {feature} ({kind}) cannot be read from a Sentinel-2 cube: only bands and the "
                f"spectral indices {', '.join(SPECTRAL_INDICES)} can"
            )
        bands.extend(band for band in needed if band not in bands)
    return bands


def missing_features(features: Sequence[str], available: Sequence[str]) -> list[str]:
    """The ``features`` that are neither ``available`` nor a spectral index of available bands."""
    return [
        feature
        for feature in features
        if feature not in available
        and not (feature in SPECTRAL_INDICES and set(SPECTRAL_INDICES[feature].bands) <= set(available))
    ]


def select_features(cube: Cube, features: Sequence[str]) -> Cube:
    """``cube`` holding exactly ``features`` in their order: spectral indices it lacks computed from
    its bands (:func:`add_indices`), bands it holds but were not asked for dropped. DataError names
    the features it can give neither way."""
    missing = missing_features(features, cube.bands)
    if missing:
        raise DataError(
            f"the cube lacks {', '.join(missing)} (it has {', '.join(cube.bands)}) and cannot compute it"
        )
    cube = add_indices(cube, [f for f in features if f not in cube.bands])
    if list(cube.bands) != list(features):
        cube = cube.isel(band=[cube.bands.index(feature) for feature in features])
    return cube
