"""Atomic result-file writing: readers see the old file or the whole new one, never a temp file."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from cropstar.files import write_csv_atomic, write_text_atomic


def test_write_text_creates_parents_and_returns_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    assert write_text_atomic(target, "hello\n") == target
    assert target.read_text() == "hello\n"
    assert os.listdir(target.parent) == ["out.txt"]


def test_write_text_replaces_content_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old content that is longer than the new one")
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}"
    write_text_atomic(target, "second ‖∂L/∂h‖ α")
    assert target.read_text() == "second ‖∂L/∂h‖ α"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_write_text_replaces_rather_than_rewrites(tmp_path: Path) -> None:
    """os.replace swaps in a new inode: a reader holding the old file still sees the old text."""
    target = tmp_path / "out.txt"
    target.write_text("old")
    with target.open() as reader:
        write_text_atomic(target, "new")
        assert reader.read() == "old"
    assert target.read_text() == "new"


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    with pytest.raises(TypeError):
        write_text_atomic(target, b"bytes are not text")  # type: ignore[arg-type]
    assert target.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = [
        {"cell": "star", "layers": 1, "ratio": 0.5, "note": "a, b"},
        {"cell": "lstm", "layers": 8, "ratio": 1e-3, "note": 'say "hi"\nthere'},
    ]
    target = tmp_path / "sub" / "table.csv"
    assert write_csv_atomic(target, rows) == target
    with target.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["cell", "layers", "ratio", "note"]
        back = list(reader)
    assert back == [{k: str(v) for k, v in row.items()} for row in rows]
    assert os.listdir(target.parent) == ["table.csv"]


def test_csv_rejects_rows_with_unexpected_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_csv_atomic(tmp_path / "t.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert not (tmp_path / "t.csv").exists()
    assert os.listdir(tmp_path) == []


def test_csv_of_no_rows_is_empty_table(tmp_path: Path) -> None:
    target = write_csv_atomic(tmp_path / "empty.csv", [])
    with target.open(newline="") as handle:
        assert list(csv.DictReader(handle)) == []
