"""Build the packaged default model (cropstar/default_model/): train a small STAR model on one
synthetic scene and evaluate it on another, the demo scene, with the training pipeline itself.

    python scripts/build_default_model.py [--work DIR]

Writes cropstar/default_model/{model.safetensors, model.json, MODEL_CARD.md}; deterministic (seeded
scenes, seeded training on CPU). Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from cropstar.data.cube import open_cube
from cropstar.data.fields import read_fields
from cropstar.data.ingest import ingest
from cropstar.data.synthetic import make_scene, write_scene
from cropstar.model.artifact import load_artifact, save_artifact
from cropstar.model.default_model import DEFAULT_MODEL_NAME, DEMO_SCENE, default_model_path
from cropstar.nn.init import describe_bias_init
from cropstar.train.config import load_config
from cropstar.train.evaluate import evaluate, record_evaluation
from cropstar.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
TRAINING_SCENE = {"size": 256, "dates": 26, "seed": 11}


def scene_dataset(work: Path, name: str, fractions: tuple[float, float, float], **scene: int) -> Path:
    folder = work / name
    write_scene(make_scene(**scene), folder)
    fields = read_fields(folder / "fields.geojson", label_column="crop_code")
    report = ingest(
        open_cube(folder / "cube"),
        fields,
        "crop_code",
        folder / "dataset",
        name_column="crop",
        fractions=fractions,
        overwrite=True,
    )
    return report.path


def card_text(card: dict, demo: dict) -> str:
    classes = "\n".join(f"| {c['id']} | {c['code']} | {c['name']} |" for c in card["classes"])
    a = card["architecture"]
    return f"""# {DEFAULT_MODEL_NAME}

The model cropstar ships for its demo and its service out of the box. **Trained on synthetic data
only** (`cropstar synth`): it shows the pipeline working; it is not a crop map model for real scenes.
Train your own with `cropstar train` (README, "Train, evaluate, retrain next season").

- Architecture: {a["num_layers"]} STAR layers × {a["hidden_size"]} units, {a["head"]} head, initialised
  with a {describe_bias_init(**{k: v for k, v in a["options"].items() if k != "weight_init"})}; inputs {len(card["bands"])} bands ({", ".join(card["bands"])}) × {card["patch_size"]}×{card["patch_size"]}
  patches on a {card["time_grid"]["period"]} grid of {len(card["time_grid"]["dates"])} steps.
- Training data: the synthetic scene `make_scene(size={TRAINING_SCENE["size"]}, dates={TRAINING_SCENE["dates"]},
  seed={TRAINING_SCENE["seed"]})`, split by field; config `configs/default_model.yaml`; best epoch
  {card["training"].get("best_epoch")} (lowest validation loss).
- Held-out evaluation on the demo scene (`make_scene(size={DEMO_SCENE["size"]}, dates={DEMO_SCENE["dates"]},
  seed={DEMO_SCENE["seed"]})`, other fields and clouds), all {demo["n_samples"]:,} field pixels:
  overall accuracy **{demo["overall_accuracy"]:.3f}**, kappa {demo["kappa"]:.3f}, macro F1
  {demo["macro_f1"]:.3f}.
- Rebuild: `python scripts/build_default_model.py`.

| id | code | name |
|---:|---|---|
{classes}
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=None, help="Keep the scenes and the run here.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cropstar-default-model-"))
    training = scene_dataset(work, "training-scene", (0.8, 0.2, 0.0), **TRAINING_SCENE)
    demo = scene_dataset(work, "demo-scene", (0.8, 0.2, 0.0), **DEMO_SCENE)  # evaluated whole
    result = train(load_config(ROOT / "configs" / "default_model.yaml"), training, work / "run")
    held_out = evaluate(result.model, demo, split="all", out=work / "demo-evaluation").report
    record_evaluation(result.model, {**held_out, "split": "held_out_demo_scene"})
    loaded = load_artifact(result.model)
    loaded.card.name, loaded.card.version = DEFAULT_MODEL_NAME, "1"
    loaded.card.description = (
        "STAR crop classifier trained on cropstar's synthetic scenes (demo and service default)"
    )
    target = default_model_path()
    save_artifact(target, loaded.model, loaded.card)
    card = load_artifact(target).card.to_dict()
    (target / "MODEL_CARD.md").write_text(card_text(card, held_out))
    shutil.copy(work / "demo-evaluation" / "confusion_matrix.png", target / "demo_confusion_matrix.png")
    print(
        f"wrote {target}: held-out overall accuracy {held_out['overall_accuracy']:.3f}, "
        f"macro F1 {held_out['macro_f1']:.3f}"
    )


if __name__ == "__main__":
    main()
