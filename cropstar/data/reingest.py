"""The `cropstar ingest` command line that builds a dataset again on a model's time grid (``--like``),
rebuilt from what the dataset's provenance records of its first ingestion: the fix an error names
when a new season's dataset does not fit the model it should be evaluated with or retrained from."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from cropstar.data.dataset import DatasetReader

#: ingest's own defaults: an option recorded with its default value is left out of the command.
_DEFAULTS: dict[str, Any] = {
    "task": "per_sequence",
    "unobserved": "conditions",
    "mask_snow": False,
    "dilation": 0,
    "fractions": [0.7, 0.15, 0.15],
    "seed": 0,
}
#: recorded option → ingest flag, in the order the command names them.
_FLAGS = {
    "name_column": "--name-column",
    "id_column": "--id-column",
    "field_raster": "--field-raster",
    "bands": "--bands",
    "indices": "--indices",
    "time": "--time",
    "task": "--task",
    "unobserved": "--unobserved",
    "dilation": "--dilation",
    "class_table": "--class-table",
}


def _flag_arguments(options: dict[str, Any]) -> list[str]:
    arguments: list[str] = []
    for key, flag in _FLAGS.items():
        value = options.get(key)
        if value is None or value == _DEFAULTS.get(key):
            continue
        arguments += [flag, str(value)]
    if options.get("mask_snow"):
        arguments.append("--mask-snow")
    fractions = options.get("fractions")
    if fractions is not None and list(fractions) != _DEFAULTS["fractions"]:
        arguments += ["--fractions", ",".join(f"{f:g}" for f in fractions)]
    if options.get("seed") not in (None, _DEFAULTS["seed"]):
        arguments += ["--seed", str(options["seed"])]
    return arguments


def reingest_command(reader: DatasetReader, like: str) -> str | None:
    """``cropstar ingest … --like LIKE --out DATASET-regridded`` for a dataset made by `cropstar ingest`;
    None for one made otherwise (an importer), whose provenance does not say how to cut it again."""
    provenance = reader.provenance
    cube, labels = provenance.get("cube_source"), provenance.get("labels")
    if provenance.get("command") != "cropstar ingest" or not cube or not labels:
        return None
    options = {
        **provenance.get("options", {}),
        "fractions": provenance.get("fractions"),
        "seed": provenance.get("seed"),
    }
    if "label_column" in provenance:
        source = ["--fields", labels, "--label-column", str(provenance["label_column"])]
    else:
        source = ["--labels", labels]
    out = Path(reader.path)
    arguments = [
        "cropstar",
        "ingest",
        "--cube",
        cube,
        *source,
        *_flag_arguments(options),
        "--like",
        like,
        "--out",
        str(out.with_name(f"{out.name}-regridded")),
    ]
    return shlex.join(arguments)


def regrid_fix(reader: DatasetReader, like: str) -> str:
    """The sentence an error appends when a dataset's bands, patch size or time grid differ from a
    model's: the exact command where the provenance tells it, else the option to use."""
    command = reingest_command(reader, like)
    if command is None:
        return (
            f"cut the season again onto the model's grid: `cropstar ingest … --like {shlex.quote(like)}` "
            "(the dataset's own provenance does not record how it was ingested)"
        )
    return f"cut the season again onto the model's bands, patch size and time grid: {command}"
