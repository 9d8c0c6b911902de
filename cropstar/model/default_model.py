"""The model shipped inside the package (``cropstar/default_model/``): a small STAR crop classifier
trained on the synthetic scene generator's data, so the demo and the service work with no download.
Built by ``scripts/build_default_model.py``; its card is ``MODEL_CARD.md`` beside the weights."""

from __future__ import annotations

from pathlib import Path

#: The registry-style name of the packaged model.
DEFAULT_MODEL_NAME = "cropstar-demo-star"
#: The synthetic scene the model is evaluated on and the demo serves (``cropstar.data.synthetic.make_scene``).
DEMO_SCENE = {"size": 128, "dates": 26, "seed": 7}


def default_model_path() -> Path:
    """The folder of the packaged model artifact."""
    return Path(__file__).resolve().parent.parent / "default_model"
