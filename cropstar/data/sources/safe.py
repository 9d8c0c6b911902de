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
(:func:`cropstar.data.bands.boa_offset`); none of these → DataError naming the MTD file. A band file
without an ``MTD_MSIL2A.xml`` above it falls back to the tiff-folder rules (file tags, metadata.json).
Zipped SAFE products are not read: unzip them first.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from cropstar.data.bands import QUANTIFICATION, canonical_band
from cropstar.data.sources.request import CubeRequest, SourceCube
from cropstar.data.sources.tiff_folder import BandFile, ProductInfo, open_tiff_folder, scan_folder
from cropstar.errors import DataError, InputError

MTD_FILE = "MTD_MSIL2A.xml"
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
        root = _product_root(bf.path, folder)
        if root is None:
            return None
        if root not in cache:
            cache[root] = read_mtd(root / MTD_FILE)
        return cache[root]

    return open_tiff_folder(folder, request, product_info=product_info, kind="safe")


def _product_root(path: Path, top: Path) -> Path | None:
    """The nearest folder above ``path`` (up to ``top``) that holds ``MTD_MSIL2A.xml``."""
    for parent in path.parents:
        if (parent / MTD_FILE).is_file():
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
