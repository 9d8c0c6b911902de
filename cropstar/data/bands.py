"""Sentinel-2 conventions: bands and resolutions, provider alias table, Scene Classification (SCL)
classes, and the L2A radiometric offset by processing baseline (DESIGN.md, "Conventions")."""

from __future__ import annotations

import re

from cropstar.errors import DataError

#: Band → native resolution in metres.
RESOLUTION: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}
#: Band → central wavelength in nanometres (Sentinel-2A).
WAVELENGTH_NM: dict[str, float] = {
    "B01": 442.7, "B02": 492.4, "B03": 559.8, "B04": 664.6, "B05": 704.1, "B06": 740.5,
    "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B09": 945.1, "B11": 1613.7, "B12": 2202.4,
}
BANDS: tuple[str, ...] = tuple(RESOLUTION)
#: The model's default input: the 10 m bands and the two SWIR bands.
DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")
SCL = "SCL"

#: Provider names → canonical band names (compared case-insensitively).
ALIASES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A",
    "nir09": "B09", "swir16": "B11", "swir22": "B12", "scl": SCL, "scene_classification": SCL,
    # CDSE STAC common names of the red-edge bands (centre wavelength in 10 nm)
    "rededge071": "B05", "rededge075": "B06", "rededge078": "B07",
}

#: SCL classes (ESA L2A product specification).
SCL_CLASSES: dict[int, str] = {
    0: "no_data", 1: "saturated_or_defective", 2: "dark_area_pixels", 3: "cloud_shadows",
    4: "vegetation", 5: "not_vegetated", 6: "water", 7: "unclassified",
    8: "cloud_medium_probability", 9: "cloud_high_probability", 10: "thin_cirrus", 11: "snow",
}
#: SCL classes that make an observation invalid; snow (11) is optional.
SCL_INVALID: frozenset[int] = frozenset({0, 1, 2, 3, 8, 9, 10})
SCL_SNOW = 11

#: L2A reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION; the offset is −1000 from baseline 04.00.
QUANTIFICATION = 10000.0
BOA_ADD_OFFSET_FROM_N0400 = -1000.0

_PREFIX = re.compile(r"^(?:s2[-_]l2a[-_]|optical[-_])")
_SUFFIX = re.compile(r"(?:[-_]ts\d+)?(?:[-_]\d{2}m)?$")
_BAND = re.compile(r"b0?(\d{1,2})(a?)")


def canonical_band(name: str) -> str:
    """The canonical name of a band as a provider spells it: ``B2``, ``b02``, ``B02_10m``,
    ``S2-L2A-B02``, ``OPTICAL-B02-ts0-10m``, ``blue`` → ``B02``; ``scl`` → ``SCL``.

    Unknown names raise DataError naming the band.
    """
    key = _SUFFIX.sub("", _PREFIX.sub("", name.strip().lower()))
    if key in ALIASES:
        return ALIASES[key]
    match = _BAND.fullmatch(key)
    if match:
        number, a = int(match.group(1)), match.group(2)
        candidate = f"B{number}A" if a else f"B{number:02d}"
        if candidate in RESOLUTION:
            return candidate
    raise DataError(
        f"unknown Sentinel-2 band name {name!r}; known: {', '.join(BANDS)}, SCL and aliases {', '.join(ALIASES)}"
    )


def band_or_none(name: str) -> str | None:
    """:func:`canonical_band` of ``name``, or None where it names no band (a file or variable to skip)."""
    try:
        return canonical_band(name)
    except DataError:
        return None


#: The processing baseline inside a product, granule, tile or datastrip id: ``…_N0509_…`` or ``…_N05.09``.
BASELINE_IN_ID = re.compile(r"_N(\d{2})\.?(\d{2})(?=[_.]|$)")


def baseline_in_id(text: str | None) -> str | None:
    """The processing baseline an id carries (``…_N0509_…``, ``…_N05.09``) as ``05.09``, or None."""
    match = BASELINE_IN_ID.search(text or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def boa_offset(processing_baseline: str | float | None) -> float:
    """BOA_ADD_OFFSET for a product's processing baseline ("04.00" or "N0400" → −1000; "02.14" → 0).

    Decided from the baseline, never the acquisition date; ``None`` (unknown) raises DataError.
    """
    if processing_baseline is None:
        raise DataError("unknown processing baseline: cannot decide the L2A BOA offset (pass it explicitly)")
    text = str(processing_baseline).strip()
    if re.fullmatch(r"N\d{4}", text):  # as in SAFE product names
        text = f"{text[1:3]}.{text[3:]}"
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"processing baseline {processing_baseline!r} is not a number like '04.00'") from None
    return BOA_ADD_OFFSET_FROM_N0400 if value >= 4.0 else 0.0
