"""Class maps as pictures for the map page: a class map COG (what ``cropstar classify`` and the
``classify-raster`` jobs write) read through its overviews at the size a page shows, warped to
longitude / latitude (EPSG:4326) with nearest-neighbour resampling, coloured with the map's own colour
table and encoded as a PNG — all by rasterio (GDAL's warper, overviews and PNG driver); and the map's
description: its bounds in longitude / latitude, its size and its legend (class id, code, name and
colour, from the tags the COG carries).

Longitude / latitude is what the fields' GeoJSON (RFC 7946) is in, so the page draws the picture and
the fields in one coordinate system.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT

from cropstar.data.harmonise import transform_bbox
from cropstar.errors import DataError

#: The coordinate system of the pictures and of the described bounds: longitude / latitude (WGS 84).
LONLAT = "EPSG:4326"
#: The largest picture side a request may ask for (pixels).
MAX_PICTURE_SIDE = 2048


def map_legend(tags: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The classes of a class map from its dataset ``tags`` (``classes``, ``class_colors``): id, code,
    name and colour ("#rrggbb"), by class id; ``name`` (the file's) for the error."""
    try:
        classes = json.loads(tags["classes"])
        colours = json.loads(tags.get("class_colors", "{}"))
        return sorted(
            ({"id": int(c["id"]), "code": str(c["code"]), "name": str(c["name"]), "colour": colours.get(str(c["id"]))}
             for c in classes),
            key=lambda entry: entry["id"],
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{name}: not a cropstar class map (its classes tag is missing or unreadable: "
                        f"{error})") from None  # fmt: skip


def describe_map(path: Path) -> dict[str, Any]:
    """What a page needs to place and explain the class map COG ``path``: ``bounds`` [west, south,
    east, north] in longitude / latitude, the map's ``crs``, ``width`` and ``height`` in pixels, the
    ``legend``, the ``model`` (name and version) and the first and last of its ``dates``."""
    with rasterio.open(path) as src:
        tags = src.tags()
        description = {
            "bounds": list(transform_bbox(src.bounds, src.crs, LONLAT)),
            "crs": src.crs.to_string() if src.crs else None, "width": src.width, "height": src.height,
            "legend": map_legend(tags, path.name),
            "model": " ".join(filter(None, (tags.get("model"), tags.get("model_version")))),
        }  # fmt: skip
    dates = json.loads(tags.get("dates", "[]"))
    if dates:
        description["dates"] = [dates[0], dates[-1]]
    return description


def picture_shape(bounds: tuple[float, float, float, float], side: int) -> tuple[int, int]:
    """(rows, columns) of a longitude / latitude picture of ``bounds`` [west, south, east, north] whose
    longer side is ``side`` pixels and whose pixels cover equal distances east and north (as the page
    draws it: a degree of longitude is cos(latitude) of a degree of latitude)."""
    west, south, east, north = bounds
    width = (east - west) * math.cos(math.radians((south + north) / 2))
    height = north - south
    scale = side / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def map_png(path: Path, max_side: int = 1024) -> bytes:
    """The class band of the class map COG ``path`` as an RGBA PNG in longitude / latitude, its longer
    side that of the map or ``max_side`` pixels if less (read through the COG's overviews), coloured by
    the map's colour table; no-data and pixels outside the map are transparent."""
    with rasterio.open(path) as src:
        nodata, legend = src.nodata, map_legend(src.tags(), path.name)
        bounds = transform_bbox(src.bounds, src.crs, LONLAT)
        rows, cols = picture_shape(bounds, min(max_side, max(src.width, src.height)))
        warp = {"crs": LONLAT, "transform": from_bounds(*bounds, cols, rows), "width": cols, "height": rows}
        with WarpedVRT(src, resampling=Resampling.nearest, **warp) as vrt:  # reads the overview that fits
            classes = vrt.read(1, masked=True)
    lookup = np.zeros((int(np.iinfo(classes.dtype).max) + 1, 4), np.uint8)
    for entry in legend:
        if entry["colour"]:
            colour = entry["colour"]
            lookup[entry["id"]] = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255)
    if nodata is not None:
        lookup[int(nodata)] = 0
    rgba = lookup[np.ma.filled(classes, 0 if nodata is None else int(nodata))]
    rgba[np.ma.getmaskarray(classes)] = 0
    with warnings.catch_warnings(), MemoryFile() as memory:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain picture; describe_map places it
        with memory.open(driver="PNG", width=cols, height=rows, count=4, dtype="uint8") as png:
            png.write(np.moveaxis(rgba, -1, 0))
        return memory.read()
