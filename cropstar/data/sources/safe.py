"""Read Sentinel-2 L2A SAFE products (one ``….SAFE`` folder, or a folder holding several, one per date).

The band files are found and read by the tiff-folder reader (:mod:`cropstar.data.sources.tiff_folder`):
``GRANULE/*/IMG_DATA/R10m|R20m|R60m/T{tile}_{YYYYMMDDTHHMMSS}_{band}_{res}m.jp2``; where a band comes at
several resolutions the finest is used (B02 from R10m, B11 and SCL from R20m). This module adds the
per-product metadata: each band file belongs to the nearest folder above it holding ``MTD_MSIL2A.xml``
(the product root), from which the BOA offset is decided.

``MTD_MSIL2A.xml`` as ESA writes it (PSD 14.x; element names are matched without their namespace):

- ``General_Info/Product_Info/PROCESSING_BASELINE`` (``05.09``);
- ``General_Info/Product_Image_Characteristics/QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE``
  (10000; any other value raises DataError: reflectance is DN / 10000 throughout cropstar);
- ``…/Product_Image_Characteristics/BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET band_id="i"`` (−1000 from
  baseline 04.00 on; absent before). ``band_id`` indexes the product's spectral band list, read from
  ``Spectral_Information_List/Spectral_Information bandId="i" physicalBand="B1"`` where present, else the
  ESA order of the 13 L1C bands B01 … B08, B8A, B09, B10, B11, B12 (B10 keeps index 10 in L2A
  metadata though L2A has no B10 image).

The offset of each product: the ``boa_offset=`` / ``processing_baseline=`` argument, else the product's
explicit BOA_ADD_OFFSET for that band, else the offset of its PROCESSING_BASELINE
(:func:`cropstar.data.bands.boa_offset`); none of these → DataError naming the MTD file. The tile
metadata never carries the offset; a band file without an ``MTD_MSIL2A.xml`` above it takes the baseline
of the nearest ``MTD_TL.xml`` above it (its TILE_ID suffix), else falls back to the tiff-folder rules
(file tags, metadata.json). Zipped SAFE products are not read: unzip them first.

``GRANULE/*/MTD_TL.xml`` (the tile metadata; ``metadata.xml`` in the AWS bucket layout,
:mod:`cropstar.data.sources.aws_tile`), read by :func:`read_tile_metadata`:

- ``General_Info/TILE_ID`` (``…_T29UNU_N04.00``): the tile, and the processing baseline as the ``_NXX.YY``
  suffix (else that of ``DATASTRIP_ID``); it holds no BOA offset;
- ``General_Info/SENSING_TIME`` (``2022-10-05T11:56:49.581767Z``; with or without microseconds);
- ``Geometric_Info/Tile_Geocoding/HORIZONTAL_CS_CODE`` (``EPSG:32629``), ``Size resolution="r"``
  (NROWS, NCOLS) and ``Geoposition resolution="r"`` (ULX, ULY: the upper-left *corner* of the grid;
  XDIM, YDIM) for r = 10, 20, 60. The JP2s' GML origin is instead the centre of the upper-left pixel
  (ULX + XDIM/2, ULY + YDIM/2); GDAL/rasterio report the corner, equal to ULX/ULY.

XML parsing keys on element names only: the single- or double-quoted XML declaration, the namespace
prefixes (only ``n1:General_Info`` and its siblings carry one), the indentation and the order of the
``IMAGE_FILE`` and ``Size``/``Geoposition`` entries vary between processing centres and do not matter.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from cropstar.data.bands import QUANTIFICATION, baseline_in_id, canonical_band
from cropstar.data.harmonise import Grid
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.data.sources.tiff_folder import BandFile, ProductInfo, open_tiff_folder, scan_folder
from cropstar.errors import DataError, InputError

MTD_FILE = "MTD_MSIL2A.xml"
TILE_MTD_FILE = "MTD_TL.xml"
#: The tile in a TILE_ID (``…_T29UNU_N04.00``).
TILE_IN_ID = re.compile(r"_T(\d{2}[A-Z]{3})(?=_|$)")
#: ESA's spectral band order (``bandId`` 0–12), used when the MTD has no Spectral_Information_List.
ESA_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def is_safe(path: Path) -> bool:
    """True for a SAFE product folder or a folder whose sub-folders are SAFE products."""
    if not path.is_dir():
        return False
    if _is_product(path):
        return True
    return any(_is_product(child) for child in path.iterdir() if child.is_dir())


def _is_product(path: Path) -> bool:
    return path.suffix.upper() == ".SAFE" or (path / "manifest.safe").exists() or (path / MTD_FILE).exists()


def open_safe(folder: Path, request: CubeRequest) -> SourceCube:
    """The cube of the SAFE product(s) in ``folder``, each product's BOA offset from its MTD_MSIL2A.xml."""
    if _is_product(folder) and not (folder / MTD_FILE).is_file() and not scan_folder(folder):
        raise InputError(
            f"{folder} is not a readable Sentinel-2 L2A SAFE product: no {MTD_FILE} and no "
            "GRANULE/*/IMG_DATA band files (zipped, L1C and other non-L2A SAFE products are not supported yet)"
        )
    cache: dict[Path, ProductInfo | None] = {}

    def product_info(bf: BandFile) -> ProductInfo | None:
        assert isinstance(bf.path, Path)
        root = _metadata_root(bf.path, folder, MTD_FILE)
        if root is not None:
            if root not in cache:
                cache[root] = read_mtd(root / MTD_FILE)
            return cache[root]
        granule = _metadata_root(bf.path, folder, TILE_MTD_FILE)
        if granule is None:
            return None
        if granule not in cache:
            tile = read_tile_metadata(granule / TILE_MTD_FILE)
            cache[granule] = (
                None
                if tile.processing_baseline is None
                else ProductInfo(tile.tile_id, tile.processing_baseline, {}, tile.found_by)
            )
        return cache[granule]

    return open_tiff_folder(folder, request, product_info=product_info, kind="safe")


def _metadata_root(path: Path, top: Path, name: str) -> Path | None:
    """The nearest folder above ``path`` (up to ``top``) that holds the file ``name``."""
    for parent in path.parents:
        if (parent / name).is_file():
            return parent
        if parent == top or top not in parent.parents:
            return None
    return None


def read_mtd(path: Path) -> ProductInfo:
    """Processing baseline and BOA offsets (by canonical band) of a product's ``MTD_MSIL2A.xml``."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    baseline = _text(root, "PROCESSING_BASELINE")
    quantification = _text(root, "BOA_QUANTIFICATION_VALUE")
    if quantification is not None and float(quantification) != QUANTIFICATION:
        raise DataError(
            f"{path}: BOA_QUANTIFICATION_VALUE {quantification} is not supported "
            f"(expected {QUANTIFICATION:g})"
        )
    order = list(ESA_BAND_ORDER)
    spectral = {
        el.get("bandId"): el.get("physicalBand")
        for el in root.iter()
        if _local(el.tag) == "Spectral_Information"
    }
    if spectral:
        order = [spectral.get(str(i)) or "" for i in range(max(int(k) for k in spectral if k) + 1)]
    offsets: dict[str, float] = {}
    for el in root.iter():
        if _local(el.tag) != "BOA_ADD_OFFSET":
            continue
        try:
            index, value = int(el.get("band_id", "")), float((el.text or "").strip())
            band = _band_key(order[index])
        except (ValueError, IndexError, DataError):
            raise DataError(
                f"{path}: cannot read BOA_ADD_OFFSET band_id={el.get('band_id')!r} value {el.text!r}"
            ) from None
        offsets[band] = value
    product = path.parent.name.removesuffix(".SAFE").removesuffix(".safe")
    return ProductInfo(product, baseline, offsets, str(path))


@dataclass(frozen=True)
class TileMetadata:
    """A granule's tile metadata (``MTD_TL.xml``, AWS ``metadata.xml``): identity, time and pixel grids."""

    tile_id: str  # TILE_ID, e.g. S2A_OPER_MSI_L2A_TL_ATOS_20221005T164454_A038058_T29UNU_N04.00
    tile: str | None  # "29UNU"
    processing_baseline: str | None  # the TILE_ID's (else DATASTRIP_ID's) ``_NXX.YY`` suffix
    datastrip_id: str | None
    crs: CRS
    sensing_time: pd.Timestamp  # UTC, timezone-naive as the cube's times
    grids: dict[int, Grid]  # resolution (m) → grid; transform origin = ULX/ULY, the upper-left corner
    found_by: str  # the metadata file


def read_tile_metadata(path: Path) -> TileMetadata:
    """Tile id, processing baseline (from the ``_NXX.YY`` id suffix), CRS, sensing time and the 10/20/60 m
    grids (ULX/ULY corner, XDIM/YDIM, NROWS/NCOLS) of a tile metadata file. InputError where the file
    cannot be parsed, DataError naming it where TILE_ID, HORIZONTAL_CS_CODE, SENSING_TIME or every
    complete grid is missing."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    tile_id, datastrip_id = _text(root, "TILE_ID"), _text(root, "DATASTRIP_ID")
    cs_code, sensing = _text(root, "HORIZONTAL_CS_CODE"), _text(root, "SENSING_TIME")
    if tile_id is None or cs_code is None or sensing is None:
        missing = [n for n, v in (("TILE_ID", tile_id), ("HORIZONTAL_CS_CODE", cs_code),
                                  ("SENSING_TIME", sensing)) if v is None]  # fmt: skip
        raise DataError(f"{path}: no {', '.join(missing)} (not a Sentinel-2 tile metadata file?)")
    baseline = baseline_in_id(tile_id) or baseline_in_id(datastrip_id)
    tile = TILE_IN_ID.search(tile_id)
    try:
        crs = CRS.from_user_input(cs_code)
        time = pd.Timestamp(sensing)
    except (CRSError, ValueError) as error:
        raise DataError(
            f"{path}: cannot read HORIZONTAL_CS_CODE {cs_code!r} / SENSING_TIME {sensing!r}: {error}"
        ) from None
    if time.tzinfo is not None:
        time = time.tz_convert("UTC").tz_localize(None)
    grids = _tile_grids(root, crs, path)
    if not grids:
        raise DataError(f"{path}: no resolution with both Size (NROWS, NCOLS) and Geoposition (ULX, ULY)")
    return TileMetadata(
        tile_id, tile.group(1) if tile else None, baseline, datastrip_id, crs, time, grids, str(path)
    )


def _tile_grids(root: ET.Element, crs: CRS, path: Path) -> dict[int, Grid]:
    """The grid of each resolution that has both a ``Size`` and a ``Geoposition`` element, in any order."""
    sizes: dict[int, tuple[int, int]] = {}
    origins: dict[int, tuple[float, float, float, float]] = {}
    for el in root.iter():
        name = _local(el.tag)
        if name not in ("Size", "Geoposition"):
            continue
        try:
            resolution = round(float(el.get("resolution", "")))
            if name == "Size":
                sizes[resolution] = (int(_child(el, "NROWS")), int(_child(el, "NCOLS")))
            else:
                origins[resolution] = tuple(  # type: ignore[assignment]
                    float(_child(el, key)) for key in ("ULX", "ULY", "XDIM", "YDIM")
                )
        except (TypeError, ValueError):
            raise DataError(f"{path}: cannot read {name} resolution={el.get('resolution')!r}") from None
    grids = {}
    for resolution in sorted(sizes.keys() & origins.keys()):
        (nrows, ncols), (ulx, uly, xdim, ydim) = sizes[resolution], origins[resolution]
        grids[resolution] = Grid(crs, Affine(xdim, 0.0, ulx, 0.0, ydim, uly), ncols, nrows)
    return grids


def _child(el: ET.Element, name: str) -> str | None:
    """The text of ``el``'s direct child named ``name`` (any namespace), None where absent."""
    return next((c.text.strip() for c in el if _local(c.tag) == name and c.text), None)


def _band_key(name: str) -> str:
    """The canonical band name; B10 (cirrus, in the MTD's band list but not an L2A image) as ``B10``."""
    if name.strip().upper() in ("B10", "B010"):
        return "B10"
    return canonical_band(name)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if _local(el.tag) == name and el.text and el.text.strip():
            return el.text.strip()
    return None
