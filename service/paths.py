"""Answers never show the server's folders: absolute file paths in what a client reads (model cards,
registrations, job messages and outputs) become their last part."""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

#: An absolute POSIX path of two or more parts inside a sentence (``cannot resume /srv/work/run: …``).
_EMBEDDED_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"(),;:]+/)+[^\s/'\"(),;:]+")


def without_server_paths(value: Any) -> Any:
    """``value`` (JSON) with every absolute file path in it, alone or inside a sentence, replaced by its
    last part (a dataset's or a model's folder name): answers never show the server's folders."""
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    if isinstance(value, str):
        path = value.removeprefix("file://")
        if "\n" not in value and PureWindowsPath(path).drive:
            return PureWindowsPath(path).name
        if "\n" not in value and PurePosixPath(path).is_absolute():
            return PurePosixPath(path).name
        return _EMBEDDED_PATH.sub(lambda match: PurePosixPath(match.group(0)).name, value)
    return value
