"""Read Sentinel-2 L2A acquisitions listed in STAC (a ``.json`` ItemCollection, Catalog, Collection or Item
file, local or http(s); or a ``pystac`` ItemCollection / Catalog / Item) as a lazy cube, through the
tiff-folder reader's windowed rasterio reads (no odc-stac).

Rules:

- Items: every item of an ItemCollection; every item below a Catalog/Collection (recursively).
- Bands: one asset per band; asset keys go through :func:`cropstar.data.bands.canonical_band`, so
  provider names work (Element84 ``blue``/``nir``/``scl``, Planetary Computer ``B02``/``SCL``,
  ``B02_10m``); keys that are not bands (``visual``, ``aot``, ``thumbnail``, ``blue-jp2`` …) are ignored.
  Where several assets give one band (``B02_10m``, ``B02_20m``) the finest resolution is used.
  An item lacking a requested band raises DataError naming the band and the item.
- Hrefs: relative hrefs are resolved against the item's own href, else the STAC JSON file's folder (for
  an in-memory ItemCollection without hrefs: the working directory); ``http(s)://``, ``s3://`` and
  ``/vsi…`` hrefs are handed to rasterio/GDAL unchanged (``/vsicurl``, ``/vsis3``).
- Time: the item's ``datetime`` (else ``start_datetime``), as naive UTC.
- Tile: ``s2:mgrs_tile``, else ``mgrs:utm_zone`` + ``mgrs:latitude_band`` + ``mgrs:grid_square``.
- BOA offset of an item, first known of: the ``boa_offset=`` / ``processing_baseline=`` argument;
  ``earthsearch:boa_offset_applied: true`` (Element84 earth-search v1 has already added the offset to
  the DN: offset 0); the offset of the processing baseline in ``s2:processing_baseline`` (Element84,
  Planetary Computer), else ``processing:version`` (processing extension). None → DataError naming the
  item. The assets' ``raster:bands`` scale/offset are not read.
- DN → reflectance as everywhere: ``(DN + offset) / 10000``, DN 0 = no data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pystac

from cropstar.data.bands import canonical_band
from cropstar.data.harmonise import OffsetDecision, decide_boa_offset
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.data.sources.tiff_folder import BandFile, open_band_files
from cropstar.errors import DataError, InputError

BASELINE_PROPERTIES = ("s2:processing_baseline", "processing:version")
OFFSET_APPLIED_PROPERTY = "earthsearch:boa_offset_applied"
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")


def is_stac_object(source: Any) -> bool:
    return isinstance(source, (pystac.ItemCollection, pystac.Catalog, pystac.Item))


def open_stac(source: Any, request: CubeRequest) -> SourceCube:
    """The cube of the Sentinel-2 L2A items of a STAC source (see the module docstring)."""
    items, base, name = _items(source)
    if not items:
        raise DataError(f"no STAC items in {name}")
    files: list[BandFile] = []
    by_id = {item.id: item for item in items}
    decisions: dict[str, OffsetDecision] = {}
    seen: dict[tuple[pd.Timestamp, str | None], str] = {}
    for item in items:
        time = _time(item)
        tile = _tile(item)
        if (time, tile) in seen:
            raise DataError(
                f"STAC items {seen[time, tile]} and {item.id} in {name} share the acquisition "
                f"{time.isoformat()} and tile {tile}"
            )
        seen[time, tile] = item.id
        item_files = []
        for key, asset in item.assets.items():
            try:
                band = canonical_band(key)
            except DataError:
                continue
            item_files.append(BandFile(_href(asset, item, base), time, band, tile, None, "stac", item.id))
        have = {f.band for f in item_files}
        missing = [b for b in request.bands if b not in have]
        if (
            missing
            and request.in_time([time])[0]
            and (request.tile is None or _same_tile(tile, request.tile))
        ):
            raise DataError(
                f"band {missing[0]} missing in STAC item {item.id} of {name} "
                f"(its band assets: {', '.join(sorted(have)) or 'none'})"
            )
        files.extend(item_files)

    def decide(bf: BandFile, tags: dict[str, str]) -> OffsetDecision:  # item properties, not file tags
        assert bf.product is not None
        if bf.product not in decisions:
            decisions[bf.product] = _decide(by_id[bf.product], request, name)
        return decisions[bf.product]

    return open_band_files(files, request, name, decide, kind="stac")


def _items(source: Any) -> tuple[list[pystac.Item], str | None, str]:
    """The items, the folder/URL relative hrefs are resolved against, and a name for messages."""
    if isinstance(source, pystac.ItemCollection):
        return list(source), None, "the STAC ItemCollection"
    if isinstance(source, pystac.Item):
        return [source], None, f"STAC item {source.id}"
    if isinstance(source, pystac.Catalog):
        return list(source.get_items(recursive=True)), None, f"STAC catalog {source.id}"
    text = str(source)
    remote = "://" in text
    href = text if remote else str(Path(text).expanduser().resolve())
    try:
        if remote:
            data = pystac.StacIO.default().read_json(href)
        else:
            data = json.loads(Path(href).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read STAC file {text}: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{text} is not a STAC JSON object")
    base = href.rsplit("/", 1)[0] if remote else str(Path(href).parent)
    try:
        kind = data.get("type")
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(data)), base, text
        if kind == "Feature":
            return [pystac.Item.from_dict(data)], base, text
        if kind in ("Catalog", "Collection"):
            catalog = pystac.read_file(href)
            assert isinstance(catalog, pystac.Catalog)
            return list(catalog.get_items(recursive=True)), base, text
    except (pystac.STACError, KeyError, ValueError, TypeError) as error:
        raise InputError(f"cannot read STAC file {text}: {error}") from None
    raise InputError(f"{text} is not a STAC ItemCollection, Catalog, Collection or Item (type {kind!r})")


def _href(asset: pystac.Asset, item: pystac.Item, base: str | None) -> Path | str:
    href = asset.get_absolute_href() or asset.href
    if href.startswith(REMOTE_PREFIXES):
        return href
    href = href.removeprefix("file://")
    path = Path(href).expanduser()
    if path.is_absolute():
        return path
    if base is not None and "://" in base:
        return f"{base}/{href}"
    return (Path(base) if base is not None else Path.cwd()) / path


def _time(item: pystac.Item) -> pd.Timestamp:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise DataError(f"STAC item {item.id} has no datetime")
    stamp = pd.Timestamp(when)
    return stamp.tz_convert(None) if stamp.tzinfo is not None else stamp


def _tile(item: pystac.Item) -> str | None:
    props = item.properties
    tile = props.get("s2:mgrs_tile")
    if tile is None and "mgrs:utm_zone" in props:
        tile = f"{int(props['mgrs:utm_zone']):02d}{props.get('mgrs:latitude_band', '')}{props.get('mgrs:grid_square', '')}"
    return None if tile is None else str(tile).upper().removeprefix("T")


def _same_tile(tile: str | None, wanted: str) -> bool:
    return tile == wanted.upper().removeprefix("T")


def _decide(item: pystac.Item, request: CubeRequest, name: str) -> OffsetDecision:
    props = item.properties
    where = f"STAC item {item.id} in {name}"
    baseline, found_by = None, ""
    for key in BASELINE_PROPERTIES:
        if props.get(key) is not None:
            baseline, found_by = str(props[key]), f"item property {key}"
            break
    found_offset = None
    if props.get(OFFSET_APPLIED_PROPERTY) is True:
        found_offset, found_by = 0.0, f"item property {OFFSET_APPLIED_PROPERTY}"
    overridden = request.boa_offset is not None or request.processing_baseline is not None
    if not overridden and found_offset is None and baseline is None:
        raise DataError(
            f"unknown processing baseline for {where}: no {' or '.join(BASELINE_PROPERTIES)} property; "
            "pass processing_baseline= or boa_offset= (the L2A BOA offset is decided from the "
            "baseline, never from the date)"
        )
    return decide_boa_offset(
        boa_offset=request.boa_offset,
        processing_baseline=request.processing_baseline,
        found_offset=found_offset,
        found_baseline=baseline,
        found_by=found_by,
        where=where,
    )
