"""GeoJSON per RFC 7946 (DESIGN.md, "Conventions of the field": GeoJSON): GeoDataFrames to and from
FeatureCollections in WGS 84 lon/lat, exterior rings counter-clockwise, no ``crs`` member, coordinates
rounded to 7 decimals (about 1 cm)."""

from __future__ import annotations

import math
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from shapely.geometry import mapping

from cropstar.errors import InputError

WGS84 = "EPSG:4326"
_WGS84_CRS = pyproj.CRS.from_epsg(4326)
DECIMALS = 7


def _plain(value: Any) -> Any:
    """A property value as JSON: numpy scalars → Python, NaN / NA / NaT → null, timestamps → ISO."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    return value


def _rounded(xy: np.ndarray) -> np.ndarray:
    """Coordinates correctly rounded to :data:`DECIMALS` (``np.round`` can leave 48.36385000000001)."""
    return np.array([round(v, DECIMALS) for v in xy.ravel().tolist()]).reshape(xy.shape)


def _geometry(geometry: Any) -> dict[str, Any] | None:
    if geometry is None or geometry.is_empty:
        return None
    rounded = shapely.transform(geometry, _rounded)
    return mapping(shapely.orient_polygons(rounded, exterior_cw=False))


def to_feature_collection(frame: gpd.GeoDataFrame, id_column: str | None = "field_id") -> dict[str, Any]:
    """``frame`` as an RFC 7946 FeatureCollection: every column but the geometry a property, the
    feature ``id`` from ``id_column`` when present, empty geometries as null."""
    if frame.crs is None:
        raise InputError("cannot write GeoJSON: the frame has no coordinate reference system")
    lonlat = frame if frame.crs == _WGS84_CRS else frame.to_crs(WGS84)
    columns = [c for c in lonlat.columns if c != lonlat.geometry.name]
    features = []
    for values, geometry in zip(lonlat[columns].itertuples(index=False, name=None), lonlat.geometry, strict=True):
        properties = {column: _plain(value) for column, value in zip(columns, values, strict=True)}
        feature: dict[str, Any] = {"type": "Feature"}
        if id_column in properties and properties[id_column] is not None:
            feature["id"] = properties[id_column]
        feature.update(properties=properties, geometry=_geometry(geometry))
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def from_feature_collection(document: dict[str, Any], id_column: str = "field_id") -> gpd.GeoDataFrame:
    """A GeoDataFrame (WGS 84) of an RFC 7946 FeatureCollection; a feature's ``id`` becomes
    ``id_column`` where its properties lack one. InputError for anything but a FeatureCollection."""
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        found = document.get("type") if isinstance(document, dict) else type(document).__name__
        raise InputError(f"expected a GeoJSON FeatureCollection, got {found!r}")
    features = document.get("features") or []
    try:
        frame = gpd.GeoDataFrame.from_features(features, crs=WGS84)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, shapely.errors.GEOSException) as error:
        raise InputError(f"invalid GeoJSON features: {error}") from None
    ids = [feature.get("id") if isinstance(feature, dict) else None for feature in features]
    if any(i is not None for i in ids):
        given = frame[id_column] if id_column in frame.columns else pd.Series([None] * len(frame))
        frame[id_column] = [g if g is not None and not pd.isna(g) else i for g, i in zip(given, ids, strict=True)]
    return frame
