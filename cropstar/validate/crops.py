"""The crops suite's data (paper §5.2): patch sequences of a synthetic scene (``cropstar synth``,
3 × 3 patches × 6 bands on a 10-day grid; task A per time step with cloud, shadow, snow and no-data
classes, or task B per sequence), or the WorldCereal parcels in ``../shared/data/worldcereal``
(point time series, per sequence). Datasets are built once into ``OUT/data/`` with the ingestion
pipeline (or the WorldCereal importer) and reused by later runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cropstar.data.dataset import PatchSequenceDataset, open_dataset
from cropstar.errors import InputError

#: The synthetic scene the suite ingests (its size comes from the budget).
SCENE = {"dates": 26, "seed": 11, "season": ("2026-03-01", "2026-11-26")}  # 26 ten-day steps, as the paper
TASKS = ("per_sequence", "per_timestep")


def crops_dataset(cache: Path, task: str, scene_size: int, source: Path | None) -> Path:
    """The suite's dataset in ``cache``, built when missing: a synthetic scene of ``scene_size``²
    pixels ingested for ``task``, or the WorldCereal parquet ``source`` imported (per sequence)."""
    if task not in TASKS:
        raise InputError(f"unknown crops task {task!r}; choose one of {', '.join(TASKS)}")
    if source is not None:
        if task != "per_sequence":
            raise InputError("WorldCereal samples are labelled per sequence: use --task per_sequence")
        return _worldcereal(cache, Path(source))
    folder = cache / f"synthetic-{scene_size}-{task}"
    if not (folder / "dataset").exists():
        from cropstar.data.cube import open_cube
        from cropstar.data.fields import read_fields
        from cropstar.data.ingest import ingest
        from cropstar.data.synthetic import make_scene, write_scene

        write_scene(make_scene(size=scene_size, **SCENE), folder / "scene")
        fields = read_fields(folder / "scene" / "fields.geojson", label_column="crop_code")
        ingest(open_cube(folder / "scene" / "cube"), fields, "crop_code", folder / "dataset", name_column="crop",
               task=task, overwrite=True)  # fmt: skip
    return folder / "dataset"


def _worldcereal(cache: Path, parquet: Path) -> Path:
    from cropstar.data.importers import import_worldcereal

    if not parquet.is_file():
        raise InputError(f"--data for crops must be a WorldCereal parquet file, got {parquet}")
    folder = cache / f"worldcereal-{parquet.stem}"
    if not folder.exists():
        legend = parquet.parent / "crop_type_class_mappings.csv"
        import_worldcereal(parquet, folder, legend=legend if legend.is_file() else None, min_samples=10)
    return folder


def read_split(dataset: Path, split: str, limit: int | None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Up to ``limit`` samples of ``split`` (a seeded choice) as tensors: x (N, T, C·P·P) normalised,
    labels (N,) or (N, T), mask (N, T)."""
    samples = PatchSequenceDataset(open_dataset(dataset), split)
    if len(samples) == 0:
        raise InputError(f"{dataset} has no samples in split {split!r}")
    chosen = np.arange(len(samples))
    if limit is not None and limit < len(samples):
        chosen = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    items = [samples[int(i)] for i in chosen]  # sorted: each shard is read once
    x, mask, labels = (torch.stack([item[k] for item in items]) for k in range(3))
    return x, labels, mask
