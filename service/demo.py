"""The demo data source ("Embedded default"): the synthetic scene the packaged model fits
(:data:`cropstar.model.default_model.DEMO_SCENE`), synthesised on first use into the cache folder,
atomically (a temporary folder renamed into place, so concurrent workers never see half a scene), and
reused afterwards."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from cropstar import __version__
from cropstar.files import replace_folder
from cropstar.model.default_model import DEMO_SCENE

#: Written last into a finished demo folder.
COMPLETE = "complete.json"


def demo_scene_dir(cache_dir: Path) -> Path:
    """The demo scene's folder in ``cache_dir`` (named by the scene's parameters and cropstar's version,
    so a new generator never reuses an old scene)."""
    key = "-".join(f"{name}{value}" for name, value in sorted(DEMO_SCENE.items()))
    return Path(cache_dir) / f"demo-scene-{key}-cropstar{__version__}"


def ensure_demo_scene(cache_dir: Path) -> Path:
    """The demo scene folder (``cube/``, ``fields.geojson``, ``truth/``), synthesised if missing."""
    from cropstar.data.synthetic import make_scene, write_scene

    folder = demo_scene_dir(cache_dir)
    if (folder / COMPLETE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        write_scene(make_scene(**DEMO_SCENE), tmp)
        (tmp / COMPLETE).write_text(json.dumps({"scene": DEMO_SCENE, "cropstar": __version__}) + "\n")
        if (folder / COMPLETE).is_file():  # another worker finished first
            return folder
        if folder.exists():
            replace_folder(tmp, folder)  # an unfinished leftover
        else:
            try:
                os.rename(tmp, folder)
            except OSError:
                if not (folder / COMPLETE).is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
