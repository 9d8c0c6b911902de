"""docker/Dockerfile and docker/compose.yaml against the code they package (no Docker engine needed):
build paths and COPY sources exist, the CPU torch comes first, the environment variables are settings
the service reads, the scheduler the service is pointed at is the one the workers join, the health check
asks a route of the app, and docs/rest-api.md lists every setting."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from service.settings import CONFIG_ENV, Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DASK_SCHEDULER_PORT = 8786  # dask scheduler's default --port
#: A short-syntax volume: SOURCE (perhaps a ${VAR:-default}) : TARGET [: MODE].
_VOLUME = re.compile(r"^((?:\$\{[^}]*\}|[^:$])+):([^:]+)(?::([^:]+))?$")


# ---------------------------------------------------------------------------------------------
# reading the files
# ---------------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path} ends inside a continued instruction"
    return instructions


def words(arguments: str) -> list[str]:
    """The words of an instruction's arguments: exec form (a JSON array) or shell form."""
    if arguments.startswith("["):
        return json.loads(arguments)
    return shlex.split(arguments)


def run_commands(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """Every simple command of the RUN instructions (split at && and ;), as words."""
    commands = []
    for keyword, arguments in instructions:
        if keyword == "RUN":
            for part in re.split(r"&&|;", arguments):
                if part.strip():
                    commands.append(shlex.split(part))
    return commands


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def command_words(service: dict[str, Any], key: str) -> list[str]:
    value = service.get(key) or []
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of a service's short-syntax volumes."""
    mounts = []
    for entry in service.get("volumes") or []:
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        match = _VOLUME.match(entry)
        assert match, f"not SOURCE:TARGET[:MODE]: {entry!r}"
        source, target, mode = match.groups()
        mounts.append((source, target, "ro" in (mode or "").split(",")))
    return mounts


def option(args: list[str], name: str, default: str | None = None) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in ``args``."""
    for i, word in enumerate(args):
        if word == name and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return default


def settings_env_names() -> set[str]:
    """The environment variables the service's settings read: the env prefix and each field's name,
    nested models' fields joined by the nested delimiter, and the settings-file variable."""
    config = Settings.model_config
    prefix, delimiter = config.get("env_prefix", ""), config.get("env_nested_delimiter")
    names = {CONFIG_ENV}
    for name, field in Settings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        kind = field.annotation
        if delimiter and isinstance(kind, type) and issubclass(kind, BaseModel):
            names.update(f"{prefix}{name}{delimiter}{inner}".upper() for inner in kind.model_fields)
    return names


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------
def test_dockerfile_installs_the_cpu_torch_pin_before_the_project() -> None:
    commands = run_commands(dockerfile_instructions())
    pins = re.findall(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), flags=re.MULTILINE)
    assert len(pins) == 1, "constraints.txt pins torch once"
    torch_at = next(
        (i for i, c in enumerate(commands) if c[:2] == ["pip", "install"] and f"torch=={pins[0]}" in c), None
    )
    assert torch_at is not None, f"no RUN pip install torch=={pins[0]} (the pin of constraints.txt)"
    torch_install = commands[torch_at]
    assert option(torch_install, "--index-url") == TORCH_CPU_INDEX, torch_install
    project_at = next(
        (i for i, c in enumerate(commands) if c[:2] == ["pip", "install"] and "." in c[2:]), None
    )
    assert project_at is not None, "no RUN pip install ."
    assert torch_at < project_at, "the CPU torch must be installed before the project"
    assert option(commands[project_at], "--constraint", option(commands[project_at], "-c")) == (
        "constraints.txt"
    ), "pip install . keeps the torch pin (-c constraints.txt)"


def test_dockerfile_copy_sources_exist_and_are_sent_to_the_build() -> None:
    ignored = [
        line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]  # fmt: skip
    copies = [
        words(arguments) for keyword, arguments in dockerfile_instructions() if keyword in ("COPY", "ADD")
    ]
    assert copies, "the Dockerfile copies nothing"
    for copy in copies:
        sources = [w for w in copy[:-1] if not w.startswith("--")]
        assert sources, copy
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source!r} is not in the repository"
            hit = [
                p for p in ignored if fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source, p.lstrip("*/"))
            ]
            assert not hit, f"COPY source {source!r} is excluded by .dockerignore ({hit[0]})"
    assert (REPO / "cropstar" / "default_model" / "model.json").is_file(), (
        "the packaged model goes in the image"
    )


def test_dockerfile_runs_the_service_as_non_root_on_its_exposed_port() -> None:
    instructions = dockerfile_instructions()
    last = {keyword: arguments for keyword, arguments in instructions}
    assert last["FROM"] == "python:3.11-slim"
    user = last["USER"]
    uid_lines = [c for c in run_commands(instructions) if c[:1] == ["useradd"]]
    assert uid_lines and option(uid_lines[0], "--uid") == "1000" and uid_lines[0][-1] == user
    assert words(last["ENTRYPOINT"]) == ["cropstar"]
    command = words(last["CMD"])
    assert command[0] == "serve" and option(command, "--host") == "0.0.0.0"
    assert words(last["EXPOSE"]) == [option(command, "--port")]


def test_dockerfile_health_check_asks_a_route_of_the_app(tmp_path: Path) -> None:
    from service.app import create_app

    instructions = dockerfile_instructions()
    check = dict(instructions)["HEALTHCHECK"]
    urls = re.findall(r"https?://[^'\"\s]+", check)
    assert len(urls) == 1 and "python" in check and "curl" not in check, check
    url = urlsplit(urls[0])
    assert url.hostname in ("127.0.0.1", "localhost")
    assert str(url.port) == words(dict(instructions)["EXPOSE"])[0]
    app = create_app(Settings(cache_dir=tmp_path / "cache", work_dir=tmp_path / "work"))
    paths = app.openapi()["paths"]
    assert "get" in paths.get(url.path, {}), f"{url.path} is not a GET route of the app ({', '.join(paths)})"


def test_dockerfile_env_names_are_settings() -> None:
    env = dockerfile_env(dockerfile_instructions())
    known = settings_env_names()
    ours = [name for name in env if name.upper().startswith("CROPSTAR_")]
    assert ours, "the image sets where the service keeps its state"
    assert not [name for name in ours if name not in known], f"not settings: {sorted(set(ours) - known)}"


# ---------------------------------------------------------------------------------------------
# compose.yaml
# ---------------------------------------------------------------------------------------------
def test_compose_services_build_from_the_repository(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"service", "scheduler", "worker"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        assert build is not None, f"{name}: no build"
        build = {"context": build} if isinstance(build, str) else build
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO, f"{name}: build context {build['context']!r} is not the repository root"
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
        assert dockerfile.is_file(), f"{name}: no Dockerfile {dockerfile}"
        assert service.get("image") == services["service"].get("image"), f"{name}: one image for all"


def test_compose_points_the_service_and_the_workers_at_the_scheduler(compose: dict[str, Any]) -> None:
    services = compose["services"]
    address = environment(services["service"]).get(f"{Settings.model_config['env_prefix']}DASK_SCHEDULER")
    assert address is not None, "the service is not given the dask scheduler"
    url = urlsplit(address)
    assert url.scheme == "tcp" and url.hostname in services, f"{address}: not tcp://<a compose service>:port"
    scheduler = services[url.hostname]
    entry, args = command_words(scheduler, "entrypoint"), command_words(scheduler, "command")
    assert entry + args[:1] == ["dask", "scheduler"], f"{url.hostname} does not run a dask scheduler"
    assert url.port == int(option(args, "--port", str(DASK_SCHEDULER_PORT)))
    worker = services["worker"]
    entry, args = command_words(worker, "entrypoint"), command_words(worker, "command")
    assert entry + args[:1] == ["dask", "worker"], "worker does not run a dask worker"
    assert address in args, f"the workers join {args[1:2]}, the service uses {address}"
    cli = {point.name for point in entry_points(group="dask_cli")}
    assert {"scheduler", "worker"} <= cli, f"the installed dask CLI has no scheduler / worker ({cli})"


def test_compose_env_names_are_settings(compose: dict[str, Any]) -> None:
    known = settings_env_names()
    for name, service in compose["services"].items():
        env = environment(service)
        unknown = [key for key in env if key.upper().startswith("CROPSTAR_") and key not in known]
        assert not unknown, f"{name}: {unknown} are not settings the service reads"


def test_compose_workers_see_the_service_data_at_the_same_paths(compose: dict[str, Any]) -> None:
    """A raster job's workers read its data source's files themselves (the demo scene is in the
    service's cache folder), so every volume of the service is mounted at the same path in the
    workers, read-only there; the service's state folder holds the cache and work folders."""
    services = compose["services"]
    service_mounts = {target: source for source, target, _ in volume_mounts(services["service"])}
    worker_mounts = {target: (source, ro) for source, target, ro in volume_mounts(services["worker"])}
    for target, source in service_mounts.items():
        assert target in worker_mounts, f"the workers do not mount {target} ({source})"
        assert worker_mounts[target] == (source, True), f"{target}: the workers mount {worker_mounts[target]}"
    env = dockerfile_env(dockerfile_instructions())
    env.update(environment(services["service"]))
    for setting in ("CROPSTAR_CACHE_DIR", "CROPSTAR_WORK_DIR"):
        folder = env.get(setting)
        assert folder, f"{setting} is not set in the image"
        assert any(Path(folder).is_relative_to(t) for t in service_mounts), (
            f"{setting}={folder} is on no volume"
        )
    named = [source for source in service_mounts.values() if not source.startswith((".", "/", "$", "~"))]
    assert set(named) <= set(compose.get("volumes") or {}), f"undeclared named volumes {named}"


# ---------------------------------------------------------------------------------------------
# docs
# ---------------------------------------------------------------------------------------------
def test_rest_api_doc_lists_every_setting() -> None:
    """Each setting with its environment variable; a nested one's keys (``limits.max_features``) and
    its variables' prefix (``CROPSTAR_LIMITS__``)."""
    text = (REPO / "docs" / "rest-api.md").read_text()
    prefix, delimiter = Settings.model_config["env_prefix"], Settings.model_config["env_nested_delimiter"]
    missing = []
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            wanted = [f"`{prefix}{name.upper()}{delimiter}"] + [
                f"`{name}.{inner}`" for inner in kind.model_fields
            ]
        else:
            wanted = [f"`{name}`", f"`{prefix}{name.upper()}`"]
        missing += [w for w in wanted if w not in text]
    assert not missing, f"docs/rest-api.md does not list {missing}"
