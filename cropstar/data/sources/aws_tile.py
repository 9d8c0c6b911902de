"""Read Sentinel-2 L2A tiles in the AWS ``sentinel-s2-l2a`` bucket layout (Sinergise): one folder per tile and
acquisition (``tiles/{zone}/{latitude band}/{square}/{yyyy}/{m}/{d}/{n}/``), or a folder holding several.

A tile folder holds (recognised by the first two):

- ``metadata.xml``: the tile metadata, ESA's ``MTD_TL.xml`` (:func:`cropstar.data.sources.safe.read_tile_metadata`):
  TILE_ID (the processing baseline only as its ``_NXX.YY`` suffix), EPSG, the 10/20/60 m grids, SENSING_TIME
  (the acquisition's time in the cube);
- ``tileInfo.json``: the tile index (``utmZone`` + ``latitudeBand`` + ``gridSquare``, ``tileOrigin``,
  ``productName``, ``datastrip.id``); its tile and origin must agree with ``metadata.xml`` (DataError naming
  both files where they do not);
- band files, named by the band alone: ``B04.jp2`` or ``R10m/B04.jp2``, ``R20m/SCL.jp2`` … (``.jp2`` or
  ``.tif``; other names and the ``qi/`` and ``aux/`` folders are ignored); where a band comes at several
  resolutions the finest is used, as in the SAFE reader;
- where present, ``product_metadata.xml`` (the product's ``MTD_MSIL2A.xml``, read by
  :func:`cropstar.data.sources.safe.read_mtd`) and ``productInfo.json``.

The BOA offset of a tile: the ``boa_offset=`` / ``processing_baseline=`` argument, else the
``BOA_ADD_OFFSET`` of ``product_metadata.xml`` for that band, else the offset of the processing baseline
(:func:`cropstar.data.bands.boa_offset`): ``product_metadata.xml``'s PROCESSING_BASELINE, else the
``_NXX.YY`` suffix of TILE_ID (or DATASTRIP_ID) in ``metadata.xml``, else the ``_NXXYY_`` part of
``tileInfo.json``'s productName. Where ``product_metadata.xml`` is absent (the tile metadata never holds
offsets) the offset therefore comes from the baseline in the id suffix. The baseline decides, never the
date: a 2020 acquisition reprocessed at baseline 05.00 gets −1000. A product_metadata.xml whose baseline
differs from the tile id's raises DataError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropstar.data.bands import band_or_none, baseline_in_id
from cropstar.data.harmonise import OffsetDecision, decide_boa_offset
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.data.sources.safe import TileMetadata, read_mtd, read_tile_metadata
from cropstar.data.sources.tiff_folder import RASTER_SUFFIXES, BandFile, ProductInfo, open_band_files
from cropstar.errors import DataError, InputError

TILE_METADATA_FILE = "metadata.xml"
TILE_INFO_FILE = "tileInfo.json"
PRODUCT_METADATA_FILE = "product_metadata.xml"
#: The resolution folders of a tile folder (``R10m``, ``R20m``, ``R60m``).
RESOLUTION_FOLDER = re.compile(r"^R(\d+)m$")


@dataclass(frozen=True)
class AwsTile:
    """One tile folder of the bucket layout: its metadata and its offset-deciding product metadata."""

    folder: Path
    metadata: TileMetadata
    product_name: str | None  # tileInfo.json productName
    product: ProductInfo | None  # product_metadata.xml where present
    processing_baseline: str | None  # as decided by the rules of the module docstring
    found_by: str  # the file the baseline came from


def is_aws_tile(path: Path) -> bool:
    """True for a tile folder of the bucket layout (``metadata.xml`` beside ``tileInfo.json``) or a folder
    with such tile folders below it."""
    if not path.is_dir():
        return False
    return _is_tile_folder(path) or any(_is_tile_folder(info.parent) for info in path.rglob(TILE_INFO_FILE))


def _is_tile_folder(path: Path) -> bool:
    return (path / TILE_INFO_FILE).is_file() and (path / TILE_METADATA_FILE).is_file()


def read_aws_tile(folder: Path) -> AwsTile:
    """The metadata of one tile folder, checked for agreement between ``metadata.xml`` and
    ``tileInfo.json`` (tile, origin) and ``product_metadata.xml`` (baseline)."""
    metadata = read_tile_metadata(folder / TILE_METADATA_FILE)
    info_path = folder / TILE_INFO_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {info_path}: {error}") from None
    _check_tile_info(info, metadata, info_path)
    product_name = info.get("productName")
    product_path = folder / PRODUCT_METADATA_FILE
    product = read_mtd(product_path) if product_path.is_file() else None
    if product is not None:
        if (
            product.processing_baseline
            and metadata.processing_baseline
            and (float(product.processing_baseline) != float(metadata.processing_baseline))
        ):
            raise DataError(
                f"{product_path} says processing baseline {product.processing_baseline} but the TILE_ID "
                f"{metadata.tile_id} of {metadata.found_by} says {metadata.processing_baseline}"
            )
        product = ProductInfo(product_name or product.name, product.processing_baseline,
                              product.boa_offsets, product.found_by)  # fmt: skip
    baseline, found_by = _baseline(product, metadata, product_name, info_path)
    return AwsTile(folder, metadata, product_name, product, baseline, found_by)


def _check_tile_info(info: dict[str, Any], metadata: TileMetadata, info_path: Path) -> None:
    """DataError naming both files where tileInfo.json's tile or origin differs from metadata.xml's."""
    try:
        tile = f"{int(info['utmZone']):02d}{info['latitudeBand']}{info['gridSquare']}".upper()
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{info_path}: no utmZone, latitudeBand and gridSquare") from None
    if metadata.tile is not None and tile != metadata.tile:
        raise DataError(
            f"{info_path} says tile {tile} but the TILE_ID {metadata.tile_id} of {metadata.found_by} "
            f"says {metadata.tile}"
        )
    origin = (info.get("tileOrigin") or {}).get("coordinates")
    grid = metadata.grids[min(metadata.grids)]
    if origin is not None and (
        abs(float(origin[0]) - grid.transform.c) > 1e-3 or abs(float(origin[1]) - grid.transform.f) > 1e-3
    ):
        raise DataError(
            f"{info_path}: tileOrigin {tuple(origin)} differs from ULX/ULY "
            f"({grid.transform.c}, {grid.transform.f}) of {metadata.found_by}"
        )


def _baseline(
    product: ProductInfo | None, metadata: TileMetadata, product_name: str | None, info_path: Path
) -> tuple[str | None, str]:
    if product is not None and product.processing_baseline is not None:
        return product.processing_baseline, product.found_by
    if metadata.processing_baseline is not None:
        return metadata.processing_baseline, f"{metadata.found_by} (TILE_ID suffix)"
    in_name = baseline_in_id(product_name)
    if in_name is not None:
        return in_name, f"{info_path} (productName)"
    return None, metadata.found_by


def scan_aws_tiles(folder: Path) -> tuple[list[BandFile], dict[Path, AwsTile]]:
    """The band files of every tile folder at or below ``folder``, and each file's tile."""
    tile_folders = [folder] if _is_tile_folder(folder) else sorted(
        info.parent for info in folder.rglob(TILE_INFO_FILE) if _is_tile_folder(info.parent)
    )  # fmt: skip
    files: list[BandFile] = []
    tile_of: dict[Path, AwsTile] = {}
    for tile_folder in tile_folders:
        tile = read_aws_tile(tile_folder)
        for path, resolution in _band_paths(tile_folder):
            band = band_or_none(path.stem)
            if band is None:
                continue
            product = tile.product_name or tile.metadata.tile_id
            files.append(
                BandFile(
                    path, tile.metadata.sensing_time, band, tile.metadata.tile, resolution, "aws", product
                )
            )
            tile_of[path] = tile
    return files, tile_of


def _band_paths(tile_folder: Path) -> list[tuple[Path, float | None]]:
    """Raster files directly in the tile folder (resolution None: from the header) and in its R{res}m
    folders."""
    found: list[tuple[Path, float | None]] = []
    for child in sorted(tile_folder.iterdir()):
        if child.is_file() and child.suffix.lower() in RASTER_SUFFIXES:
            found.append((child, None))
        elif child.is_dir() and (match := RESOLUTION_FOLDER.match(child.name)):
            found.extend(
                (path, float(match.group(1)))
                for path in sorted(child.iterdir())
                if path.is_file() and path.suffix.lower() in RASTER_SUFFIXES and not path.name.startswith(".")
            )
    return found



def open_aws_tile(folder: Path, request: CubeRequest) -> SourceCube:
    """The cube of the tile folder(s) at or below ``folder``, each tile's BOA offset decided by the rules of
    the module docstring."""
    files, tile_of = scan_aws_tiles(folder)
    if not files:
        raise InputError(
            f"no band files in the AWS tile folder(s) {folder}: expected B04.jp2, R10m/B04.jp2, R20m/SCL.jp2 … "
            f"beside {TILE_METADATA_FILE} and {TILE_INFO_FILE}"
        )

    def decide(bf: BandFile, tags: dict[str, str]) -> OffsetDecision:
        tile = tile_of[bf.path]
        found_offset = tile.product.boa_offsets.get(bf.band) if tile.product is not None else None
        return decide_boa_offset(
            boa_offset=request.boa_offset,
            processing_baseline=request.processing_baseline,
            found_offset=found_offset,
            found_baseline=tile.processing_baseline,
            found_by=tile.product.found_by if found_offset is not None and tile.product else tile.found_by,
            where=f"{tile.folder} (no {PRODUCT_METADATA_FILE} and no _NXX.YY suffix in TILE_ID)",
        )

    return open_band_files(files, request, folder, decide, kind="aws_tile")
