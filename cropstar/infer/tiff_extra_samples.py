"""Undo one thing GDAL's COG driver does to class maps: it marks the first extra band of every TIFF it
writes as alpha (the ExtraSamples tag = 2, "unassociated alpha", whatever the source says: GDAL issue
#11377, in the GDAL 3.10 that rasterio bundles), so a two-band map's confidence band reads as
transparency in GDAL and QGIS. :func:`mark_extra_samples_unspecified` rewrites that tag's value to 0
("unspecified") in every image directory of the file (the full map and its overviews), in place: the
value sits inside the directory entry, so no byte moves and the COG layout stays as the driver wrote
it. TIFF 6.0 and BigTIFF, either byte order.
"""

from __future__ import annotations

import struct
from pathlib import Path

EXTRA_SAMPLES = 338
SHORT = 3
UNSPECIFIED = 0


def mark_extra_samples_unspecified(path: Path) -> int:
    """Set every ExtraSamples value of the TIFF ``path`` that fits in its directory entry to
    "unspecified"; the number of values changed."""
    changed = 0
    with open(path, "r+b") as tiff:
        order = {b"II": "<", b"MM": ">"}.get(tiff.read(2))
        if order is None:
            raise ValueError(f"{path.name}: not a TIFF file")
        (version,) = struct.unpack(order + "H", tiff.read(2))
        big = version == 43
        if big:
            tiff.read(4)  # offset size (8) and padding
        count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
        inline = 8 if big else 4  # bytes of a value kept inside its entry
        (directory,) = struct.unpack(order + offset_format, tiff.read(8 if big else 4))
        seen = set()
        while directory and directory not in seen:
            seen.add(directory)
            tiff.seek(directory)
            (entries,) = struct.unpack(order + count_format, tiff.read(8 if big else 2))
            start = tiff.tell()
            for index in range(entries):
                entry = start + index * entry_size
                tiff.seek(entry)
                tag, kind = struct.unpack(order + "HH", tiff.read(4))
                (count,) = struct.unpack(order + ("Q" if big else "I"), tiff.read(8 if big else 4))
                if tag == EXTRA_SAMPLES and kind == SHORT and 2 * count <= inline:
                    values = struct.unpack(order + "H" * count, tiff.read(2 * count))
                    if any(values):
                        tiff.seek(entry + 4 + (8 if big else 4))
                        tiff.write(struct.pack(order + "H" * count, *([UNSPECIFIED] * count)))
                        changed += sum(1 for value in values if value)
            tiff.seek(start + entries * entry_size)
            (directory,) = struct.unpack(order + offset_format, tiff.read(8 if big else 4))
    return changed
