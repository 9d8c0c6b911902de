"""The STAC Items ``classify`` writes beside a class map (cropstar.infer.stac_items): both validate against
the STAC 1.1.0 Item schema (pystac's validator, its schemas bundled: offline), a broken copy does not;
the model Item's MLM fields validate with stac-model (the MLM extension's own models);
their extension fields read back through pystac's extension classes equal the map's own: projection =
the COG's grid, raster bands = its bands, classification classes = its colour table and class names,
the MLM fields = the model card's; the links between the two resolve."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation import validate_dict
from shapely.geometry import shape

from cropstar.data.cube import open_cube
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.infer.raster import classify
from cropstar.infer.stac_items import item_paths
from cropstar.model.artifact import LoadedModel, load_artifact, parameter_count
from cropstar.model.default_model import default_model_path


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_artifact(default_model_path())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, loaded: LoadedModel) -> Path:
    """A 40² synthetic scene classified with probabilities: the COG, its sidecar and the two Items."""
    folder = tmp_path_factory.mktemp("stac-map")
    write_scene(make_scene(size=40, dates=26, seed=3), folder / "scene")
    cube = open_cube(folder / "scene" / "cube", bands=loaded.card.bands)
    out = folder / "map.tif"
    classify(loaded, cube, out, probabilities=True, block_size=32)
    return out


def _items(cog: Path) -> tuple[dict, dict]:
    map_path, model_path = item_paths(cog)
    return json.loads(map_path.read_text()), json.loads(model_path.read_text())


def test_both_items_validate_against_the_stac_item_schema(written: Path) -> None:
    the_map, model = _items(written)
    for document in (the_map, model):
        assert document["stac_version"] == "1.1.0"
        assert validate_dict(document, extensions=[]) == [
            "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
        ]
    broken = copy.deepcopy(the_map)
    del broken["properties"]["start_datetime"]  # datetime null needs a start and an end
    with pytest.raises(pystac.STACValidationError):
        validate_dict(broken, extensions=[])


def test_the_map_item_describes_the_cog(written: Path, loaded: LoadedModel) -> None:
    document, _ = _items(written)
    item = pystac.Item.from_dict(document)
    with rasterio.open(written) as src:
        grid_transform, shape_, crs, count = list(src.transform)[:6], [src.height, src.width], src.crs, src.count
        colour_table, descriptions = src.colormap(1), src.descriptions
    projection = ProjectionExtension.ext(item)
    assert projection.code == crs.to_string() and projection.shape == shape_ and projection.transform == grid_transform
    asset = item.assets["map"]
    assert asset.href == "./map.tif" and asset.media_type.endswith("profile=cloud-optimized")
    bands = RasterExtension.ext(asset).bands
    assert len(bands) == count and [b.properties["name"] for b in bands] == list(descriptions)
    assert all(b.data_type == "uint8" and b.nodata == 255 for b in bands)
    assert bands[1].scale == 0.01
    classes = ClassificationExtension.ext(bands[0]).classes
    table = loaded.card.class_table
    assert [(c.value, c.title) for c in classes[:-1]] == [(e.id, e.name) for e in table]
    for entry in classes[:-1]:
        assert entry.color_hint == "{:02X}{:02X}{:02X}".format(*colour_table[entry.value][:3])
    assert classes[-1].value == 255 and classes[-1].nodata
    assert document["properties"]["start_datetime"] == "2026-03-11T00:00:00Z"
    assert document["properties"]["end_datetime"].startswith("2026-11-05T23:59:59")  # the last 10-day step's end
    # the footprint holds the map's centre, in longitude / latitude
    footprint = shape(document["geometry"])
    with rasterio.open(written) as src:
        from rasterio.warp import transform

        (lon,), (lat,) = transform(src.crs, "EPSG:4326", [np.mean(src.bounds[::2])], [np.mean(src.bounds[1::2])])
    assert footprint.contains(shape({"type": "Point", "coordinates": [lon, lat]}))
    assert np.allclose(document["bbox"], footprint.bounds)


def test_the_model_item_validates_with_the_mlm_extensions_own_model(written: Path) -> None:
    """stac-model (the MLM extension's own pydantic models) accepts the Item's ``mlm:`` fields and
    refuses them broken."""
    from stac_model.schema import MLModelProperties

    _, document = _items(written)
    fields = {key.removeprefix("mlm:"): value for key, value in document["properties"].items() if key.startswith("mlm:")}
    assert MLModelProperties.model_validate(fields).name == document["properties"]["mlm:name"]
    broken = copy.deepcopy(fields)
    broken["tasks"] = ["crop-guessing"]
    with pytest.raises(ValueError, match="tasks"):
        MLModelProperties.model_validate(broken)


def test_the_model_item_is_the_cards_mlm_description(written: Path, loaded: LoadedModel) -> None:
    the_map, document = _items(written)
    item = pystac.Item.from_dict(document)
    mlm = MLMExtension.ext(item)
    assert mlm.mlm_name == loaded.card.name and mlm.framework == "pytorch"
    assert mlm.total_parameters == parameter_count(loaded.model)
    assert [str(t) for t in mlm.tasks] == ["classification"]
    (model_input,) = mlm.input
    assert model_input.input.shape == [-1, loaded.card.time_grid.steps, loaded.card.architecture.input_size]
    assert model_input.bands == list(loaded.card.bands)
    (output,) = mlm.output
    assert [c.value for c in output.classes] == [e.id for e in loaded.card.class_table]
    weights = document["assets"]["weights"]
    assert "mlm:model" in weights["roles"] and weights["href"].startswith("file://")
    stored = json.loads((loaded.path / "model.json").read_text())
    assert weights["cropstar:weights_sha256"] == stored["weights_sha256"]
    # the links resolve, each to the other
    (link,) = [link for link in the_map["links"] if link["rel"] == "derived_from"]
    assert (written.parent / link["href"]).resolve() == item_paths(written)[1]
    (back,) = [link for link in document["links"] if link["rel"] == "related"]
    assert (written.parent / back["href"]).resolve() == item_paths(written)[0]
