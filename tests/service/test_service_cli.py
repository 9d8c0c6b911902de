"""``cropstar demo fields`` and ``cropstar serve`` (its one-shot options; serving is tested with a real
uvicorn process in test_service_uvicorn.py)."""

from __future__ import annotations

import json
from pathlib import Path

from geojson_rules import rfc7946_problems
from typer.testing import CliRunner

from cropstar.cli import app
from service.security import hash_key

runner = CliRunner()


def test_demo_fields_prints_rfc7946_geojson(demo_fields: dict) -> None:
    result = runner.invoke(app, ["demo", "fields"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert rfc7946_problems(document) == []
    assert document == json.loads(json.dumps(demo_fields))  # the fields of the scene the service serves
    bare = json.loads(runner.invoke(app, ["demo", "fields", "--no-truth"]).stdout)
    assert all(set(f["properties"]) == {"field_id"} for f in bare["features"])


def test_serve_hash_key_prints_the_settings_entry() -> None:
    result = runner.invoke(app, ["serve", "--hash-key", "s3cret"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == hash_key("s3cret")


def test_serve_with_a_bad_config_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "not found" in result.stderr and "Traceback" not in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  max_features: -1\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "limits.max_features" in result.stderr and "Traceback" not in result.output


def test_serve_with_a_missing_data_source_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CROPSTAR_DATA_SOURCES", json.dumps({"fields2026": str(tmp_path / "missing")}))
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "data sources not found" in result.stderr and "fields2026" in result.stderr
