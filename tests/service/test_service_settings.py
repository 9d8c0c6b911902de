"""Service settings (environment, YAML, precedence, validation), API key hashing and the demo cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cropstar.errors import InputError
from service.demo import COMPLETE, demo_scene_dir, ensure_demo_scene
from service.security import exposure_warning, find_key, hash_key
from service.settings import DEMO_SOURCE, ApiKey, Settings, load_settings


def test_defaults_serve_the_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CROPSTAR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.data_sources == {"demo": DEMO_SOURCE} and settings.source_name == "demo"
    assert settings.default_model is None and settings.registry is None and settings.api_keys == []
    assert settings.cache_dir == tmp_path / "cropstar" and settings.scratch_dir == tmp_path / "cropstar" / "service"
    assert not settings.read_requires_key and settings.cors_origins == []


def test_yaml_then_environment_then_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(
        "registry: /srv/models\nread_requires_key: true\nlimits:\n  max_features: 50\n  max_area_ha: 10\n"
        "data_sources:\n  munich: /data/munich\n"
    )
    monkeypatch.setenv("CROPSTAR_CONFIG", str(config))
    monkeypatch.setenv("CROPSTAR_LIMITS__MAX_FEATURES", "20")
    monkeypatch.setenv("CROPSTAR_CACHE_DIR", str(tmp_path / "cache"))
    settings = load_settings(read_requires_key=False)
    assert settings.registry == Path("/srv/models")
    assert settings.limits.max_features == 20 and settings.limits.max_area_ha == 10  # env over YAML, merged
    assert settings.read_requires_key is False  # arguments over everything
    assert settings.data_sources == {"munich": "/data/munich"} and settings.cache_dir == tmp_path / "cache"


def test_the_shipped_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "configs" / "service.yaml"
    settings = load_settings(example)
    assert settings.data_sources["demo"] == DEMO_SOURCE
    assert settings.limits.max_features > 0


def test_bad_settings_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("limits: [1, 2\n")
    with pytest.raises(InputError, match="cannot read service settings"):
        load_settings(broken)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data_source: {}\n")
    with pytest.raises(ValidationError, match="data_source"):
        load_settings(typo)
    with pytest.raises(ValidationError, match="64 hex digits"):
        Settings(api_keys=[{"name": "plain", "hash": "my-secret-key"}])
    with pytest.raises(ValidationError, match="names must be"):
        Settings(data_sources={"../x": "/data"})
    with pytest.raises(ValidationError, match="at least one data source"):
        Settings(data_sources={})
    with pytest.raises(ValidationError, match="default_source"):
        Settings(default_source="nowhere")
    with pytest.raises(ValidationError, match="max_body_bytes"):
        Settings(limits={"max_body_bytes": 0})


def test_keys_are_stored_hashed_and_compared_whole() -> None:
    assert hash_key("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    keys = [ApiKey(name="a", hash=hash_key("key-a")), ApiKey(name="b", hash=hash_key("key-b"), scopes=["read"])]
    assert find_key(keys, "key-b").name == "b"
    assert find_key(keys, "key-") is None and find_key(keys, "") is None
    assert ApiKey(name="upper", hash=hash_key("x").upper().replace("SHA256", "sha256")).hash == hash_key("x")


def test_demo_scene_is_made_once_and_reused(service_cache_dir: Path) -> None:
    folder = ensure_demo_scene(service_cache_dir)
    assert folder == demo_scene_dir(service_cache_dir) and (folder / COMPLETE).is_file()
    assert (folder / "cube" / "metadata.json").is_file() and (folder / "fields.geojson").is_file()
    stamp = (folder / COMPLETE).stat().st_mtime_ns
    assert ensure_demo_scene(service_cache_dir) == folder
    assert (folder / COMPLETE).stat().st_mtime_ns == stamp
    assert not [p for p in service_cache_dir.iterdir() if p.name.startswith(".")]  # no temporary left


def test_listening_beyond_this_machine_with_open_reads_is_warned_about() -> None:
    open_reads = Settings()
    assert exposure_warning("127.0.0.1", open_reads) is None and exposure_warning("localhost", open_reads) is None
    warning = exposure_warning("0.0.0.0", open_reads)
    assert warning is not None and "read_requires_key: true" in warning and "--hash-key" in warning
    keyed = Settings(read_requires_key=True, api_keys=[{"name": "ops", "hash": hash_key("k" * 32)}])
    assert exposure_warning("0.0.0.0", keyed) is None
