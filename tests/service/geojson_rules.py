"""The RFC 7946 rules the service's GeoJSON answers must keep (DESIGN.md, "Conventions": GeoJSON)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

DECIMALS = 7


def _positions(coordinates: Any) -> Iterator[list[float]]:
    if coordinates and isinstance(coordinates[0], (int, float)):
        yield coordinates
    else:
        for part in coordinates:
            yield from _positions(part)


def _signed_area(ring: list[list[float]]) -> float:
    """Shoelace: positive for counter-clockwise rings."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring)) / 2


def _polygons(geometry: dict[str, Any]) -> list[list[list[list[float]]]]:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    if geometry["type"] == "MultiPolygon":
        return geometry["coordinates"]
    return []


def rfc7946_problems(document: dict[str, Any]) -> list[str]:
    """Every way ``document`` breaks RFC 7946 as cropstar writes it: a ``crs`` member, positions
    outside lon/lat ranges or with more than 7 decimals, exterior rings not counter-clockwise (holes
    not clockwise), unclosed rings."""
    problems = []
    if document.get("type") != "FeatureCollection":
        problems.append(f"type is {document.get('type')!r}")
    if "crs" in document:
        problems.append("a crs member")
    for i, feature in enumerate(document.get("features", [])):
        if feature.get("type") != "Feature" or "properties" not in feature or "geometry" not in feature:
            problems.append(f"feature {i} is not a Feature with properties and geometry")
        if "crs" in feature:
            problems.append(f"feature {i} has a crs member")
        geometry = feature.get("geometry")
        if geometry is None:
            continue
        for lon, lat, *_ in _positions(geometry["coordinates"]):
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                problems.append(f"feature {i}: position ({lon}, {lat}) outside lon/lat ranges")
            for value in (lon, lat):
                if len(repr(float(value)).split(".")[-1].split("e")[0]) > DECIMALS:
                    problems.append(f"feature {i}: {value!r} has more than {DECIMALS} decimals")
        for polygon in _polygons(geometry):
            for r, ring in enumerate(polygon):
                if ring[0] != ring[-1]:
                    problems.append(f"feature {i}: ring {r} is not closed")
                area = _signed_area(ring)
                if (r == 0 and area <= 0) or (r > 0 and area >= 0):
                    problems.append(f"feature {i}: ring {r} has the wrong orientation")
    return problems
