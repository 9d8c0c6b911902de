"""STAC Items beside a class map, so that catalogues and STAC tools take it as it is: the map's Item
(``MAP.stac-item.json``: its footprint, the season, the projection, each band's data type, scale and
no-data by the ``raster`` extension, the classes with their names and colours by the
``classification`` extension, a link to the model) and the model's Item (``MAP.model.stac-item.json``:
the model card's STAC MLM fields — inputs, outputs, classes, framework — with the weights as its
asset). Both are STAC 1.1.0, built with pystac and its extension classes, written atomically.

The map links the model with ``derived_from``; the model's weights are linked where the map was made
(a ``file://`` URI) with their SHA-256, which says which model made the map wherever it moves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pystac
from pandas.tseries.frequencies import to_offset
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform_geom

from cropstar.data.harmonise import Grid
from cropstar.files import write_text_atomic
from cropstar.infer.blocks import MapLayout
from cropstar.infer.cog import class_colour
from cropstar.model.artifact import CARD, MLM_SCHEMA, WEIGHTS, LoadedModel, parameter_count

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
MAP_ITEM_SUFFIX = ".stac-item.json"
MODEL_ITEM_SUFFIX = ".model.stac-item.json"


def item_paths(cog: Path) -> tuple[Path, Path]:
    """Where the map's and the model's Items of the class map ``cog`` go: beside it."""
    stem = cog.with_suffix("")
    return Path(f"{stem}{MAP_ITEM_SUFFIX}"), Path(f"{stem}{MODEL_ITEM_SUFFIX}")


def footprint(grid: Grid) -> dict[str, Any]:
    """The grid's outline as a GeoJSON polygon in longitude / latitude (densified edges)."""
    west, south, east, north = grid.bounds
    steps = 4
    ring = (
        [(west + (east - west) * i / steps, north) for i in range(steps)]
        + [(east, north - (north - south) * i / steps) for i in range(steps)]
        + [(east - (east - west) * i / steps, south) for i in range(steps)]
        + [(west, south + (north - south) * i / steps) for i in range(steps)]
    )  # fmt: skip
    ring.append(ring[0])
    return transform_geom(grid.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def _bbox(geometry: dict[str, Any]) -> list[float]:
    xs, ys = zip(*geometry["coordinates"][0], strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


def _season(dates: tuple[str, ...], period: str | None) -> tuple[datetime, datetime]:
    """The season a time grid covers (UTC): from its first date to the end of its last step's period
    (``period`` a pandas frequency, "10D", "W", "MS" …; without one, the last date's end)."""
    start = pd.Timestamp(dates[0])
    step = to_offset(period) if period else pd.Timedelta(days=1)  # "10D", "W", "MS" …
    end = pd.Timestamp(dates[-1]) + step - pd.Timedelta(seconds=1)
    return start.to_pydatetime().replace(tzinfo=UTC), end.to_pydatetime().replace(tzinfo=UTC)


def model_item(loaded: LoadedModel, fingerprint: str) -> pystac.Item:
    """The model as a STAC MLM Item: the card's ``mlm:`` fields, and the weights as its ``mlm:model``
    asset where the model was loaded from an artifact folder."""
    card = loaded.card
    document = card.to_dict(parameter_count(loaded.model))
    start, end = _season(card.time_grid.dates, card.time_grid.period)
    properties = {key: value for key, value in document.items() if key.startswith("mlm:")}
    properties["description"] = card.description or f"cropstar model {card.name}"
    item = pystac.Item(
        id=f"{card.name}-{fingerprint[:12]}", geometry=None, bbox=None, datetime=None, start_datetime=start,
        end_datetime=end, properties=properties, stac_extensions=[MLM_SCHEMA],
    )  # fmt: skip
    weights, stored_card = (loaded.path / WEIGHTS).resolve(), loaded.path / CARD
    if not (weights.is_file() and stored_card.is_file()):  # a model built in memory: no file to link
        return item
    stored = json.loads(stored_card.read_text())  # the card as saved: with the weights' checksum
    item.add_asset("weights", pystac.Asset(
        href=weights.as_uri(), media_type="application/octet-stream", roles=["mlm:model", "mlm:weights"],
        title="PyTorch weights (safetensors)",
        extra_fields={"mlm:artifact_type": "safetensors", "cropstar:weights_sha256": stored.get("weights_sha256")},
    ))  # fmt: skip
    return item


def map_item(cog: Path, loaded: LoadedModel, layout: MapLayout, grid: Grid, fingerprint: str) -> pystac.Item:
    """The class map ``cog`` as a STAC Item (projection, raster and classification extensions)."""
    card = loaded.card
    geometry = footprint(grid)
    start, end = _season(layout.dates, card.time_grid.period)
    item = pystac.Item(
        id=f"{cog.stem}-{fingerprint[:12]}", geometry=geometry, bbox=_bbox(geometry), datetime=None,
        start_datetime=start, end_datetime=end,
        properties={"title": f"crop map by {card.name}", "cropstar:model": card.name,
                    "cropstar:model_version": str(card.version or "")},
    )  # fmt: skip
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.code = grid.crs.to_string()
    projection.shape = [grid.height, grid.width]
    projection.transform = list(grid.transform)[:6]
    projection.bbox = list(grid.bounds)
    asset = pystac.Asset(href=f"./{cog.name}", media_type=COG_MEDIA_TYPE, roles=["data"], title="class map")
    item.add_asset("map", asset)
    data_type = DataType.UINT8 if layout.dtype.itemsize == 1 else DataType.UINT16
    bands = [_band(name, layout, data_type) for name in layout.descriptions]
    RasterExtension.ext(asset, add_if_missing=True).bands = bands
    classes = [
        Classification.create(value=e.id, name=_class_name(e.name), title=e.name, description=f"class code {e.code}",
                              color_hint=class_colour(e.id).lstrip("#").upper())
        for e in layout.class_table
    ] + [Classification.create(value=layout.nodata, name="no_data", description="no valid observation", nodata=True)]
    ClassificationExtension.ext(asset, add_if_missing=True)
    ClassificationExtension.ext(bands[0]).classes = classes
    asset.extra_fields["raster:bands"] = [band.to_dict() for band in bands]
    return item


def _band(name: str, layout: MapLayout, data_type: DataType) -> RasterBand:
    scaled = name == "confidence" or name.startswith("p_")
    band = RasterBand.create(nodata=layout.nodata, data_type=data_type, scale=1.0 / layout.scale if scaled else None,
                             spatial_resolution=None)  # fmt: skip
    band.properties["name"] = name
    return band


def _class_name(name: str) -> str:
    """A class name as the classification extension allows it (letters, digits, -, _)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "class"


def write_map_items(cog: Path, loaded: LoadedModel, layout: MapLayout, grid: Grid, fingerprint: str) -> tuple[Path, Path]:
    """Write the map's and the model's Items beside ``cog`` (atomically), the map linking the model."""
    map_path, model_path = item_paths(cog)
    model = model_item(loaded, fingerprint)
    the_map = map_item(cog, loaded, layout, grid, fingerprint)
    the_map.add_link(pystac.Link("derived_from", f"./{model_path.name}", media_type="application/geo+json",
                                 title=f"the model: {loaded.card.name}"))  # fmt: skip
    model.add_link(pystac.Link("related", f"./{map_path.name}", media_type="application/geo+json", title="a map it made"))
    for path, item in ((model_path, model), (map_path, the_map)):
        document = item.to_dict(include_self_link=False, transform_hrefs=False)
        write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return map_path, model_path
