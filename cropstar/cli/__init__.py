"""The ``cropstar`` command: thin doors onto the library (parse, call one function, format), one module
per stage of the pipeline; importing them registers their commands on ``app``, in the pipeline's order."""

# ruff: noqa: I001  (the order of these imports is the order of the commands in --help)
from cropstar.cli.common import app
from cropstar.cli import analysis, data, training, inference, export, service, validate, bench  # noqa: F401

__all__ = ["app"]
