"""The area limit's measure: an equal-area projection agrees with the geodesic area."""

from __future__ import annotations

import pytest
import shapely
from pyproj import Geod

from service.limits import total_area_ha


@pytest.mark.parametrize("latitude", [-60.0, 0.0, 48.36, 70.0])
def test_field_areas_match_the_geodesic_area(latitude: float) -> None:
    field = shapely.Polygon([(11.57, latitude), (11.58, latitude), (11.585, latitude + 0.01), (11.57, latitude + 0.01)])
    geodesic_ha = abs(Geod(ellps="WGS84").geometry_area_perimeter(field)[0]) / 1e4
    assert total_area_ha([field]) == pytest.approx(geodesic_ha, rel=1e-4)


def test_only_polygons_count_and_parts_add_up() -> None:
    square = shapely.box(11.57, 48.36, 11.58, 48.37)
    twice = shapely.MultiPolygon([square, shapely.box(12.57, 48.36, 12.58, 48.37)])
    assert total_area_ha([None, shapely.Point(11.57, 48.36), twice]) == pytest.approx(2 * total_area_ha([square]))
    assert total_area_ha([]) == 0.0
