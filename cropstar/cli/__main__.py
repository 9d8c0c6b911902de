"""``python -m cropstar.cli`` (e.g. under torchrun): the ``cropstar`` command."""

from cropstar.cli import app

app()
