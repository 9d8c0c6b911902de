"""Choose configs/crop_small.yaml's settings on the validation splits of the real-data suite's folds.

Each variant (a set of ``--set``-style overrides on top of a base config) is trained on the
training samples of the chosen folds and scored on the fold's validation split (the stratified 15%
of the non-test samples that early stopping watches). The fold's test samples are never read:
what chooses a setting is the mean validation accuracy and validation loss over folds, so the
suite's test figures stay an honest estimate. Writes one JSON line per (variant, data set, fold)
to ``--out`` (a rerun skips the ones already there) and the table of means beside it (``.md``).

    python scripts/tune_crop_small.py --datasets france-2023 --folds 1,2,3 \
        --variant base= --variant h128=model.hidden_size=128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cropstar.data.dataset import copy_dataset, open_dataset
from cropstar.files import write_text_atomic
from cropstar.train.config import load_config
from cropstar.train.trainer import train
from cropstar.validate.real import DATASETS, fold_splits, import_dataset


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value,key=value`` → (NAME, [key=value, …]); ``NAME=`` is the base config."""
    name, _, settings = text.partition("=")
    return name, [s for s in settings.split(",") if s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="france-2023")
    parser.add_argument("--folds", default="1,2,3", help="1-based fold numbers of the 5-fold split")
    parser.add_argument("--variant", action="append", required=True, help="NAME=key=value,key=value")
    parser.add_argument("--config", default="configs/crop_small.yaml")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("results/tune_small"))
    parser.add_argument("--out", type=Path, default=Path("results/tune_small/tuning.jsonl"))
    args = parser.parse_args()

    done = set()
    if args.out.is_file():
        done = {(r["variant"], r["dataset"], r["fold"]) for r in map(json.loads, args.out.read_text().splitlines())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in args.variant]
    folds = [int(f) for f in args.folds.split(",")]
    for name in args.datasets.split(","):
        reader = open_dataset(import_dataset(DATASETS[name], args.shared, args.work / "data" / name))
        labels = reader.read("labels")
        plans = fold_splits(labels, 5)
        for fold in folds:
            split = plans[fold - 1]
            rows = np.flatnonzero(split < 2)  # the fold's test samples are not even copied
            copy = copy_dataset(reader, args.work / "folds" / f"{name}-fold{fold}", split[rows], rows)
            for variant, settings in variants:
                if (variant, name, fold) in done:
                    continue
                config = load_config(args.config, ["device=cpu", f"seed={fold - 1}", *settings])
                started = time.perf_counter()
                run = args.work / "train" / f"{variant}-{name}-fold{fold}"
                result = train(config, copy, run, resume=False)
                best = result.best
                row = {"variant": variant, "settings": settings, "dataset": name, "fold": fold,
                       "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
                       "best_epoch": result.best_epoch, "epochs": len(result.history),
                       "seconds": time.perf_counter() - started}  # fmt: skip
                with args.out.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)

    table = tuning_table([json.loads(line) for line in args.out.read_text().splitlines()])
    write_text_atomic(args.out.with_suffix(".md"), table)
    print(table)


def tuning_table(rows: list[dict]) -> str:
    """Markdown: per variant and data set, the folds run and the means of validation accuracy, loss,
    selected epoch and seconds."""
    lines = ["| variant | settings | data set | folds | val accuracy | val loss | best epoch | seconds |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for key in sorted({(r["variant"], r["dataset"]) for r in rows}, key=lambda k: (k[1], k[0])):
        mine = [r for r in rows if (r["variant"], r["dataset"]) == key]
        mean = {k: np.mean([r[k] for r in mine]) for k in ("val_accuracy", "val_loss", "best_epoch", "seconds")}
        folds = ",".join(str(r["fold"]) for r in sorted(mine, key=lambda r: r["fold"]))
        lines.append(f"| {key[0]} | {' '.join(mine[0]['settings']) or '(the base config)'} | {key[1]} | {folds} | "
                     f"{mean['val_accuracy']:.3f} | {mean['val_loss']:.3f} | {mean['best_epoch']:.0f} | "
                     f"{mean['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
