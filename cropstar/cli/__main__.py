"""``python -m cropstar.cli`` (e.g. under torchrun): the ``cropstar`` command."""

from cropstar.cli import app

if __name__ == "__main__":  # not when a spawned worker process imports this module again
    app()
