"""Every code block of README.md, run in order in one temporary working folder, as a user would
paste them: shell blocks with bash, Python blocks with this interpreter. A block that stops working
fails the suite.

What the test changes, and says so:
- SMOKE: the README's sizes made small (a smaller scene, one or two epochs). Each replacement must
  still match the README text, so a README edit cannot silently drop it.
- `pip install …` commands are left out: this environment was installed by the README's own test
  command (the superset of the others), and installing again would need the network.
- A block after `<!-- readme-test: skip (REASON) -->` is skipped with its reason printed (a GPU, a
  cluster, more than a minute); `<!-- readme-test: background -->` starts a server and waits for
  http://127.0.0.1:8000/ready before the next block (it is stopped when the next server starts and at
  the end). A block naming ../shared/data is skipped where the real data is absent.

The working folder holds `configs/` (a link to the repository's) and sits beside a `shared` link to
the repository's ../shared, so relative paths resolve as they do from a checkout.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"
PORT = 8000
BLOCK_TIMEOUT_S = 240  # a safety net: blocks that take more than a minute are marked skip

#: README text → its smoke-size version.
SMOKE = {
    "--layers 12 --steps 30 --runs 200": "--layers 4 --steps 10 --runs 2",
    "num_layers=12, num_steps=30, runs=200": "num_layers=4, num_steps=10, runs=2",
    "cropstar synth --out demo --size 128": "cropstar synth --out demo --size 64",
    "cropstar synth --out season2 --seed 2": "cropstar synth --out season2 --seed 2 --size 64",
    "--config configs/crop_quick.yaml": "--config configs/crop_quick.yaml --set epochs=2",
    "--set epochs=50": "--set epochs=1 --set model.hidden_size=16",
}
_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(skip|background)\b\s*(?:\((.*)\))?\s*-->")
_PIP_INSTALL = re.compile(r"^\s*pip install [^&#\n]*(?:&&\s*)?(?:#.*)?$|^\s*pip install [^&#\n]*&&\s*", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README: its language, code and the directive before it."""

    number: int
    line: int
    language: str
    code: str
    directive: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.number:02d}-{self.language}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """The bash and python blocks of ``text``, in order, with the directive of the line before each."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        language = opening.group(1)
        if language in ("bash", "sh", "python"):
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            directive = _DIRECTIVE.search(before)
            blocks.append(
                Block(
                    number=len(blocks) + 1,
                    line=i + 1,
                    language="python" if language == "python" else "bash",
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    directive=directive.group(1) if directive else None,
                    reason=(directive.group(2) or "") if directive else "",
                )
            )
        i = end + 1
    return blocks


def smoke_size(code: str) -> str:
    """``code`` with the SMOKE replacements and without its pip install commands."""
    for old, new in SMOKE.items():
        code = code.replace(old, new)
    return _PIP_INSTALL.sub("", code)


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_blocks_and_every_smoke_replacement_applies() -> None:
    assert len(BLOCKS) >= 10 and all(b.code.strip() for b in BLOCKS)
    text = "".join(b.code for b in BLOCKS)
    stale = [old for old in SMOKE if old not in text]
    assert not stale, f"SMOKE replacements that no longer match README.md: {stale}"


def test_pip_install_commands_are_left_out_and_the_rest_kept() -> None:
    assert smoke_size("pip install -c constraints.txt -e . && cropstar serve\n") == "cropstar serve\n"
    kept = smoke_size("pip install 'cropstar[export]'   # onnx\ncropstar export --out a.onnx\n")
    assert kept == "\ncropstar export --out a.onnx\n"


# ---------------------------------------------------------------------------------------------
# running the blocks
# ---------------------------------------------------------------------------------------------
class Workspace:
    """The temporary working folder, the environment the blocks run in, and the background server."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "work"
        self.folder.mkdir()
        (self.folder / "configs").symlink_to(REPO / "configs")
        if SHARED.is_dir():
            (root / "shared").symlink_to(SHARED)
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CROPSTAR_")},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "XDG_CACHE_HOME": str(root / "cache"),  # the service's demo scene, not the user's cache
            "PYTHONUNBUFFERED": "1",
        }
        self.server: subprocess.Popen[str] | None = None
        self.server_log = root / "server.log"
        self.failed: str | None = None

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        code = smoke_size(block.code)
        command = [sys.executable, "-c", code] if block.language == "python" else ["bash", "-c", code]
        if block.language == "bash":
            command[1:1] = ["-e", "-o", "pipefail"]
        return subprocess.run(
            command,
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,  # the caller reports the block's output when it fails
        )

    def start_server(self, block: Block) -> None:
        self.stop_server()
        if _port_in_use(PORT):
            pytest.skip(f"port {PORT} is in use here: the README's server cannot start")
        log = self.server_log.open("w")
        self.server = subprocess.Popen(
            ["bash", "-c", smoke_size(block.code)],
            cwd=self.folder,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                pytest.fail(f"the server exited ({self.server.returncode}):\n{self.server_log.read_text()}")
            if _ready(PORT):
                return
            time.sleep(0.5)
        pytest.fail(f"the server was not ready in 180 s:\n{self.server_log.read_text()[-3000:]}")

    def stop_server(self) -> None:
        if self.server is None:
            return
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
        self.server = None
        deadline = time.monotonic() + 30
        while _port_in_use(PORT) and time.monotonic() < deadline:
            time.sleep(0.2)


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    space = Workspace(tmp_path_factory.mktemp("readme"))
    try:
        yield space
    finally:
        space.stop_server()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, workspace: Workspace) -> None:
    if block.directive == "skip":
        pytest.skip(f"README line {block.line}: {block.reason or 'marked skip'}")
    if "../shared/data" in block.code and not SHARED.is_dir():
        pytest.skip(f"README line {block.line}: needs the real data in {SHARED}")
    if workspace.failed is not None:
        pytest.skip(f"an earlier README block failed ({workspace.failed})")
    workspace.failed = block.id  # until it passes
    if block.directive == "background":
        workspace.start_server(block)
    else:
        result = workspace.run(block)
        assert result.returncode == 0, (
            f"README block at line {block.line} failed ({result.returncode}):\n{smoke_size(block.code)}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    workspace.failed = None
