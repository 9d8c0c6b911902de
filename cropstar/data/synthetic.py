"""Synthetic Sentinel-2 L2A scenes for demos and tests: crop fields with class-specific phenology
(double-logistic NDVI mapped to reflectance by soil/vegetation endmember mixing), clouds and their
shadows with a matching SCL layer, written like a SAFE product's per-band images (as COGs).

The scene imitates the paper's crop data (TUM region north of Munich, 26 dates of one season;
DESIGN.md "The paper's protocols" and "Conventions"): tile T32UPU, EPSG:32632, 10 m pixels,
processing baseline 05.09 (DN = reflectance · 10000 + 1000, DN 0 = no data).

:func:`make_scene` builds everything in memory; :func:`write_scene` writes it:

- ``cube/T32UPU_{YYYYMMDDTHHMMSS}_{band}_{res}m.tif``: uint16 DN, one COG per date and band, the 10 m
  bands (B02, B03, B04, B08) at 10 m, the 20 m bands (B05, B06, B07, B8A, B11, B12) and ``SCL`` (uint8)
  at 20 m; nodata 0; tags ``BAND``, ``PROCESSING_BASELINE``, ``BOA_ADD_OFFSET``,
  ``BOA_QUANTIFICATION_VALUE``, ``DATATAKE_SENSING_TIME``;
- ``cube/metadata.json``: processing baseline, BOA_ADD_OFFSET, tile, CRS, grids and the files per date;
- ``fields.geojson``: RFC 7946 FeatureCollection (lon/lat, 7 decimals, CCW exterior rings) with the
  properties ``field_id`` (int), ``crop`` and ``crop_code`` (string);
- ``truth/labels.tif`` (int16 class ids, −1 outside fields), ``truth/field_ids.tif`` (int32, 0
  outside fields) and ``truth/class_table.json`` (``[{"id", "code", "name"}]``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from rasterio.transform import Affine
from scipy.ndimage import gaussian_filter
from shapely.geometry import mapping
from shapely.geometry.polygon import orient

from cropstar import __version__
from cropstar.data.bands import BANDS, BOA_ADD_OFFSET_FROM_N0400, QUANTIFICATION, RESOLUTION, SCL
from cropstar.errors import InputError
from cropstar.files import write_text_atomic

#: progress(task, done, total), called once per date.
Progress = Callable[[str, int, int], None]

#: The bands the scene simulates: every 10 m and 20 m band, in band-number order.
SYNTH_BANDS: tuple[str, ...] = tuple(b for b in BANDS if RESOLUTION[b] <= 20)
PIXEL_SIZE = 10.0
TILE = "T32UPU"
DEFAULT_CRS = "EPSG:32632"
#: Upper-left corner (UTM 32N) of the default scene: farmland north of Munich, ~48.36° N 11.57° E.
DEFAULT_ORIGIN = (690000.0, 5360000.0)
DEFAULT_SEASON = ("2026-03-01", "2026-10-31")
PROCESSING_BASELINE = "05.09"
BOA_ADD_OFFSET = int(BOA_ADD_OFFSET_FROM_N0400)
DN_NODATA = 0
#: The two relative orbits that see the tile: (sensing time of day, whether the swath edge cuts the tile).
ORBITS = (("10:20:31", False), ("10:30:29", True))
#: SCL thresholds on the largest cloud / cirrus opacity and shadow strength within a 20 m cell.
CLOUD_THRESHOLD = 0.05
CLOUD_HIGH_THRESHOLD = 0.4
SHADOW_THRESHOLD = 0.1
#: Clear-sky NDVI (20 m) at and above which SCL says vegetation (4); below 0 it says water (6).
SCL_VEGETATION_NDVI = 0.4
SCL_CLOUD_CODES = frozenset({8, 9, 10})
FILENAME = re.compile(r"^(?P<tile>T\w{5})_(?P<time>\d{8}T\d{6})_(?P<band>B\w{2}|SCL)_(?P<res>\d+)m\.tif$")
_TRUTH_FILES = frozenset({"labels.tif", "field_ids.tif", "class_table.json"})

#: Endmember reflectances (0–1) over SYNTH_BANDS (B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12).
ENDMEMBERS: dict[str, np.ndarray] = {
    name: np.array(values, dtype=np.float64)
    for name, values in {
        "green": (0.030, 0.070, 0.035, 0.110, 0.300, 0.400, 0.440, 0.460, 0.220, 0.110),
        "forest": (0.025, 0.050, 0.025, 0.080, 0.250, 0.330, 0.360, 0.380, 0.160, 0.070),
        "flower": (0.050, 0.190, 0.170, 0.240, 0.320, 0.370, 0.410, 0.430, 0.250, 0.140),
        "soil": (0.060, 0.090, 0.140, 0.160, 0.170, 0.180, 0.190, 0.200, 0.300, 0.240),
        "dry": (0.080, 0.110, 0.140, 0.180, 0.210, 0.230, 0.240, 0.250, 0.400, 0.300),
        "floor": (0.035, 0.050, 0.070, 0.090, 0.110, 0.125, 0.135, 0.145, 0.200, 0.120),
        "water": (0.055, 0.045, 0.025, 0.020, 0.015, 0.012, 0.010, 0.009, 0.005, 0.003),
        "cloud": (0.500, 0.490, 0.490, 0.500, 0.510, 0.510, 0.520, 0.520, 0.400, 0.280),
    }.items()
}
_RED, _NIR = SYNTH_BANDS.index("B04"), SYNTH_BANDS.index("B08")


@dataclass(frozen=True)
class LandCover:
    """One class of the scene: its code and its NDVI course over the day of year t,

    NDVI(t) = ndvi_min + (ndvi_max − ndvi_min) · (σ((t − sos)/rise) − σ((t − eos)/fall)),

    less a regrowing dip after each grass ``cuts`` date and during rapeseed ``flowering`` (when the
    canopy turns yellow). ``dry`` is the share of senescent canopy standing between ``eos`` and
    ``harvest`` (then stubble). ``canopy``/``background`` name the endmembers that are mixed to reach
    the NDVI; ``weight`` is the class's relative frequency among fields.
    """

    name: str
    code: str
    ndvi_min: float = 0.15
    ndvi_max: float = 0.85
    sos: float = 120.0
    rise: float = 8.0
    eos: float = 250.0
    fall: float = 8.0
    harvest: float = 400.0
    dry: float = 0.0
    cuts: tuple[float, ...] = ()
    flowering: float | None = None
    canopy: str = "green"
    background: str = "soil"
    weight: float = 1.0


#: The classes (codes: WorldCereal ewoc_code, dashes dropped).
CLASSES: tuple[LandCover, ...] = (
    LandCover("winter_wheat", "1101010011", 0.18, 0.86, sos=85, rise=10, eos=178, fall=7, harvest=212,
              dry=1.0, weight=3.0),
    LandCover("spring_barley", "1101020002", 0.15, 0.80, sos=128, rise=7, eos=192, fall=6, harvest=218,
              dry=1.0, weight=1.5),
    LandCover("maize", "1101060000", 0.15, 0.84, sos=172, rise=8, eos=262, fall=8, harvest=285, dry=0.8,
              weight=3.0),
    LandCover("sugar_beet", "1107000031", 0.15, 0.86, sos=150, rise=9, eos=288, fall=4, harvest=290,
              weight=1.5),
    LandCover("winter_rapeseed", "1106000031", 0.30, 0.86, sos=72, rise=8, eos=172, fall=7, harvest=200,
              dry=0.9, flowering=122, weight=1.5),
    LandCover("grassland", "2001020022", 0.45, 0.85, sos=90, rise=10, eos=320, fall=12,
              cuts=(140, 185, 232, 280), weight=2.5),
    LandCover("forest", "4004000000", 0.35, 0.86, sos=115, rise=6, eos=295, fall=9, canopy="forest",
              background="floor", weight=1.0),
    LandCover("water", "7000000000", canopy="water", weight=0.4),
)
#: Tracks and verges between fields (not a class: label −1).
MARGIN = LandCover("margin", "", 0.30, 0.55, sos=100, rise=10, eos=300, fall=10)


@dataclass
class SyntheticScene:
    """A synthetic Sentinel-2 L2A time series with its ground truth, all in memory.

    reflectance: (T, C, H, W) float32 surface reflectance as the files hold it (quantised to DN,
        NaN = no data); C = ``bands``. 20 m bands are their 20 m values repeated 2×2 (what nearest
        resampling of the 20 m file gives).
    scl: (T, H/2, W/2) uint8 Scene Classification at 20 m (ESA codes).
    times: (T,) datetime64[s] sensing times. cloud_cover: (T,) share of 20 m cells SCL marks 8/9/10.
    cloud, cirrus, shadow: (T, H, W) float32 opacities / shadow strength (0–1) at 10 m.
    labels: (H, W) int16 class ids, −1 outside fields; field_ids: (H, W) int32, 0 outside fields.
    fields: GeoDataFrame in ``crs``: field_id (int, 1…F), crop, crop_code, class_id, geometry.
    field_ndvi: (F, T) float32 clear-sky NDVI of each field (rows in ``fields`` order).
    """

    reflectance: np.ndarray
    scl: np.ndarray
    bands: tuple[str, ...]
    times: np.ndarray
    cloud_cover: np.ndarray
    cloud: np.ndarray
    cirrus: np.ndarray
    shadow: np.ndarray
    labels: np.ndarray
    field_ids: np.ndarray
    fields: gpd.GeoDataFrame
    field_ndvi: np.ndarray
    class_table: list[dict[str, Any]]
    crs: str
    transform: Affine
    seed: int
    tile: str = TILE
    processing_baseline: str = PROCESSING_BASELINE

    @property
    def size(self) -> int:
        return int(self.reflectance.shape[-1])

    @property
    def scl_10m(self) -> np.ndarray:
        """(T, H, W) SCL repeated to 10 m (nearest resampling)."""
        return _upsample(self.scl)

    @property
    def valid(self) -> np.ndarray:
        """(T, H, W) bool: True where SCL (at 10 m) is a valid observation (not 0, 1, 2, 3, 8, 9, 10)."""
        return np.isin(self.scl_10m, [4, 5, 6, 7, 11])

    def band(self, name: str) -> np.ndarray:
        """(T, H, W) reflectance of one band at 10 m."""
        return self.reflectance[:, self.bands.index(name)]

    def ndvi(self) -> np.ndarray:
        """(T, H, W) NDVI from B04 and B08 (NaN where no data)."""
        red, nir = self.band("B04"), self.band("B08")
        with np.errstate(invalid="ignore", divide="ignore"):
            return (nir - red) / (nir + red)

    def to_dataarray(self) -> Any:
        """The reflectance as a cube ``xarray.DataArray`` (docs/data-formats.md): dims (time, band, y, x),
        pixel-centre coordinates, CRS through rioxarray."""
        import rioxarray  # noqa: F401  (registers .rio)
        import xarray as xr

        x = self.transform.c + (np.arange(self.size) + 0.5) * self.transform.a
        y = self.transform.f + (np.arange(self.size) + 0.5) * self.transform.e
        cube = xr.DataArray(
            self.reflectance, dims=("time", "band", "y", "x"), name="reflectance",
            coords={"time": self.times.astype("datetime64[ns]"), "band": list(self.bands), "y": y, "x": x},
        )
        return cube.rio.write_crs(self.crs).rio.write_transform(self.transform)


def make_scene(
    size: int = 128,
    dates: int | Sequence[str | date | datetime | np.datetime64] = 26,
    seed: int = 0,
    *,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    season: tuple[str, str] = DEFAULT_SEASON,
    field_area_ha: float = 2.0,
    margin_m: float = 4.0,
    clouds: bool = True,
    swath_edge: bool = True,
    progress: Progress | None = None,
) -> SyntheticScene:
    """A synthetic scene of ``size`` × ``size`` 10 m pixels (``size`` even) with its upper-left corner at
    ``origin`` in ``crs``.

    ``dates``: a number of acquisitions drawn over ``season`` (two relative orbits, 5-day revisit each,
    one per stretch of the season, so the spacing is irregular), or the sensing times themselves.
    Fields are elongated Voronoi cells of about ``field_area_ha`` with ``margin_m`` wide tracks between
    them; boundary pixels mix their neighbours' spectra. With ``clouds`` the cloud cover varies by date
    (at least one clear and one heavily clouded date); with ``swath_edge`` the second orbit misses a
    wedge of the scene (no data). Deterministic by ``seed``: each ingredient has its own random stream,
    so e.g. the fields do not change with the number of dates.
    """
    if not isinstance(size, (int, np.integer)) or size < 16 or size % 2:
        raise InputError(f"size must be an even number of pixels ≥ 16 (20 m bands halve it), got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if field_area_ha <= 0:
        raise InputError(f"field_area_ha must be positive, got {field_area_ha}")
    size = int(size)
    streams = np.random.SeedSequence(int(seed)).spawn(7)
    rng_dates, rng_fields, rng_pheno, rng_texture, rng_cover = (np.random.default_rng(s) for s in streams[:5])

    times, edge_orbit = _acquisition_times(dates, season, rng_dates)
    n_dates = len(times)
    edge = _swath_edge(size // 2, rng_dates) if swath_edge else np.zeros((size // 2,) * 2, bool)
    transform = Affine(PIXEL_SIZE, 0.0, float(origin[0]), 0.0, -PIXEL_SIZE, float(origin[1]))

    n_fields = max(len(CLASSES), round((size * PIXEL_SIZE) ** 2 / 1e4 / field_area_ha))
    fields = _make_fields(size, transform, crs, n_fields, margin_m, rng_fields)
    labels = _rasterise(fields.geometry, fields["class_id"], size, transform, fill=-1, dtype="int16")
    field_ids = _rasterise(fields.geometry, fields["field_id"], size, transform, fill=0, dtype="int32")
    sub = _subpixel_fields(fields, size, transform)

    doy = _day_of_year(times)
    covers = [MARGIN] + [CLASSES[c] for c in fields["class_id"]]
    spectra = np.stack([_field_spectra(cover, doy, rng_pheno) for cover in covers])  # (F+1, T, C)
    field_ndvi = _ndvi(spectra[1:]).astype(np.float32)
    texture = 1.0 + 0.03 * _smooth_noise(rng_texture, size, 1.5)
    texture = texture + 0.01 * rng_texture.standard_normal((size, size))

    cover_by_date = _cloud_cover_schedule(n_dates, rng_cover) if clouds else np.zeros(n_dates)
    cloud_streams = streams[5].spawn(n_dates)
    noise_streams = streams[6].spawn(n_dates)
    shape = (n_dates, size, size)
    reflectance = np.empty((n_dates, len(SYNTH_BANDS), size, size), np.float32)
    scl = np.empty((n_dates, size // 2, size // 2), np.uint8)
    cloud, cirrus, shadow = (np.zeros(shape, np.float32) for _ in range(3))
    for t in range(n_dates):
        surface = spectra[:, t][sub].mean(axis=2).transpose(2, 0, 1) * texture  # (C, H, W)
        layers = _cloud_layers(size, cover_by_date[t], np.random.default_rng(cloud_streams[t]))
        cloud[t], cirrus[t], shadow[t] = layers
        observed = _observe(surface, cloud[t], cirrus[t], shadow[t], np.random.default_rng(noise_streams[t]))
        nodata = edge if edge_orbit[t] else np.zeros_like(edge)
        reflectance[t] = _quantise(observed, _upsample(nodata))
        scl[t] = _scene_classification(surface, cloud[t], cirrus[t], shadow[t], nodata)
        if progress is not None:
            progress("simulating dates", t + 1, n_dates)

    flagged = np.isin(scl, list(SCL_CLOUD_CODES)).sum(axis=(1, 2))
    observed_cells = np.maximum((scl != 0).sum(axis=(1, 2)), 1)
    class_table = [{"id": i, "code": c.code, "name": c.name} for i, c in enumerate(CLASSES)]
    return SyntheticScene(
        reflectance=reflectance, scl=scl, bands=SYNTH_BANDS, times=times,
        cloud_cover=(flagged / observed_cells).astype(np.float32), cloud=cloud, cirrus=cirrus, shadow=shadow,
        labels=labels, field_ids=field_ids, fields=fields, field_ndvi=field_ndvi, class_table=class_table,
        crs=crs, transform=transform, seed=int(seed),
    )


# ------------------------------------------------------------------------------------------- time


def _acquisition_times(
    dates: int | Sequence[Any], season: tuple[str, str], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sensing times (T,) datetime64[s] and whether each is from the orbit whose swath edge cuts the tile."""
    if not isinstance(dates, (int, np.integer)):
        try:
            times = np.unique(np.array([np.datetime64(d, "s") for d in dates]))
        except (TypeError, ValueError) as error:
            raise InputError(f"dates must be a count or datetimes, got {dates!r}: {error}") from None
        if len(times) == 0:
            raise InputError("dates is empty")
        return times, np.zeros(len(times), bool)
    start, end = np.datetime64(season[0], "D"), np.datetime64(season[1], "D")
    first = start + int(rng.integers(0, 5))
    candidates = sorted(
        (day + np.timedelta64(offset, "D"), orbit)
        for orbit, offset in enumerate((0, 2))
        for day in np.arange(first, end + 1 - offset, np.timedelta64(5, "D"))
    )
    if not 1 <= dates <= len(candidates):
        raise InputError(
            f"dates must be between 1 and {len(candidates)} (the acquisitions from {start} to {end}), "
            f"got {dates}"
        )
    picks = [int(rng.choice(chunk)) for chunk in np.array_split(np.arange(len(candidates)), int(dates))]
    times = np.array(
        [np.datetime64(f"{candidates[i][0]}T{ORBITS[candidates[i][1]][0]}", "s") for i in picks]
    )
    return times, np.array([ORBITS[candidates[i][1]][1] for i in picks])


def _day_of_year(times: np.ndarray) -> np.ndarray:
    years = times.astype("datetime64[Y]")
    return (times - years).astype("timedelta64[s]").astype(np.float64) / 86400.0 + 1.0


def _swath_edge(cells: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool at 20 m: the slanted wedge west of the swath edge (no data on the edge orbit)."""
    rows, cols = np.mgrid[0:cells, 0:cells]
    left, slope = rng.uniform(0.08, 0.2), rng.uniform(0.05, 0.15)
    return cols < cells * (left + slope * rows / cells)


# ----------------------------------------------------------------------------------------- fields


def _make_fields(
    size: int, transform: Affine, crs: str, n_fields: int, margin_m: float, rng: np.random.Generator
) -> gpd.GeoDataFrame:
    """Fields: Voronoi cells of jittered-grid seeds in a frame stretched along a random direction (so the
    fields are elongated), shrunk by half the track width, clipped to the scene; classes drawn by weight,
    every class at least once."""
    width = size * PIXEL_SIZE
    west, north = transform.c, transform.f
    scene = shapely.box(west, north - width, west + width, north)
    centre = np.array([west + width / 2, north - width / 2])
    angle, stretch = rng.uniform(-np.pi / 8, np.pi / 8), rng.uniform(1.5, 3.0)
    rotate = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    forward = np.diag([1.0 / stretch, 1.0]) @ rotate  # world → a frame where the fields are round
    backward = np.linalg.inv(forward)

    corners = (np.array(scene.exterior.coords) - centre) @ forward.T
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    spacing = np.sqrt(width**2 / stretch / n_fields)
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], spacing), np.arange(lo[1], hi[1], spacing))
    jitter = rng.uniform(-0.35, 0.35, (gx.size, 2))
    seeds = np.column_stack([gx.ravel(), gy.ravel()]) + spacing * (0.5 + jitter)
    inside = shapely.contains_xy(scene, *(seeds @ backward.T + centre).T)
    extent = shapely.box(*(lo - 2 * spacing), *(hi + 2 * spacing))
    cells = shapely.voronoi_polygons(shapely.multipoints(seeds[inside]), extend_to=extent)

    polygons = []
    for cell in shapely.get_parts(cells):
        world = shapely.transform(cell, lambda xy: xy @ backward.T + centre)
        polygon = world.buffer(-margin_m / 2, join_style="mitre").intersection(scene).simplify(0.01)
        if isinstance(polygon, shapely.Polygon) and polygon.area >= 4 * PIXEL_SIZE**2:
            polygons.append(orient(polygon, sign=1.0))
    polygons.sort(key=lambda p: (-round(p.centroid.y, 3), round(p.centroid.x, 3)))

    weights = np.array([c.weight for c in CLASSES])
    class_ids = rng.choice(len(CLASSES), size=len(polygons), p=weights / weights.sum())
    if len(polygons) >= len(CLASSES):  # every class at least once, at random fields
        class_ids[rng.permutation(len(polygons))[: len(CLASSES)]] = np.arange(len(CLASSES))
    return gpd.GeoDataFrame(
        {
            "field_id": np.arange(1, len(polygons) + 1, dtype=np.int64),
            "crop": [CLASSES[c].name for c in class_ids],
            "crop_code": [CLASSES[c].code for c in class_ids],
            "class_id": class_ids.astype(np.int64),
        },
        geometry=polygons, crs=crs,
    )


def _rasterise(
    geometries: Any, values: Any, size: int, transform: Affine, fill: int, dtype: str
) -> np.ndarray:
    """Pixel-centre rasterisation (rasterio's default rule)."""
    return rasterio.features.rasterize(
        zip(geometries, (int(v) for v in values), strict=True), out_shape=(size, size),
        transform=transform, fill=fill, dtype=dtype,
    )


def _scaled(transform: Affine, factor: float) -> Affine:
    """The transform of the grid with pixels ``factor`` times as large (``transform · scale(factor)``)."""
    a, b, c, d, e, f = transform[:6]
    return Affine(a * factor, b * factor, c, d * factor, e * factor, f)


def _subpixel_fields(fields: gpd.GeoDataFrame, size: int, transform: Affine, factor: int = 3) -> np.ndarray:
    """(H, W, factor²) row index into [margin, field 1, …, field F] of each sub-pixel (for mixed pixels)."""
    fine = _rasterise(fields.geometry, fields["field_id"], size * factor, _scaled(transform, 1 / factor),
                      fill=0, dtype="int32")
    return fine.reshape(size, factor, size, factor).transpose(0, 2, 1, 3).reshape(size, size, factor**2)


# -------------------------------------------------------------------------------------- phenology


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _field_spectra(cover: LandCover, doy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, C) clear-sky reflectance of one field: the class's NDVI course with field-specific timing
    (± ~6 days), vigour, soil brightness and date-to-date wobble, mixed from canopy and background."""
    if cover.canopy == "water":
        return np.tile(ENDMEMBERS["water"] * rng.uniform(0.8, 1.3), (len(doy), 1))
    sos = cover.sos + rng.normal(0.0, 6.0)
    shift = rng.normal(0.0, 6.0)
    eos, harvest = cover.eos + shift, cover.harvest + shift + rng.normal(0.0, 3.0)
    top = cover.ndvi_max + rng.normal(0.0, 0.03)
    ndvi = cover.ndvi_min + (top - cover.ndvi_min) * (
        _sigmoid((doy - sos) / cover.rise) - _sigmoid((doy - eos) / cover.fall)
    )
    for cut in cover.cuts:
        days = doy - (cut + rng.normal(0.0, 7.0))
        ndvi = ndvi * (1.0 - 0.45 * np.where(days >= 0, np.exp(-np.maximum(days, 0) / 14.0), 0.0))
    canopy = np.tile(ENDMEMBERS[cover.canopy], (len(doy), 1))
    if cover.flowering is not None:
        bloom = np.exp(-0.5 * ((doy - cover.flowering - (sos - cover.sos)) / 7.0) ** 2)[:, None]
        canopy = (1 - 0.6 * bloom) * ENDMEMBERS["green"] + 0.6 * bloom * ENDMEMBERS["flower"]
        ndvi = ndvi - 0.1 * bloom[:, 0]
    ndvi = ndvi + rng.normal(0.0, 0.015, len(doy))
    standing = _sigmoid((doy - eos) / cover.fall) * (1 - 0.6 * _sigmoid((doy - harvest) / 3.0))
    dry = cover.dry * standing[:, None]
    background = (1 - dry) * ENDMEMBERS[cover.background] * rng.uniform(0.85, 1.15) + dry * ENDMEMBERS["dry"]
    return _mix_to_ndvi(canopy, background, ndvi)


def _mix_to_ndvi(canopy: np.ndarray, background: np.ndarray, ndvi: np.ndarray) -> np.ndarray:
    """Linear mixture f·canopy + (1 − f)·background whose NDVI is ``ndvi`` (f solved exactly, clipped to
    [0, 1] where the endmembers cannot reach it). canopy, background: (T, C); ndvi: (T,)."""
    a = canopy[:, _NIR] + canopy[:, _RED]
    b = background[:, _NIR] + background[:, _RED]
    c = canopy[:, _NIR] - canopy[:, _RED]
    d = background[:, _NIR] - background[:, _RED]
    denominator = (c - d) - ndvi * (a - b)
    safe = np.where(np.abs(denominator) > 1e-9, denominator, 1e-9)
    fraction = np.clip((ndvi * b - d) / safe, 0.0, 1.0)[:, None]
    return fraction * canopy + (1 - fraction) * background


def _ndvi(reflectance: np.ndarray) -> np.ndarray:
    """NDVI over the last (band) axis of (…, C) spectra."""
    red, nir = reflectance[..., _RED], reflectance[..., _NIR]
    return (nir - red) / (nir + red)


# ----------------------------------------------------------------------------------------- clouds


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian-smoothed white noise, unit standard deviation."""
    field = gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return field / field.std()


def _cloud_cover_schedule(n_dates: int, rng: np.random.Generator) -> np.ndarray:
    """Cloud cover per date: about 30% clear dates, the rest Beta-distributed; with two dates or more, the
    least cloudy is clear and the cloudiest covers at least 75%."""
    cover = np.where(rng.random(n_dates) < 0.3, 0.0, rng.beta(0.7, 1.0, n_dates)).clip(0.0, 0.95)
    if n_dates >= 2:
        order = np.argsort(cover, kind="stable")
        cover[order[0]], cover[order[-1]] = 0.0, max(cover[order[-1]], 0.75)
    return cover


def _cloud_layers(size: int, cover: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(H, W) cloud opacity (smooth blobs over the share ``cover`` of the scene), thin-cirrus opacity on some
    dates, and shadow strength: the cloud field shifted by the sun's offset (shadows fall north-west)."""
    zeros = np.zeros((size, size), np.float32)
    if cover <= 0:
        return zeros, zeros, zeros
    pad = 24
    canvas = _smooth_noise(rng, size + 2 * pad, rng.uniform(6.0, 14.0))
    canvas = canvas + 0.35 * _smooth_noise(rng, size + 2 * pad, 2.0)
    level = np.quantile(canvas[pad:-pad, pad:-pad], 1.0 - cover)
    opacity = np.clip((canvas - level) / 0.5, 0.0, 1.0)
    cloud = rng.uniform(0.85, 1.0) * opacity[pad:-pad, pad:-pad]
    down, right = (int(v) for v in rng.integers(6, pad - 5, 2))
    shadow = opacity[pad + down : pad + down + size, pad + right : pad + right + size]
    cirrus = zeros
    if rng.random() < 0.3:
        haze = _smooth_noise(rng, size, 20.0)
        cirrus = 0.25 * np.clip(haze - np.quantile(haze, 1.0 - rng.uniform(0.2, 0.6)), 0.0, 1.0)
    return cloud.astype(np.float32), cirrus.astype(np.float32), shadow.astype(np.float32)


def _observe(
    surface: np.ndarray, cloud: np.ndarray, cirrus: np.ndarray, shadow: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(C, H, W) top-of-canopy reflectance as seen: shadows darken, clouds and cirrus blend in their
    bright spectrum, 20 m bands integrate 2×2 pixels, then sensor noise at each band's resolution."""
    haze = 1.0 - (1.0 - cloud) * (1.0 - cirrus)
    seen = (1.0 - haze) * surface * (1.0 - 0.7 * shadow) + haze * ENDMEMBERS["cloud"][:, None, None]
    for c, band in enumerate(SYNTH_BANDS):
        if RESOLUTION[band] == 20:
            coarse = _block_mean(seen[c])
            seen[c] = _upsample(coarse + rng.normal(0.0, 1.0, coarse.shape) * (0.002 + 0.01 * coarse))
        else:
            seen[c] = seen[c] + rng.normal(0.0, 1.0, seen[c].shape) * (0.002 + 0.01 * seen[c])
    return seen


def _quantise(observed: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 reflectance exactly as the uint16 DN files give it back, NaN where ``nodata``."""
    dn = np.clip(np.round(observed * QUANTIFICATION - BOA_ADD_OFFSET), 1, 65535).astype(np.uint16)
    reflectance = _reflectance_from_dn(dn)
    reflectance[:, nodata] = np.nan
    return reflectance


def _reflectance_from_dn(dn: np.ndarray) -> np.ndarray:
    return (dn.astype(np.float32) + np.float32(BOA_ADD_OFFSET)) / np.float32(QUANTIFICATION)


def _dn_from_reflectance(reflectance: np.ndarray) -> np.ndarray:
    dn = np.round(np.nan_to_num(reflectance.astype(np.float64), nan=0.0) * QUANTIFICATION - BOA_ADD_OFFSET)
    return np.where(np.isnan(reflectance), DN_NODATA, dn).astype(np.uint16)


def _scene_classification(
    surface: np.ndarray, cloud: np.ndarray, cirrus: np.ndarray, shadow: np.ndarray, nodata: np.ndarray
) -> np.ndarray:
    """(h, w) SCL at 20 m from the 10 m truth: a cell is cloud (9 high, 8 medium) where its largest cloud
    opacity reaches the thresholds, else cirrus (10), else shadow (3), else vegetation (4), bare (5) or
    water (6) by its clear-sky NDVI; 0 where no data."""
    red, nir = _block_mean(surface[_RED]), _block_mean(surface[_NIR])
    ndvi = (nir - red) / (nir + red)
    scl = np.where(ndvi >= SCL_VEGETATION_NDVI, 4, np.where(ndvi < 0.0, 6, 5)).astype(np.uint8)
    scl[_block_max(shadow) >= SHADOW_THRESHOLD] = 3
    scl[_block_max(cirrus) >= CLOUD_THRESHOLD] = 10
    cloud_max = _block_max(cloud)
    scl[cloud_max >= CLOUD_THRESHOLD] = 8
    scl[cloud_max >= CLOUD_HIGH_THRESHOLD] = 9
    scl[nodata] = 0
    return scl


def _block_mean(x: np.ndarray) -> np.ndarray:
    """(…, H, W) → (…, H/2, W/2) mean over 2×2 blocks."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // 2, 2, w // 2, 2).mean(axis=(-3, -1))


def _block_max(x: np.ndarray) -> np.ndarray:
    *lead, h, w = x.shape
    return x.reshape(*lead, h // 2, 2, w // 2, 2).max(axis=(-3, -1))


def _upsample(x: np.ndarray) -> np.ndarray:
    """(…, h, w) → (…, 2h, 2w) by repeating each cell 2×2 (nearest)."""
    return np.repeat(np.repeat(x, 2, axis=-2), 2, axis=-1)


# ---------------------------------------------------------------------------------------- writing


def band_filename(tile: str, time: np.datetime64, band: str) -> str:
    """SAFE-style image name, e.g. ``T32UPU_20260412T102031_B02_10m.tif`` (SCL: ``…_SCL_20m.tif``)."""
    resolution = 20 if band == SCL else RESOLUTION[band]
    stamp = str(np.datetime64(time, "s")).replace("-", "").replace(":", "")
    return f"{tile}_{stamp}_{band}_{resolution}m.tif"


def write_scene(
    scene: SyntheticScene, out_dir: Path | str, progress: Progress | None = None
) -> dict[str, Path]:
    """Write ``scene`` under ``out_dir`` (layout in the module docstring) and return the paths written.

    ``cube/`` and ``truth/`` are built in temporary folders beside them and swapped in when complete, and
    ``fields.geojson`` is replaced atomically, so an interrupted run leaves the previous files or none.
    An existing ``cube/`` or ``truth/`` holding files that this function does not write raises InputError.
    """
    out = Path(out_dir)
    cube_dir, truth_dir = out / "cube", out / "truth"
    _check_ours(cube_dir, lambda name: name == "metadata.json" or bool(FILENAME.match(name)))
    _check_ours(truth_dir, lambda name: name in _TRUTH_FILES)
    out.mkdir(parents=True, exist_ok=True)

    with _staging(cube_dir) as staging:
        acquisitions = []
        for t, time in enumerate(scene.times):
            files = {}
            for c, band in enumerate(scene.bands):
                dn = _dn_from_reflectance(scene.reflectance[t, c])
                if RESOLUTION[band] == 20:
                    dn = dn[::2, ::2]
                files[band] = _write_image(staging, scene, time, band, dn)
            files[SCL] = _write_image(staging, scene, time, SCL, scene.scl[t])
            acquisitions.append({"datetime": str(time), "cloud_cover": round(float(scene.cloud_cover[t]), 4),
                                 "files": files})
            if progress is not None:
                progress("writing dates", t + 1, len(scene.times))
        write_text_atomic(staging / "metadata.json", json.dumps(_metadata(scene, acquisitions), indent=2))

    with _staging(truth_dir) as staging:
        _write_raster(staging / "labels.tif", scene.labels, scene.transform, scene.crs, nodata=-1)
        _write_raster(staging / "field_ids.tif", scene.field_ids, scene.transform, scene.crs, nodata=0)
        write_text_atomic(staging / "class_table.json", json.dumps(scene.class_table, indent=2))

    fields_path = write_text_atomic(out / "fields.geojson", json.dumps(fields_geojson(scene.fields)))
    return {
        "cube": cube_dir, "metadata": cube_dir / "metadata.json", "fields": fields_path,
        "labels": truth_dir / "labels.tif", "field_ids": truth_dir / "field_ids.tif",
        "class_table": truth_dir / "class_table.json",
    }


def _metadata(scene: SyntheticScene, acquisitions: list[dict[str, Any]]) -> dict[str, Any]:
    def grid(resolution: int) -> dict[str, Any]:
        factor = resolution / PIXEL_SIZE
        transform = _scaled(scene.transform, factor)
        return {"width": int(scene.size / factor), "height": int(scene.size / factor),
                "transform": list(transform)[:6]}

    return {
        "generator": "cropstar synth", "cropstar_version": __version__, "seed": scene.seed,
        "product_type": "S2MSI2A", "tile": scene.tile, "crs": scene.crs,
        "processing_baseline": scene.processing_baseline, "BOA_ADD_OFFSET": BOA_ADD_OFFSET,
        "BOA_QUANTIFICATION_VALUE": int(QUANTIFICATION), "nodata": DN_NODATA,
        "filename_pattern": "{tile}_{YYYYMMDDTHHMMSS}_{band}_{resolution}m.tif",
        "bands": {**{band: RESOLUTION[band] for band in scene.bands}, SCL: 20},
        "grids": {"10": grid(10), "20": grid(20)},
        "acquisitions": acquisitions,
    }


def _write_image(
    folder: Path, scene: SyntheticScene, time: np.datetime64, band: str, data: np.ndarray
) -> str:
    name = band_filename(scene.tile, time, band)
    factor = data.shape[-1] / scene.size
    tags = {
        "BAND": band, "PROCESSING_BASELINE": scene.processing_baseline, "DATATAKE_SENSING_TIME": str(time),
        "TILE_ID": scene.tile,
    }
    if band != SCL:
        tags |= {"BOA_ADD_OFFSET": str(BOA_ADD_OFFSET), "BOA_QUANTIFICATION_VALUE": str(int(QUANTIFICATION))}
    _write_raster(folder / name, data, _scaled(scene.transform, 1 / factor), scene.crs, nodata=DN_NODATA,
                  description=band, tags=tags)
    return name


def _write_raster(
    path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: int,
    description: str | None = None, tags: dict[str, str] | None = None,
) -> None:
    """One single-band COG (DEFLATE), written to a temporary name and renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    profile = {
        "driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": data.dtype.name,
        "crs": crs, "transform": transform, "nodata": nodata, "compress": "DEFLATE", "blocksize": 256,
    }
    if data.dtype.kind in "iu":
        profile["predictor"] = 2
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data, 1)
            if description:
                dst.set_band_description(1, description)
            if tags:
                dst.update_tags(**tags)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fields_geojson(fields: gpd.GeoDataFrame) -> dict[str, Any]:
    """The fields as an RFC 7946 FeatureCollection: WGS 84 lon/lat rounded to 7 decimals, exterior rings
    counter-clockwise, no ``crs`` member; properties field_id, crop, crop_code."""
    lonlat = fields.to_crs("EPSG:4326")
    features = []
    for row, geometry in zip(lonlat.itertuples(), lonlat.geometry, strict=True):
        rounded = orient(shapely.transform(geometry, lambda xy: np.round(xy, 7)), sign=1.0)
        features.append({
            "type": "Feature", "id": int(row.field_id),
            "properties": {"field_id": int(row.field_id), "crop": row.crop, "crop_code": row.crop_code},
            "geometry": mapping(rounded),
        })
    return {"type": "FeatureCollection", "features": features}


def _check_ours(folder: Path, ours: Callable[[str], bool]) -> None:
    if folder.exists():
        foreign = sorted(p.name for p in folder.iterdir() if not ours(p.name))
        if not folder.is_dir() or foreign:
            raise InputError(
                f"{folder} exists and holds files that cropstar synth does not write "
                f"({', '.join(foreign[:3])}); "
                "choose another output folder"
            )


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """``with _staging(target) as tmp:`` yields a fresh folder beside ``target`` and, when the block
    completes, swaps it in for ``target``; on error the temporary folder is removed."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
