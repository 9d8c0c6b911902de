"""The C++ step loops of the fused STAR layer (eq. 11–12; ``csrc/star_steps.cpp``), compiled at first use.

:func:`compiled_steps` gives the extension module (``forward_steps``, ``backward_steps`` and the pool
of reusable buffers behind :func:`reusable_empty`) or None, where :mod:`cropstar.nn.fused_star` runs
its Python loops instead (the reference; the same numbers up to float32 rounding in the forward). Its
``inference_steps`` is the float32 loop of :mod:`cropstar.nn.fast_star`, element-wise work fused (its
ATen loop is the fallback; the same numbers up to float32 rounding). The source ships
inside the package; ``torch.utils.cpp_extension.load`` builds it once with ``-O3`` into torch's
extensions folder (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a name that
hashes the source, torch's and Python's versions, so a changed source or another environment never
loads a stale build; later processes only import it.

Builds are serialised across processes by an advisory lock on a file beside torch's build folders,
which the kernel releases if the builder dies: a build killed halfway (which leaves torch's own lock
file behind, on which every later process would wait forever) is detected and its lock file removed.

The Python loops run when :data:`USE_CPP` is False, when the environment variable ``CROPSTAR_NO_CPP``
is set (to anything but "" or "0"), or when the build or import fails (no compiler, no ninja, …); each
reason is logged once, as one warning line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from cropstar.nn.fast_star import WORKSPACE_MAX_BYTES

log = logging.getLogger(__name__)

#: False: STAR's step loops run in Python even where the C++ ones load (tests, comparisons).
USE_CPP: bool = True
#: Set (to anything but "" or "0") to run STAR's step loops in Python.
DISABLE_VARIABLE = "CROPSTAR_NO_CPP"
SOURCE = Path(__file__).with_name("csrc") / "star_steps.cpp"
#: Most memory one thread's pool of reusable buffers keeps (bytes): the saved tensors of a training step.
POOL_MAX_BYTES = 512 * 2**20

_loading = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}
_announced: set[str] = set()


def compiled_steps() -> ModuleType | None:
    """The compiled step loops, built or imported at the first call; None where the Python loops run
    (disabled, or the build failed: the reason logged once)."""
    if not USE_CPP:
        return None
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        _announce(f"{DISABLE_VARIABLE} is set: STAR's step loops run in Python")
        return None
    if "module" not in _loaded:
        with _loading:
            if "module" not in _loaded:
                _loaded["module"] = _build()
    return _loaded["module"]


def step_implementation(device: torch.device | str = "cpu") -> str:
    """Which step loops a dense STAR layer runs on ``device``: "cpp" or "python" (loads them if needed)."""
    return "cpp" if torch.device(device).type == "cpu" and compiled_steps() is not None else "python"


def reusable_empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` (dtype and device of ``like``): on CPU, where the C++ module
    loads, in memory this thread used before that nothing holds any more (no page faults); else fresh."""
    compiled = compiled_steps() if like.device.type == "cpu" else None
    if compiled is None:
        return like.new_empty(shape)
    return compiled.reusable_empty(shape, like, WORKSPACE_MAX_BYTES, POOL_MAX_BYTES)


def extension_name() -> str:
    """The extension's name: a hash of the source and of torch's and Python's versions."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(f"{torch.__version__} {sys.version}".encode())
    return f"cropstar_star_steps_{digest.hexdigest()[:12]}"


def _build() -> ModuleType | None:
    started = time.perf_counter()
    try:
        from torch.utils.cpp_extension import get_default_build_root, load

        name = extension_name()
        build_directory = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
        if not any(build_directory.glob(f"{name}*.so")) and not any(build_directory.glob(f"{name}*.pyd")):
            log.info("compiling STAR's C++ step loops into %s (once, tens of seconds)", build_directory)
        with _build_lock(build_directory):
            module = load(name=name, sources=[str(SOURCE)], extra_cflags=["-O3"],
                          build_directory=str(build_directory), verbose=False)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - no compiler, no ninja, an unwritable cache, …: Python loops
        _announce(f"STAR's step loops run in Python: their C++ build failed ({_first_error(error)})")
        return None
    log.info("STAR's C++ step loops ready (%s, %.1f s)", name, time.perf_counter() - started)
    return module


@contextmanager
def _build_lock(build_directory: Path) -> Iterator[None]:
    """Hold an advisory lock (released by the kernel when its holder dies) around torch's build and
    import; holding it, any torch ``lock`` file in ``build_directory`` is a dead build's: removed."""
    try:
        import fcntl
    except ImportError:  # Windows: torch's own lock file only
        yield
        return
    build_directory.mkdir(parents=True, exist_ok=True)
    with open(build_directory.parent / f"{build_directory.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_directory / "lock"
            if stale.exists():
                log.warning("removing %s, left by a build that did not finish", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_error(error: Exception) -> str:
    """The compiler's first error line if the message holds one (else its last line), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ["no message"]
    line = next((line for line in lines if re.search(r"\berror\b:?\s*C?\d*:", line)), lines[-1])
    return f"{type(error).__name__}: {line[:240]}"


def _announce(reason: str) -> None:
    if reason not in _announced:
        _announced.add(reason)
        log.warning(reason)
