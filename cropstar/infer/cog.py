"""Writing a class map as a Cloud-Optimized GeoTIFF: the blocks go into a tiled GeoTIFF beside the
target, which GDAL's COG driver copies (tiles, overviews, header first) to a temporary file that is
renamed into place, so the map appears whole or not at all.

The class band carries a colour table and the class names. GDAL keeps a colour table inside a TIFF of
at most two bands; a map with more bands keeps it in the GDAL sidecar ``MAP.tif.aux.xml``, which GDAL
(and so QGIS) reads with it. Category names have no place inside a TIFF: the sidecar always holds
them (``gdalinfo`` lists them under "Categories" of band 1). The colours are also in the
``class_colors`` tag, the classes in the ``classes`` tag. The COG driver marks the band after a
palette band as alpha; :mod:`cropstar.infer.tiff_extra_samples` marks it as data again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from cropstar.data.harmonise import Grid
from cropstar.files import write_text_atomic
from cropstar.infer.blocks import Block, MapLayout
from cropstar.infer.tiff_extra_samples import mark_extra_samples_unspecified

#: A fixed qualitative palette (Tableau 20), assigned to class ids in turn.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)  # fmt: skip
#: COG tile sides: 512 pixels, 128 for maps that fit in such a tile (GDAL's smallest COG tile).
TILE, SMALL_TILE = 512, 128


def class_colour(class_id: int) -> str:
    """The colour ("#rrggbb") of class ``class_id`` in maps and field answers: the palette in turn."""
    return PALETTE[class_id % len(PALETTE)]


def class_colours(layout: MapLayout) -> dict[int, tuple[int, int, int, int]]:
    """RGBA per class id (:func:`class_colour`); in uint8 maps also no-data, transparent (a uint16
    table stops at the last class: no-data is left to the no-data value)."""
    colours = {}
    for entry in layout.class_table:
        code = class_colour(entry.id)
        colours[entry.id] = (int(code[1:3], 16), int(code[3:5], 16), int(code[5:7], 16), 255)
    if layout.dtype == np.uint8:
        colours[layout.nodata] = (0, 0, 0, 0)
    return colours


def tiling(height: int, width: int) -> tuple[int, int]:
    """The COG's tile side and number of overview levels: halvings until the map fits in one tile (as
    GDAL does), but at least one, so that every map has an overview."""
    tile = SMALL_TILE if max(height, width) <= SMALL_TILE else TILE
    return tile, max(1, math.ceil(math.log2(max(height, width) / tile)))


def _pam_sidecar(names: dict[int, str], colours: dict[int, tuple[int, int, int, int]] | None) -> str:
    """A GDAL PAM sidecar for band 1: its category names (class id → name; ids without a class get an
    empty name) and, where given, its colour table."""
    categories = "\n".join(f"      <Category>{escape(names.get(i, ''))}</Category>" for i in range(max(names) + 1))
    table = ""
    if colours is not None:
        entries = "\n".join(
            "      <Entry c1={} c2={} c3={} c4={}/>".format(
                *(quoteattr(str(v)) for v in colours.get(i, (0, 0, 0, 0)))
            )
            for i in range(max(colours) + 1)
        )
        table = f"    <ColorInterp>Palette</ColorInterp>\n    <ColorTable>\n{entries}\n    </ColorTable>\n"
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    <CategoryNames>\n{categories}\n    </CategoryNames>\n{table}  </PAMRasterBand>\n</PAMDataset>\n"
    )


def write_cog(
    path: Path,
    blocks: Iterable[tuple[Block, np.ndarray]],
    grid: Grid,
    layout: MapLayout,
    tags: dict[str, str],
    scratch: Path,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write the map of ``blocks`` ((Block, bands (count, h, w)) in any order) on ``grid`` to ``path``
    as a COG: band descriptions, scale of the probability bands, no-data, the class colour table,
    ``tags`` on the dataset and each class's code and name on the class band. ``scratch``: a folder
    for the intermediate GeoTIFF. ``progress(blocks_written)``."""
    tile, overviews = tiling(grid.height, grid.width)
    colours = class_colours(layout)
    staging = scratch / "assembly.tif"
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": layout.count,
        "dtype": layout.dtype.name, "nodata": layout.nodata, "crs": grid.crs, "transform": grid.transform,
        "tiled": True, "blockxsize": tile, "blockysize": tile, "compress": "deflate",
        "photometric": "minisblack", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(staging, "w", **profile) as dst:
        for i, name in enumerate(layout.descriptions, start=1):
            dst.set_band_description(i, name)
        dst.scales = [1.0 / layout.scale if name == "confidence" or name.startswith("p_") else 1.0
                      for name in layout.descriptions]  # fmt: skip
        dst.update_tags(
            **tags,
            class_colors=json.dumps({i: "#{:02x}{:02x}{:02x}".format(*c[:3]) for i, c in colours.items()}),
        )
        dst.update_tags(1, **{f"class_{e.id}": f"{e.code} {e.name}" for e in layout.class_table})
        for i, entry in enumerate(layout.class_table if layout.probabilities else [], start=3):
            dst.update_tags(i, class_code=entry.code, class_name=entry.name)
        if layout.count <= 2:  # GDAL stores a colour table in TIFFs of one or two bands only
            dst.write_colormap(1, colours)
        for done, (block, bands) in enumerate(blocks, start=1):
            dst.write(bands, window=Window(block.col0, block.row0, block.shape[1], block.shape[0]))
            if progress is not None:
                progress(done)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tif")
    os.close(fd)
    sidecar = Path(f"{path}.aux.xml")
    try:
        rasterio.shutil.copy(
            staging, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=tile, OVERVIEW_RESAMPLING="NEAREST",
            OVERVIEW_COUNT=overviews, BIGTIFF="IF_SAFER",
        )  # fmt: skip
        os.chmod(tmp, 0o644)
        mark_extra_samples_unspecified(Path(tmp))  # the COG driver made band 2 alpha: it is data
        names = {entry.id: entry.name for entry in layout.class_table}
        write_text_atomic(sidecar, _pam_sidecar(names, colours if layout.count > 2 else None))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
    return path
