"""Preparing a cube for a model and predicting patch sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cropstar.data.cube import open_cube
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.errors import ModelMismatchError
from cropstar.infer.predict import predict_patches, prepare_cube
from cropstar.model.artifact import load_artifact
from cropstar.model.default_model import default_model_path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    write_scene(make_scene(size=16, seed=3), folder)
    return folder / "cube"


def test_prepare_cube_takes_the_model_bands_in_order_and_grid(scene: Path) -> None:
    loaded = load_artifact(default_model_path())
    shuffled = open_cube(scene, bands=["B12", "B02", "B03", "B04", "B08", "B11", "B05"])
    prepared = prepare_cube(loaded.card, shuffled)
    assert list(prepared.bands) == loaded.card.bands
    assert len(prepared.times) == loaded.card.time_grid.steps
    with pytest.raises(ModelMismatchError, match="lacks B11, B12"):
        prepare_cube(loaded.card, open_cube(scene, bands=["B02", "B03", "B04", "B08"]))


def test_predictions_equal_the_model_on_normalised_inputs() -> None:
    loaded = load_artifact(default_model_path())
    rng = np.random.default_rng(0)
    patches = rng.uniform(0, 0.5, (5, 24, 6, 3, 3)).astype(np.float32)
    patches[0, 3, 2] = np.nan  # unfilled: read as the band mean
    mask = rng.random((5, 24)) > 0.3
    probabilities = predict_patches(loaded, patches, mask, batch_size=2)
    normalised = np.nan_to_num(loaded.card.normalisation.apply(patches)).reshape(5, 24, 54)
    with torch.no_grad():
        expected = torch.softmax(loaded.model(torch.from_numpy(normalised), torch.from_numpy(mask)), -1).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelMismatchError, match=r"\(C, P, P\)"):
        predict_patches(loaded, patches[:, :, :, :1, :1], mask)
