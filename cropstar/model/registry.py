"""A model registry: a folder of numbered versions of named model artifacts and a ``current``
pointer per name, so that ``classify`` and ``serve`` can ask for ``crops:current`` instead of a path.

Layout::

    root/<name>/v<N>/model.safetensors, model.json   the artifact, copied
    root/<name>/v<N>/registration.json               created, source, dataset fingerprint, metrics, notes
    root/<name>/current.json                         {"version": N}

A version number is claimed by creating its folder (an exclusive ``mkdir``), so concurrent
registrations never share one; ``registration.json`` is written last, so a version without it is
incomplete and ignored. Pointers are small JSON files replaced atomically (no symlinks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cropstar.errors import InputError
from cropstar.files import write_text_atomic
from cropstar.model.artifact import CARD, load_artifact

REGISTRATION = "registration.json"
POINTER = "current.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^v?(\d+)$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: ``ref`` ("name:v3"), artifact ``path`` and its registration record."""

    name: str
    version: int
    path: Path
    created: str
    current: bool = False
    source: str = ""
    fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "created": self.created,
            "current": self.current,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "notes": self.notes,
        }


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of a card's metrics, nested ones as ``"test.overall_accuracy"`` (two levels)."""
    summary: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            summary.update(
                {f"{key}.{k}": v for k, v in value.items() if isinstance(v, (int, float, str, bool))}
            )
        elif isinstance(value, (int, float, str, bool)):
            summary[key] = value
    return summary


class ModelRegistry:
    """The registry folder ``root`` (created on the first registration)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # writing -----------------------------------------------------------------------------------
    def register(self, artifact_folder: Path | str, name: str | None = None, notes: str = "") -> ModelVersion:
        """Copy the artifact (checked by loading it) as the next version of ``name`` (default: the
        card's name). The first version of a name becomes its current one; later ones by :meth:`promote`."""
        artifact_folder = Path(artifact_folder)
        card = load_artifact(artifact_folder).card
        name = name or card.name
        if not _NAME.match(name):
            raise InputError(
                f"model name {name!r} must start with a letter or digit and hold only letters, "
                "digits, '.', '_' and '-'"
            )
        folder, version = self._claim_version(name)
        try:
            for item in artifact_folder.iterdir():
                if item.name != REGISTRATION:
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, folder / item.name)
            record = {
                "name": name,
                "version": version,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": str(artifact_folder.resolve()),
                "fingerprint": str(card.training.get("fingerprint", "")),
                "metrics": metrics_summary(card.metrics),
                "notes": notes,
            }
            write_text_atomic(folder / REGISTRATION, json.dumps(record, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._point_if_unset(name, version)
        return self.show(f"{name}:v{version}")

    def _claim_version(self, name: str) -> tuple[Path, int]:
        """Create ``root/name/v<N>`` for the next free N; ``mkdir`` fails if another process took it."""
        (self.root / name).mkdir(parents=True, exist_ok=True)
        version = max(self._numbers(name, complete=False), default=0) + 1
        while True:
            folder = self.root / name / f"v{version}"
            try:
                folder.mkdir()
                return folder, version
            except FileExistsError:
                version += 1

    def _point_if_unset(self, name: str, version: int) -> None:
        """Set the pointer unless one exists, exclusively: hard-link a finished file into place."""
        pointer = self.root / name / POINTER
        fd, tmp = tempfile.mkstemp(dir=pointer.parent, prefix=f".{POINTER}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps({"version": version}) + "\n")
            os.chmod(tmp, 0o644)
            os.link(tmp, pointer)
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)

    def promote(self, ref: str) -> ModelVersion:
        """Make the version ``ref`` its name's current version."""
        entry = self.show(ref)
        write_text_atomic(self.root / entry.name / POINTER, json.dumps({"version": entry.version}) + "\n")
        return self.show(entry.ref)

    # reading -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._numbers(p.name))

    def _numbers(self, name: str, complete: bool = True) -> list[int]:
        """Version numbers of ``name`` (only registered ones when ``complete``), ascending."""
        folder = self.root / name
        if not _NAME.match(name) or not folder.is_dir():
            return []
        found = []
        for item in folder.iterdir():
            match = re.fullmatch(r"v(\d+)", item.name)
            if match and item.is_dir() and (not complete or (item / REGISTRATION).is_file()):
                found.append(int(match.group(1)))
        return sorted(found)

    def current(self, name: str) -> ModelVersion:
        """The current version of ``name``."""
        return self.show(f"{name}:current")

    def _current_number(self, name: str) -> int | None:
        try:
            return int(json.loads((self.root / name / POINTER).read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def list(self) -> list[ModelVersion]:
        """Every registered version, by name and version."""
        return [self._entry(name, v) for name in self.names() for v in self._numbers(name)]

    def show(self, ref: str) -> ModelVersion:
        """The version ``ref``: "name:v3" (or "name:3"), "name:current" or "name", "name:latest"."""
        name, _, which = str(ref).partition(":")
        which = which or "current"
        versions = self._numbers(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise InputError(f"no model {name!r} in the registry {self.root} (registered: {known})")
        if which == "latest":
            return self._entry(name, versions[-1])
        if which == "current":
            number = self._current_number(name)
            if number not in versions:
                raise InputError(f"model {name!r} in {self.root} has no current version; promote one")
            return self._entry(name, number)
        match = _VERSION.match(which)
        if not match or int(match.group(1)) not in versions:
            listed = ", ".join(f"v{v}" for v in versions)
            raise InputError(
                f"no version {which!r} of model {name!r} in {self.root} (versions: {listed}, current, latest)"
            )
        return self._entry(name, int(match.group(1)))

    def path(self, ref: str) -> Path:
        """The artifact folder of the version ``ref``."""
        return self.show(ref).path

    def _entry(self, name: str, version: int) -> ModelVersion:
        folder = self.root / name / f"v{version}"
        try:
            record = json.loads((folder / REGISTRATION).read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {folder / REGISTRATION}: {error}") from None
        return ModelVersion(
            name=name,
            version=version,
            path=folder,
            created=str(record.get("created", "")),
            current=self._current_number(name) == version,
            source=str(record.get("source", "")),
            fingerprint=str(record.get("fingerprint", "")),
            metrics=dict(record.get("metrics") or {}),
            notes=str(record.get("notes", "")),
        )


def resolve_model(ref_or_path: Path | str, registry_root: Path | str | None = None) -> Path:
    """The artifact folder meant by ``ref_or_path``: an artifact folder itself, or a reference
    ("name", "name:v3", "name:current", "name:latest") into the registry at ``registry_root``."""
    path = Path(ref_or_path)
    if (path / CARD).is_file():
        return path
    if path.exists():
        raise InputError(f"{path} is not a model artifact: it has no {CARD}")
    if registry_root is None:
        raise InputError(f"no model artifact at {path}, and no model registry to look {str(path)!r} up in")
    return ModelRegistry(registry_root).path(str(ref_or_path))
