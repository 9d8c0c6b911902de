"""The class maps the map page shows (``service/routers/maps.py``, ``service/map_images.py``): the
sources, a source's class map made once from the whole source (the same map ``cropstar classify``
writes), described with its bounds in longitude / latitude and its legend, drawn as a PNG in the map's
colours; the sample fields of the demo; problems for unknown or too large sources; the page itself."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import rasterio
from fastapi.testclient import TestClient
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from shapely.geometry import box, shape

from service.app import create_app
from service.map_images import map_png, picture_shape


def _png(content: bytes) -> np.ndarray:
    """The bands of a PNG picture (a plain picture: no georeferencing)."""
    with warnings.catch_warnings(), MemoryFile(content) as memory:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        png = memory.open()
        with png:
            assert png.driver == "PNG" and png.count == 4
            return png.read()


def _maps(work: Path) -> list[Path]:
    return sorted((work / "maps").glob("*.tif"))


def test_the_demo_source_and_its_map(service_client: TestClient, demo_fields: dict) -> None:
    sources = service_client.get("/v1/sources").json()["sources"]
    assert [s["name"] for s in sources] == ["demo"] and sources[0]["default"]
    described = service_client.get(sources[0]["map"])
    assert described.status_code == 200, described.text
    description = described.json()
    card = service_client.get("/v1/models/default").json()["card"]
    assert [(e["id"], e["code"], e["name"]) for e in description["legend"]] == [
        (c["id"], c["code"], c["name"]) for c in card["classes"]
    ]
    assert all(e["colour"].startswith("#") and len(e["colour"]) == 7 for e in description["legend"])
    assert (description["width"], description["height"]) == (128, 128)
    assert description["model"].startswith(card["name"])
    # the demo's fields lie inside the map's bounds (both in longitude / latitude)
    west, south, east, north = description["bounds"]
    fields = [shape(f["geometry"]) for f in demo_fields["features"]]
    assert all(box(west, south, east, north).buffer(1e-7).contains(f) for f in fields)

    picture = service_client.get(description["picture"], params={"size": 64})
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    rgba = _png(picture.content)
    assert max(rgba.shape[1:]) == 64 and min(rgba.shape[1:]) > 40
    opaque = rgba[3] == 255
    colours = {"#{:02x}{:02x}{:02x}".format(*rgba[:3, r, c]) for r, c in zip(*np.nonzero(opaque))}
    assert colours <= {e["colour"] for e in description["legend"]} and len(colours) >= 2
    assert set(np.unique(rgba[3])) <= {0, 255}

    sample = service_client.get(sources[0]["fields"])
    assert sample.status_code == 200 and sample.headers["content-type"] == "application/geo+json"
    assert sample.json() == demo_fields


def test_the_picture_is_the_cog_in_its_colours(tmp_path: Path, service_client: TestClient) -> None:
    """The picture at full size holds the map's classes in the map's colours (nearest neighbour: no
    blended colours), in the same proportions as the COG's class band, up to the warp's resampling."""
    service_client.get("/v1/sources/demo/map")
    cog = _maps(service_client.app.state.settings.scratch_dir)[0]
    with rasterio.open(cog) as src:
        classes, nodata = src.read(1), src.nodata
        colours = {value: "#{:02x}{:02x}{:02x}".format(*rgba[:3]) for value, rgba in src.colormap(1).items()}
    rgba = _png(map_png(cog, 2048))
    assert max(rgba.shape[1:]) == 128  # the map's own size, not more
    assert picture_shape((10.0, 59.5, 12.0, 60.5), 100) == (100, 100)  # cos 60° = 1/2
    picture = ["#{:02x}{:02x}{:02x}".format(*rgba[:3, r, c]) for r, c in zip(*np.nonzero(rgba[3] == 255))]
    for value in np.unique(classes[classes != nodata]):
        want = float(np.mean(classes[classes != nodata] == value))
        got = picture.count(colours[int(value)]) / len(picture)
        assert abs(got - want) < 0.05, (value, got, want)


def test_a_source_map_is_made_once_and_reused(service_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings(preload=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/sources/demo/map").status_code == 200
        made = _maps(settings.scratch_dir)
        assert len(made) == 1
        stamp = made[0].stat().st_mtime_ns
    with TestClient(create_app(settings)) as client:  # a new process: the map on disk is reused
        assert client.get("/v1/sources/demo/map.png").status_code == 200
    assert _maps(settings.scratch_dir) == made and made[0].stat().st_mtime_ns == stamp
    assert not list((settings.scratch_dir / "maps").glob(".*parts*"))  # no work folder left behind


def test_problems_name_the_source(service_settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(service_settings(preload=False, precompute_max_pixels=100))) as client:
        unknown = client.get("/v1/sources/nowhere/map")
        assert unknown.status_code == 404 and "unknown data source 'nowhere'" in unknown.json()["detail"]
        large = client.get("/v1/sources/demo/map.png")
        assert large.status_code == 404 and large.json()["type"].endswith(":no-map")
        assert "classify-raster job" in large.json()["detail"]
        assert client.get("/v1/sources/demo/map.png", params={"size": 4}).status_code == 422
        missing = client.get("/v1/jobs/no-such-job/map")
        assert missing.status_code == 404 and "no job 'no-such-job'" in missing.json()["detail"]


def test_the_page_and_its_files_are_served(service_client: TestClient) -> None:
    home = service_client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/viewer/"
    page = service_client.get("/viewer/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("static/viewer.js", "static/viewer.css"):
        assert asset in page.text
        served = service_client.get(f"/viewer/{asset}")
        assert served.status_code == 200 and served.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = service_client.get("/viewer/static/viewer.js").text
    assert "https://" not in script and "/v1/fields:classify" in script


def test_the_map_colours_are_the_cogs_colour_table(service_client: TestClient) -> None:
    description = service_client.get("/v1/sources/demo/map").json()
    cog = _maps(service_client.app.state.settings.scratch_dir)[0]
    with rasterio.open(cog) as src:
        table = src.colormap(1)
        tags = json.loads(src.tags()["classes"])
    assert [e["id"] for e in description["legend"]] == [c["id"] for c in tags]
    for entry in description["legend"]:
        assert entry["colour"] == "#{:02x}{:02x}{:02x}".format(*table[entry["id"]][:3])
