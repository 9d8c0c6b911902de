"""Read Sentinel-2 L2A acquisitions listed in STAC (a ``.json`` ItemCollection, Catalog, Collection or Item
file, local or http(s); or a ``pystac`` ItemCollection / Catalog / Item) as a lazy cube, through the
tiff-folder reader's windowed rasterio reads (no odc-stac).

Rules:

- Items: every item of an ItemCollection; every item below a Catalog/Collection (recursively). What each
  item says (its band assets, time, tile, baselines, declared raster offsets) is read by
  :mod:`cropstar.data.sources.stac_catalogues`, whose docstring gives the per-catalogue rules (Earth
  Search v0/v1, Planetary Computer, CDSE). An item that is not Sentinel-2 L2A (Landsat, Sentinel-1,
  L1C, as in a mixed search response) raises DataError naming it: select the L2A items first.
- Bands: one asset per band (the finest; ``*-jp2`` twins, AOT, WVP, visual … ignored). An item lacking a
  requested band raises DataError naming the band and the item; two items with the same time and tile
  (e.g. ``sentinel-2-l2a`` and ``sentinel-2-c1-l2a`` of one scene) raise DataError naming both.
- Hrefs: relative hrefs are resolved against the item's own href, else the STAC JSON file's folder (for
  an in-memory ItemCollection without hrefs: the working directory); ``http(s)://``, ``s3://`` and
  ``/vsi…`` hrefs are handed to rasterio/GDAL unchanged (``/vsicurl``, ``/vsis3``).
- BOA offset of an item (DN → reflectance ``(DN + offset) / 10000``, DN 0 = no data), one rule:

  1. a ``boa_offset=`` or ``processing_baseline=`` argument overrides everything (no checks, no warnings);
  2. else the processing baseline decides, as ESA defines it (−1000 DN from 04.00 on, never the date),
     taken from the first of ``s2:processing_baseline``, ``processing:version``,
     ``sentinel:processing_baseline``, the ``_NXXYY_`` part of ``sentinel:product_id`` (Earth Search v0) /
     ``s2:product_uri`` / granule ids, the item id; none → DataError naming the item;
  3. except where the provider states that it already added that offset into the pixels
     (``earthsearch:boa_offset_applied: true``, Earth Search ``sentinel-2-l2a``: its COGs were harmonised
     to the pre-04.00 scale, so the offset left to apply is 0). Earth Search's maintainers call this flag
     the truth where it contradicts the assets' ``raster:bands`` offset; it describes the COGs only,
     which is why the ``*-jp2`` twins (original DNs) are never read;
  4. declared raster scale/offset of the band assets (``raster:bands`` v1, asset ``raster:scale``/
     ``raster:offset`` v2; in DN ``offset / scale``) are cross-checked, never used: where they differ from
     the decided offset (or the scale is not 1/10000) a :class:`~cropstar.errors.MetadataConflictWarning`
     names the item, the assets and both values; so does a second baseline in the item that gives
     another offset than the one used. SCL, AOT and WVP are not reflectance bands and are not checked.

  Known limit: Earth Search items whose flag is ``false`` although their COGs were harmonised cannot be
  told apart from the metadata; pass ``boa_offset=`` where the pixels show it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pystac

from cropstar.data.bands import QUANTIFICATION, SCL
from cropstar.data.bands import boa_offset as boa_offset_of_baseline
from cropstar.data.harmonise import OffsetDecision, decide_boa_offset
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.data.sources.stac_catalogues import (
    BASELINE_PROPERTIES,
    CatalogueItem,
    read_catalogue_item,
)
from cropstar.data.sources.tiff_folder import BandFile, open_band_files
from cropstar.errors import DataError, InputError, MetadataConflictWarning

REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")


def is_stac_object(source: Any) -> bool:
    return isinstance(source, (pystac.ItemCollection, pystac.Catalog, pystac.Item))


def open_stac(source: Any, request: CubeRequest) -> SourceCube:
    """The cube of the Sentinel-2 L2A items of a STAC source (see the module docstring)."""
    items, base, name = _items(source)
    if not items:
        raise DataError(f"no STAC items in {name}")
    files: list[BandFile] = []
    scenes: dict[str, CatalogueItem] = {}
    decisions: dict[str, OffsetDecision] = {}
    seen: dict[tuple[pd.Timestamp, str | None], str] = {}
    for item in items:
        scene = read_catalogue_item(item)
        time, tile = scene.time, scene.tile
        if (time, tile) in seen:
            raise DataError(
                f"STAC items {seen[time, tile]} and {item.id} in {name} share the acquisition "
                f"{time.isoformat()} and tile {tile}"
            )
        seen[time, tile] = item.id
        scenes[item.id] = scene
        item_files = [
            BandFile(_href(found.asset, item, base), time, band, tile, found.resolution, "stac", item.id)
            for band, found in scene.bands.items()
        ]
        missing = [b for b in request.bands if b not in scene.bands]
        if (
            missing
            and request.in_time([time])[0]
            and (request.tile is None or _same_tile(tile, request.tile))
        ):
            raise DataError(
                f"band {missing[0]} missing in STAC item {item.id} of {name} "
                f"(its band assets: {', '.join(sorted(scene.bands)) or 'none'})"
            )
        files.extend(item_files)

    def decide(bf: BandFile, tags: dict[str, str]) -> OffsetDecision:  # item properties, not file tags
        assert bf.product is not None
        if bf.product not in decisions:
            decisions[bf.product] = decide_item_offset(
                scenes[bf.product],
                boa_offset=request.boa_offset,
                processing_baseline=request.processing_baseline,
                where=f"STAC item {bf.product} in {name}",
            )
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


def _same_tile(tile: str | None, wanted: str) -> bool:
    return tile == wanted.upper().removeprefix("T")


def decide_item_offset(
    scene: CatalogueItem,
    *,
    boa_offset: float | None = None,
    processing_baseline: str | float | None = None,
    where: str | None = None,
) -> OffsetDecision:
    """The BOA offset (DN) of one item by the module's rule: argument, else the baseline, except an
    offset the provider says is already in the pixels; declared raster offsets that differ, and baselines
    that disagree, are warned about (MetadataConflictWarning) and not used."""
    where = where or f"STAC item {scene.item_id}"
    if boa_offset is not None or processing_baseline is not None:
        return decide_boa_offset(boa_offset=boa_offset, processing_baseline=processing_baseline, where=where)
    baseline = scene.baseline
    if scene.offset_applied is not None and scene.offset_applied[1]:
        flag = scene.offset_applied[0]
        decision = OffsetDecision(0.0, baseline.value if baseline else None, f"item property {flag}")
        reason = f"{flag} is true: the offset of the baseline is already in the pixels"
    elif baseline is None:
        raise DataError(
            f"unknown processing baseline for {where}: no {', '.join(BASELINE_PROPERTIES)} property and "
            "no _NXXYY_ in its product id or id; pass processing_baseline= or boa_offset= (the L2A BOA "
            "offset is decided from the baseline, never from the date)"
        )
    else:
        decision = decide_boa_offset(found_baseline=baseline.value, found_by=baseline.found_by, where=where)
        reason = f"processing baseline {baseline.value} from {baseline.found_by}"
    if baseline is not None:
        _warn_other_baselines(scene, decision, where)
    _warn_declared_offsets(scene, decision, reason, where)
    return decision


def _warn_other_baselines(scene: CatalogueItem, decision: OffsetDecision, where: str) -> None:
    used = scene.baselines[0]
    for other in scene.baselines[1:]:
        if _offset_or_none(other.value) != _offset_or_none(used.value):
            warnings.warn(
                f"{where}: processing baseline {other.value} ({other.found_by}) gives another BOA offset "
                f"than {used.value} ({used.found_by}); used {decision.boa_offset:g} DN "
                f"({decision.decided_by})",
                MetadataConflictWarning,
                stacklevel=3,
            )


def _offset_or_none(baseline: str) -> float | None:
    try:
        return boa_offset_of_baseline(baseline)
    except DataError:
        return None


def _warn_declared_offsets(scene: CatalogueItem, decision: OffsetDecision, reason: str, where: str) -> None:
    """One warning per declared (offset, scale) that differs from the decision, naming its assets."""
    conflicts: dict[tuple[float, float, float], list[str]] = {}
    for band, found in scene.bands.items():
        dn_offset = found.declared_dn_offset
        if band == SCL or dn_offset is None:
            continue
        assert found.declared_scale is not None and found.declared_offset is not None
        same_offset = math.isclose(dn_offset, decision.boa_offset, abs_tol=1e-3)
        if not same_offset or not math.isclose(found.declared_scale, 1 / QUANTIFICATION, rel_tol=1e-6):
            key = (dn_offset, found.declared_offset, found.declared_scale)
            conflicts.setdefault(key, []).append(found.key)
    for (dn_offset, offset, scale), keys in conflicts.items():
        warnings.warn(
            f"{where}: assets {', '.join(keys)} declare raster offset {offset:g} and scale {scale:g} "
            f"(= {dn_offset:g} DN), but the BOA offset used is "
            f"{decision.boa_offset:g} DN ({reason}); declared raster offsets are checked, never used",
            MetadataConflictWarning,
            stacklevel=3,
        )
