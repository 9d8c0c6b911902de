"""What a Sentinel-2 L2A STAC item says about its product, as the real catalogues write it (Earth Search
v0 and v1, Planetary Computer, CDSE): its band assets, time, tile, processing baseline and declared raster
scale/offset (DESIGN.md, "Conventions": one alias table; the offset follows the baseline).

Rules (how :mod:`cropstar.data.sources.stac` decides the offset from them is stated there):

- Mission and level: an item that says it is something other than Sentinel-2 L2A raises DataError naming
  the item and what gave it away: a ``platform``/``constellation`` that is not Sentinel-2 (Landsat,
  Sentinel-1), a product type other than ``S2MSI2A`` (``s2:product_type``, ``product:type``), a
  ``processing:level`` other than L2/L2A, or an ``L1C`` token in its product id, collection or id. An item
  that says nothing about either is read as Sentinel-2 L2A.
- Bands: each asset key goes through :func:`cropstar.data.bands.canonical_band` (Earth Search ``red``,
  ``nir08`` → B8A, ``scl``; Planetary Computer / Earth Search v0 ``B04``, ``SCL``; CDSE ``B04_10m``,
  ``SCL_20m``); a key that is no band name falls back to the ``name`` of the asset's single band
  (``eo:bands``/``bands``), and a key and band name naming different bands raise DataError. Ignored:
  Earth Search's ``*-jp2`` twins (the original JP2s, whose DNs are not those of the COGs the item
  describes), assets with a metadata/thumbnail/overview/visual/tiles role, and everything that is not one
  band (``visual``, ``TCI_10m``, ``AOT``, ``WVP``, ``preview``, ``cloud``, ``snow``, CDSE's ``RGBA_FAKE``).
- Several assets of one band (CDSE ``B04_10m``/``_20m``/``_60m``): the finest wins, except that an
  upsampled asset (role ``sampling:upsampled``, or finer than the band's native resolution, e.g. CDSE
  ``B01_20m``) is used only where nothing else gives the band. Resolution: ``gsd``, else
  ``proj:transform``, else ``raster:bands[0].spatial_resolution``, else a ``_20m`` key suffix. Two assets
  tied at the best resolution raise DataError naming both.
- Processing baseline, every one the item states, first = the one used: the properties
  ``s2:processing_baseline`` (Earth Search v1, Planetary Computer), ``processing:version`` (CDSE; only
  where it has the form ``05.11``, else it is some software's version), ``sentinel:processing_baseline``
  (early Earth Search v1); then the ``_NXXYY_`` part of ``sentinel:product_id`` (Earth Search v0, its
  only source) and ``s2:product_uri``, the ``_NXX.YY`` suffix of ``s2:granule_id``/``s2:tile_id``/
  ``s2:datastrip_id``, and the item id (CDSE ids carry it; Planetary Computer ids drop it, so its
  property is what counts there).
- Offset already in the pixels: ``earthsearch:boa_offset_applied`` (``sentinel:boa_offset_applied`` on
  early items), where it is a boolean.
- Declared raster scale/offset of a band asset: asset-level ``raster:scale``/``raster:offset`` (raster
  extension v2, STAC 1.1: CDSE), else the same keys in its single ``bands`` entry, else
  ``raster:bands[0].scale``/``offset`` (v1: Earth Search); a missing half of a declared pair takes the
  extension's default (scale 1, offset 0). In DN: offset / scale (−0.1 / 0.0001 → −1000).
- Time: ``datetime``, else ``start_datetime``, as naive UTC.
- Tile: ``s2:mgrs_tile``; else ``mgrs:utm_zone`` + ``mgrs:latitude_band`` + ``mgrs:grid_square``; else
  the same three ``sentinel:*`` properties; else ``grid:code`` ``MGRS-33UWP``; else the ``_T33UWP_`` part
  of ``sentinel:product_id``/``s2:product_uri``/the item id; else an Earth Search id ``S2A_28QCH_…``
  (the real Earth Search v0 item has no ``sentinel:utm_zone``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pystac

from cropstar.data.bands import BASELINE_IN_ID, RESOLUTION, canonical_band
from cropstar.errors import DataError

#: Properties that hold the processing baseline, most authoritative first.
BASELINE_PROPERTIES = ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline")
#: Properties whose product / granule / datastrip id carries the baseline as ``_N0509_`` or ``_N05.09``.
PRODUCT_ID_PROPERTIES = (
    "sentinel:product_id",
    "s2:product_uri",
    "s2:granule_id",
    "s2:tile_id",
    "s2:datastrip_id",
)
#: Properties saying the provider already added the BOA offset into the pixels (Earth Search).
OFFSET_APPLIED_PROPERTIES = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
#: Asset roles that are never a band.
IGNORED_ROLES = frozenset({"metadata", "thumbnail", "overview", "visual", "tiles"})
#: Earth Search's original-JP2 twin of each COG asset (``red-jp2`` …).
TWIN_SUFFIX = "-jp2"

_BASELINE_FORM = re.compile(r"\d{2}\.\d{2}")
_TILE_IN_ID = re.compile(r"_T(\d{2}[C-X][A-Z]{2})(?=_|$)")
_EARTH_SEARCH_ID = re.compile(r"^S2[A-D]_T?(\d{1,2}[C-X][A-Z]{2})_")
_LEVEL_1_TOKEN = re.compile(r"(?i)(?<![a-z0-9])(?:msi)?l1[abc](?![a-z0-9])")
_RESOLUTION_SUFFIX = re.compile(r"[-_](\d{2,3})m$")


@dataclass(frozen=True)
class BandAsset:
    """The asset an item gives one band from, its resolution (m) and the raster scale/offset it declares
    (reflectance = DN · scale + offset; both None where it declares none)."""

    key: str
    asset: pystac.Asset
    resolution: float | None
    declared_scale: float | None = None
    declared_offset: float | None = None

    @property
    def declared_dn_offset(self) -> float | None:
        """The declared offset in DN, ``offset / scale`` (−0.1 / 0.0001 → −1000); None where none."""
        if self.declared_offset is None:
            return None
        return round(self.declared_offset / (self.declared_scale or 1.0), 6)


@dataclass(frozen=True)
class Baseline:
    """A processing baseline (``"05.09"``) and where in the item it was found."""

    value: str
    found_by: str


@dataclass(frozen=True)
class CatalogueItem:
    """A Sentinel-2 L2A STAC item read by :func:`read_catalogue_item`."""

    item_id: str
    time: pd.Timestamp
    tile: str | None
    bands: dict[str, BandAsset]  # canonical band (B01 … B12, B8A, SCL) → its asset
    baselines: tuple[Baseline, ...]  # every baseline the item states, the one used first
    offset_applied: tuple[str, bool] | None  # (property, value) of an offset-already-applied flag

    @property
    def baseline(self) -> Baseline | None:
        return self.baselines[0] if self.baselines else None


def read_catalogue_item(item: pystac.Item) -> CatalogueItem:
    """The band assets, time, tile, baselines and offset flag of a Sentinel-2 L2A item (module rules);
    DataError naming the item where it is not Sentinel-2 L2A or its assets are ambiguous."""
    reason = _not_sentinel2_l2a(item)
    if reason is not None:
        raise DataError(
            f"STAC item {item.id} (collection {item.collection_id}) is not a Sentinel-2 L2A product: its "
            f"{reason}; select the Sentinel-2 L2A items first (e.g. search the sentinel-2-l2a collection)"
        )
    return CatalogueItem(
        item_id=item.id,
        time=item_time(item),
        tile=item_tile(item),
        bands=band_assets(item),
        baselines=item_baselines(item),
        offset_applied=_offset_applied(item),
    )


def _not_sentinel2_l2a(item: pystac.Item) -> str | None:
    """What says the item is not Sentinel-2 L2A, or None where nothing does."""
    props = item.properties
    for key in ("platform", "constellation"):
        value = props.get(key)
        if value and not re.match(r"(?i)sentinel[-_ ]?2", str(value)):
            return f"{key} is {value!r}"
    for key in ("s2:product_type", "product:type"):
        value = props.get(key)
        if value and not str(value).upper().startswith("S2MSI2A"):
            return f"{key} is {value!r}"
    level = props.get("processing:level")
    if level and str(level).upper() not in ("L2", "L2A"):
        return f"processing:level is {level!r}"
    named = {key: props.get(key) for key in ("sentinel:product_id", "s2:product_uri")}
    named.update(collection=item.collection_id, id=item.id)
    for key, value in named.items():
        if value and _LEVEL_1_TOKEN.search(str(value)):
            return f"{key} is {value!r}"
    return None


# ---------------------------------------------------------------------------------------------- bands


def band_assets(item: pystac.Item) -> dict[str, BandAsset]:
    """Canonical band → the asset to read it from (module rules: ignored assets, finest resolution)."""
    options: dict[str, list[BandAsset]] = {}
    for key, asset in item.assets.items():
        band = _band_of(key, asset, item.id)
        if band is not None:
            scale, offset = _declared_scale_offset(asset)
            options.setdefault(band, []).append(BandAsset(key, asset, _resolution(key, asset), scale, offset))
    return {band: _finest(band, found, item.id) for band, found in sorted(options.items())}


def _band_of(key: str, asset: pystac.Asset, item_id: str) -> str | None:
    if key.lower().endswith(TWIN_SUFFIX) or IGNORED_ROLES & set(asset.roles or ()):
        return None
    by_key = _canonical_or_none(key)
    bands = _asset_bands(asset)
    name = bands[0].get("name") if len(bands) == 1 else None
    by_name = _canonical_or_none(name) if isinstance(name, str) else None
    if by_key is not None and by_name is not None and by_key != by_name:
        raise DataError(
            f"STAC item {item_id}: asset {key!r} names band {by_key} but its band entry says {name!r} "
            f"({by_name})"
        )
    return by_key or by_name


def _canonical_or_none(name: str) -> str | None:
    try:
        return canonical_band(name)
    except DataError:
        return None


def _asset_bands(asset: pystac.Asset) -> list[dict[str, Any]]:
    bands = asset.extra_fields.get("bands") or asset.extra_fields.get("eo:bands") or []
    return [b for b in bands if isinstance(b, dict)]


def _resolution(key: str, asset: pystac.Asset) -> float | None:
    fields = asset.extra_fields
    if isinstance(fields.get("gsd"), (int, float)):
        return float(fields["gsd"])
    transform = fields.get("proj:transform")
    if isinstance(transform, list) and transform and isinstance(transform[0], (int, float)):
        return abs(float(transform[0]))
    first_band = (fields.get("raster:bands") or [{}])[0]
    if isinstance(first_band, dict) and isinstance(first_band.get("spatial_resolution"), (int, float)):
        return float(first_band["spatial_resolution"])
    suffix = _RESOLUTION_SUFFIX.search(key)
    return float(suffix.group(1)) if suffix else None


def _finest(band: str, found: list[BandAsset], item_id: str) -> BandAsset:
    native = float(RESOLUTION.get(band, 20))  # SCL: 20 m

    def rank(option: BandAsset) -> tuple[bool, float]:
        resolution = option.resolution if option.resolution is not None else native
        upsampled = "sampling:upsampled" in (option.asset.roles or ()) or resolution < native
        return upsampled, resolution

    ordered = sorted(found, key=rank)
    if len(ordered) > 1 and rank(ordered[0]) == rank(ordered[1]):
        raise DataError(
            f"STAC item {item_id}: assets {ordered[0].key!r} and {ordered[1].key!r} both give band {band} "
            f"at {rank(ordered[0])[1]:g} m"
        )
    return ordered[0]


def _declared_scale_offset(asset: pystac.Asset) -> tuple[float | None, float | None]:
    """(scale, offset) the asset declares: raster v2 on the asset or its single band, else raster v1."""
    bands = _asset_bands(asset)
    sources: list[tuple[dict[str, Any], str, str]] = [(asset.extra_fields, "raster:scale", "raster:offset")]
    if len(bands) == 1:
        sources.append((bands[0], "raster:scale", "raster:offset"))
    raster_bands = asset.extra_fields.get("raster:bands") or []
    if raster_bands and isinstance(raster_bands[0], dict):
        sources.append((raster_bands[0], "scale", "offset"))
    for fields, scale_key, offset_key in sources:
        scale, offset = fields.get(scale_key), fields.get(offset_key)
        if scale is not None or offset is not None:
            return float(1.0 if scale is None else scale), float(0.0 if offset is None else offset)
    return None, None


# ---------------------------------------------------------------------------------------------- baseline


def item_baselines(item: pystac.Item) -> tuple[Baseline, ...]:
    """Every processing baseline the item states, in the module's order (the first is the one used)."""
    props = item.properties
    found: list[Baseline] = []
    for key in BASELINE_PROPERTIES:
        value = props.get(key)
        if value is None:
            continue
        text = f"{float(value):05.2f}" if isinstance(value, (int, float)) else str(value).strip()
        if key == "processing:version" and not _BASELINE_FORM.fullmatch(text):
            continue  # a software version, not an ESA processing baseline
        found.append(Baseline(text, f"item property {key}"))
    named = [(key, props.get(key)) for key in PRODUCT_ID_PROPERTIES] + [("item id", item.id)]
    for key, value in named:
        match = BASELINE_IN_ID.search(str(value)) if value else None
        if match:
            where = key if key == "item id" else f"item property {key}"
            found.append(Baseline(f"{match.group(1)}.{match.group(2)}", f"{match.group(0)[1:]} in {where}"))
    return tuple(found)


def _offset_applied(item: pystac.Item) -> tuple[str, bool] | None:
    for key in OFFSET_APPLIED_PROPERTIES:
        value = item.properties.get(key)
        if isinstance(value, bool):
            return key, value
    return None


# ---------------------------------------------------------------------------------------------- time, tile


def item_time(item: pystac.Item) -> pd.Timestamp:
    """The item's ``datetime`` (else ``start_datetime``) as naive UTC; DataError naming the item."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise DataError(f"STAC item {item.id} has no datetime")
    stamp = pd.Timestamp(when)
    return stamp.tz_convert(None) if stamp.tzinfo is not None else stamp


def item_tile(item: pystac.Item) -> str | None:
    """The item's MGRS tile (``33UWP``) by the module's rules, None where it states none."""
    props = item.properties
    if props.get("s2:mgrs_tile"):
        return _tile_name(str(props["s2:mgrs_tile"]))
    for prefix in ("mgrs", "sentinel"):
        parts = [props.get(f"{prefix}:{name}") for name in ("utm_zone", "latitude_band", "grid_square")]
        if all(part is not None for part in parts):
            return _tile_name(f"{int(parts[0]):02d}{parts[1]}{parts[2]}")
    grid = str(props.get("grid:code") or "")
    if grid.upper().startswith("MGRS-"):
        return _tile_name(grid[5:])
    for value in (props.get("sentinel:product_id"), props.get("s2:product_uri"), item.id):
        match = _TILE_IN_ID.search(str(value)) if value else None
        if match:
            return match.group(1)
    match = _EARTH_SEARCH_ID.match(item.id)
    return _tile_name(match.group(1)) if match else None


def _tile_name(text: str) -> str:
    name = text.strip().upper().removeprefix("T")
    return f"0{name}" if len(name) == 4 else name
