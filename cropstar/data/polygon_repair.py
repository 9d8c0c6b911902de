"""Repairing an invalid field polygon, with nothing but shapely (so a worker process that does only
this starts in a moment: ``service.repair_worker``)."""

from __future__ import annotations

import shapely


def repair_polygon(geometry: shapely.Geometry) -> shapely.Geometry | None:
    """The polygonal part of an invalid geometry made valid (GEOS's ``structure`` method: valid rings,
    shells merged and holes subtracted, collapsed parts dropped; far cheaper than ``linework`` on
    rings that cross themselves often), or None when nothing polygonal is left."""
    repaired = shapely.make_valid(geometry, method="structure", keep_collapsed=False)
    polygons = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type in ("Polygon", "MultiPolygon")]
    repaired = shapely.union_all(polygons) if polygons else None
    return None if repaired is None or repaired.is_empty else repaired
