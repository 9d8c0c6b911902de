"""A spectral index from ingest to map: `ingest --indices NDVI` adds it as a feature, the model's card
records it, and `classify` and `fields` compute it again from a cube that holds only the bands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cropstar.cli import app
from cropstar.data.dataset import open_dataset

runner = CliRunner()


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_an_index_from_ingest_to_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run("synth", "--out", "scene", "--size", "32", "--dates", "12")
    _run("ingest", "--cube", "scene/cube", "--fields", "scene/fields.geojson", "--label-column", "crop_code",
         "--bands", "B04,B08,B11", "--indices", "ndvi", "--period", "none", "--out", "raw")  # fmt: skip
    reader = open_dataset("raw")  # the acquisitions as they are: the index of each observation
    assert reader.bands == ["B04", "B08", "B11", "NDVI"]
    patches, mask = reader.read("patches")[..., 1, 1], reader.read("mask")  # the patches' centre pixels
    red, nir, ndvi = patches[..., 0], patches[..., 1], patches[..., 3]
    np.testing.assert_allclose(ndvi[mask], ((nir - red) / (nir + red))[mask], rtol=1e-5, atol=1e-6)
    assert reader.provenance["options"]["indices"] == "ndvi"

    _run("ingest", "--cube", "scene/cube", "--fields", "scene/fields.geojson", "--label-column", "crop_code",
         "--bands", "B04,B08,B11", "--indices", "ndvi", "--out", "ds")  # fmt: skip

    _run("train", "--data", "ds", "--out", "run", "--set", "epochs=1", "--set", "model.hidden_size=8")
    card = json.loads(Path("run/model/model.json").read_text())
    assert card["bands"] == ["B04", "B08", "B11", "NDVI"]
    assert card["features"][3]["formula"] == "(B08 − B04) / (B08 + B04)" and "mean" in card["features"][3]

    _run("classify", "--cube", "scene/cube", "--model", "run/model", "--out", "map.tif", "--threads", "1")
    assert Path("map.tif").is_file()
    _run("fields", "--cube", "scene/cube", "--fields", "scene/fields.geojson", "--model", "run/model",
         "--out", "fields.geojson")  # fmt: skip
    answers = json.loads(Path("fields.geojson").read_text())["features"]
    assert answers and all(f["properties"]["status"] == "ok" for f in answers[:3])

    refused = runner.invoke(app, ["ingest", "--cube", "scene/cube", "--fields", "scene/fields.geojson",
                                  "--label-column", "crop_code", "--bands", "B04,VV", "--out", "bad"])  # fmt: skip
    assert refused.exit_code != 0 and "VV (backscatter) cannot be read from a Sentinel-2 cube" in refused.output
