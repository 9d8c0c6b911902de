"""Class table: external codes ↔ contiguous ids ↔ names, legends, unknown codes named in errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cropstar.data.class_table import ClassTable, load_class_table, normalise_code, read_legend
from cropstar.errors import DataError, InputError


def test_normalise_code_forms() -> None:
    assert normalise_code(1101060000) == "1101060000"
    assert normalise_code(np.int64(7)) == "7"
    assert normalise_code(12.0) == "12"  # pandas reads integer columns with gaps as floats
    assert normalise_code("11-01-06-000-0") == "1101060000"  # WorldCereal legend form
    assert normalise_code("00-00-00-000-0") == "0"
    assert normalise_code(" BTH ") == "BTH"
    for missing in (None, float("nan"), "  "):
        with pytest.raises(DataError, match="missing class code"):
            normalise_code(missing)


def test_code_id_name_round_trip() -> None:
    codes = [3300, 1101060000, 3300, 200, "BTH"]
    table = ClassTable.from_codes(codes, {"1101060000": "maize", "200": "grass"})
    assert table.codes == ["200", "3300", "1101060000", "BTH"]  # numeric order, then text
    assert table.names == ["grass", "3300", "maize", "BTH"]  # unnamed codes are named by themselves
    ids = table.encode(codes)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [1, 2, 1, 0, 3])
    np.testing.assert_array_equal(table.decode(ids), ["3300", "1101060000", "3300", "200", "BTH"])
    assert [table[i].name for i in ids] == ["3300", "maize", "3300", "grass", "BTH"]
    assert table.id_of("1101060000") == 2 and table.name_of(1101060000) == "maize"
    again = ClassTable.from_records(json.loads(json.dumps(table.to_records())))
    assert again == table
    assert table.to_records()[2] == {"id": 2, "code": "1101060000", "name": "maize"}


def test_encode_shapes_missing_and_decode_ignore() -> None:
    table = ClassTable.from_codes([1, 2])
    ids = table.encode(np.array([[1, None], [2, float("nan")]], dtype=object))
    np.testing.assert_array_equal(ids, [[0, -1], [1, -1]])
    np.testing.assert_array_equal(table.decode([-1, 1]), ["", "2"])
    with pytest.raises(DataError, match="class id 5"):
        table.decode([5])


def test_unknown_code_error_names_the_code() -> None:
    table = ClassTable.from_codes([1101060000], {"1101060000": "maize"})
    with pytest.raises(DataError, match=r"unknown class code\(s\) '9999' \(2×\)"):
        table.encode([1101060000, 9999, 9999])
    with pytest.raises(DataError, match="unknown class code '42'"):
        table.id_of(42)
    np.testing.assert_array_equal(table.encode([9999, 1101060000], unknown="ignore"), [-1, 0])
    assert 9999 not in table and "1101060000" in table


def test_invalid_tables_are_rejected() -> None:
    with pytest.raises(DataError, match="appears twice"):
        ClassTable.from_records([{"id": 0, "code": "1"}, {"id": 1, "code": "1"}])
    with pytest.raises(DataError, match="contiguous"):
        ClassTable.from_records([{"id": 0, "code": "1"}, {"id": 2, "code": "2"}])
    with pytest.raises(DataError, match="need 'id' and 'code'"):
        ClassTable.from_records([{"code": "1"}])


def test_select_renumbers() -> None:
    table = ClassTable.from_codes([10, 20, 30], {"30": "c"})
    sub = table.select([30, 10])
    assert sub.to_records() == [{"id": 0, "code": "10", "name": "10"}, {"id": 1, "code": "30", "name": "c"}]
    with pytest.raises(DataError, match="unknown"):
        table.select([40])


def test_read_legend_worldcereal_style(tmp_path: Path) -> None:
    path = tmp_path / "legend.csv"
    path.write_text(
        "\ufeffewoc_code;level_1;label_full\n11-01-06-000-0;temporary_crops;maize\n20-00-00-000-0;grass;\n",
        encoding="utf-8",
    )
    assert read_legend(path) == {"1101060000": "maize", "2000000000": "2000000000"}


def test_read_legend_two_columns_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("CODE,LABEL\nBTH,soft wheat\nMIS,maize\n")
    assert read_legend(path) == {"BTH": "soft wheat", "MIS": "maize"}
    with pytest.raises(InputError, match="no name column 'nom'"):
        read_legend(path, name_column="nom")
    with pytest.raises(InputError, match="legend file not found"):
        read_legend(tmp_path / "absent.csv")


def test_load_class_table_from_json(tmp_path: Path) -> None:
    table = ClassTable.from_codes([1, 2], {"1": "a"})
    (tmp_path / "list.json").write_text(json.dumps(table.to_records()))
    (tmp_path / "model.json").write_text(json.dumps({"classes": table.to_records(), "bands": ["B02"]}))
    assert load_class_table(tmp_path / "list.json") == table
    assert load_class_table(tmp_path / "model.json") == table
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        load_class_table(tmp_path / "bad.json")
