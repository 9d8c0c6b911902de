"""The class table: external class codes (LPIS, WorldCereal ``ewoc_code``, …) ↔ contiguous ids
0…K−1 ↔ names (DESIGN.md, "Data contracts": labels and the class table; docs/data-formats.md).

Codes are strings. :func:`normalise_code` turns what files hold into that string form: integers
(and integral floats, as pandas reads integer columns with gaps) print as integers, WorldCereal's
dashed legend form ``11-01-06-000-0`` loses its dashes and leading zeros (the parquet files hold
the same code as the integer ``1101060000``), anything else is stripped text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cropstar.errors import DataError, InputError

#: What to do with a code that the class table does not hold.
UnknownCodes = Literal["error", "ignore"]

_EWOC_DASHED = re.compile(r"^\d{2}-\d{2}-\d{2}-\d{3}-\d$")
#: Legend columns recognised without being named (first match wins).
LEGEND_CODE_COLUMNS = ("ewoc_code", "code", "class_code", "CODE_CULTU", "code_cultu")
LEGEND_NAME_COLUMNS = ("label_full", "name", "class_name", "label", "LIBELLE_CULTURE", "libelle_culture")


def normalise_code(value: Any) -> str:
    """The string form of one class code (see the module docstring); missing values raise DataError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DataError("missing class code (empty / NaN)")
    if isinstance(value, (bool, np.bool_)):
        raise DataError(f"class code {value!r} is a boolean, not a code")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    text = str(value).strip()
    if not text:
        raise DataError("missing class code (empty string)")
    if _EWOC_DASHED.match(text):
        return str(int(text.replace("-", "")))
    return text


def _sort_key(code: str) -> tuple[int, int | str]:
    """Numeric codes in numeric order, then text codes in text order."""
    return (0, int(code)) if code.isdigit() else (1, code)


@dataclass(frozen=True)
class ClassEntry:
    """One class: contiguous ``id``, external ``code`` (a string) and human ``name``."""

    id: int
    code: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "name": self.name}


class ClassTable:
    """External codes ↔ contiguous ids 0…K−1 ↔ names.

    ``ClassTable.from_codes([1101060000, 1201000000], names)`` numbers the distinct codes in
    sorted order; :meth:`encode` maps codes to ids (−1 = ignore), :meth:`decode` ids back to codes.
    Stored as records ``[{"id": 0, "code": "1101060000", "name": "maize"}, …]``.
    """

    def __init__(self, entries: Sequence[ClassEntry]) -> None:
        entries = list(entries)
        for position, entry in enumerate(entries):
            if entry.id != position:
                raise DataError(
                    f"class table ids must be contiguous 0…{len(entries) - 1} in order; "
                    f"position {position} holds id {entry.id} (code {entry.code!r})"
                )
        self._entries: tuple[ClassEntry, ...] = tuple(entries)
        self._ids: dict[str, int] = {}
        for entry in self._entries:
            if entry.code in self._ids:
                raise DataError(f"class code {entry.code!r} appears twice in the class table")
            self._ids[entry.code] = entry.id

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes: Iterable[Any], names: Mapping[str, str] | None = None) -> ClassTable:
        """A table of the distinct ``codes`` (numbered in sorted order), named from ``names``
        (code → name, codes in :func:`normalise_code` form); a code without a name is named by itself."""
        distinct = sorted({normalise_code(code) for code in codes}, key=_sort_key)
        names = names or {}
        return cls([ClassEntry(i, code, str(names.get(code, code))) for i, code in enumerate(distinct)])

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> ClassTable:
        """The inverse of :meth:`to_records`; records may come in any order of ids."""
        try:
            entries = [
                ClassEntry(int(r["id"]), normalise_code(r["code"]), str(r.get("name", r["code"])))
                for r in records
            ]
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"class table records need 'id' and 'code' (and 'name'): {error}") from None
        return cls(sorted(entries, key=lambda e: e.id))

    def to_records(self) -> list[dict[str, Any]]:
        return [entry.to_dict() for entry in self._entries]

    # lookup --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ClassEntry]:
        return iter(self._entries)

    def __getitem__(self, class_id: int) -> ClassEntry:
        if not 0 <= class_id < len(self._entries):
            raise DataError(f"class id {class_id} outside the class table (0…{len(self._entries) - 1})")
        return self._entries[class_id]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassTable) and self._entries == other._entries

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self._entries[:5]) + (" …" if len(self) > 5 else "")
        return f"ClassTable({len(self)} classes: {names})"

    @property
    def codes(self) -> list[str]:
        return [entry.code for entry in self._entries]

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self._entries]

    def __contains__(self, code: object) -> bool:
        try:
            return normalise_code(code) in self._ids
        except DataError:
            return False

    def id_of(self, code: Any) -> int:
        """The id of one external code; an unknown code raises DataError naming it."""
        key = normalise_code(code)
        if key not in self._ids:
            raise DataError(f"unknown class code {key!r}: not in the class table ({self._describe()})")
        return self._ids[key]

    def name_of(self, code: Any) -> str:
        return self._entries[self.id_of(code)].name

    def encode(self, codes: Iterable[Any] | np.ndarray, *, unknown: UnknownCodes = "error") -> np.ndarray:
        """Codes (any shape) → int64 ids of the same shape. Unknown codes raise DataError naming them
        (``unknown="error"``) or become −1 (``"ignore"``); missing values (None/NaN) always become −1."""
        array = np.asarray(codes, dtype=object)
        flat = array.ravel()
        out = np.full(flat.shape, -1, dtype=np.int64)
        cache: dict[Any, tuple[int, str | None]] = {}
        missing: dict[str, int] = {}
        for i, value in enumerate(flat):
            hit = (-1, None) if isinstance(value, float) and math.isnan(value) else cache.get(value)
            if hit is None:
                try:
                    code: str | None = normalise_code(value)
                except DataError:
                    code = None  # None / NaN / empty: ignore
                hit = (self._ids.get(code, -1) if code is not None else -1, code)
                cache[value] = hit
            if hit[0] < 0 and hit[1] is not None:
                missing[hit[1]] = missing.get(hit[1], 0) + 1
            out[i] = hit[0]
        if missing and unknown == "error":
            listed = ", ".join(f"{code!r} ({n}×)" for code, n in list(missing.items())[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(
                f"unknown class code(s) {listed}{more}: not in the class table ({self._describe()})"
            )
        return out.reshape(array.shape)

    def decode(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Ids (any shape) → code strings; −1 becomes ``""``; an id outside the table raises DataError."""
        array = np.asarray(ids, dtype=np.int64)
        bad = array[(array < -1) | (array >= len(self))]
        if bad.size:
            raise DataError(f"class id {int(bad.flat[0])} outside the class table (0…{len(self) - 1})")
        lookup = np.array([*self.codes, ""], dtype=object)
        return lookup[array]

    def select(self, codes: Iterable[Any]) -> ClassTable:
        """A new table holding only ``codes`` (renumbered contiguously, in this table's order)."""
        keep = {normalise_code(code) for code in codes}
        unknown = keep - set(self._ids)
        if unknown:
            raise DataError(f"cannot select unknown class code(s) {sorted(unknown)} from the class table")
        chosen = [e for e in self._entries if e.code in keep]
        return ClassTable([ClassEntry(i, e.code, e.name) for i, e in enumerate(chosen)])

    def _describe(self) -> str:
        shown = ", ".join(f"{e.code}={e.name}" for e in self._entries[:6])
        return f"{len(self)} classes: {shown}{', …' if len(self) > 6 else ''}"


def read_legend(
    path: Path, *, code_column: str | None = None, name_column: str | None = None
) -> dict[str, str]:
    """A legend file (CSV / TSV / ``;``-separated, UTF-8 with or without BOM) → {code: name}.

    Columns default to the first of :data:`LEGEND_CODE_COLUMNS` / :data:`LEGEND_NAME_COLUMNS` present
    (WorldCereal's ``crop_type_class_mappings.csv``: ``ewoc_code`` and ``label_full``), else the
    first two columns. Codes are normalised (:func:`normalise_code`).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"legend file not found: {path}")
    try:
        table = pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig", dtype=str)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as error:
        raise InputError(f"cannot read legend {path}: {error}") from None
    columns = list(table.columns)

    def pick(given: str | None, candidates: Sequence[str], fallback: int, what: str) -> str:
        if given is not None:
            if given not in columns:
                raise InputError(
                    f"legend {path} has no {what} column {given!r}; columns: {', '.join(columns)}"
                )
            return given
        for candidate in candidates:
            if candidate in columns:
                return candidate
        if len(columns) > fallback:
            return columns[fallback]
        raise InputError(f"legend {path}: cannot find a {what} column among {', '.join(columns)}")

    code_col = pick(code_column, LEGEND_CODE_COLUMNS, 0, "code")
    name_col = pick(name_column, LEGEND_NAME_COLUMNS, 1, "name")
    legend: dict[str, str] = {}
    for row, (code, name) in enumerate(zip(table[code_col], table[name_col], strict=True), start=2):
        if code is None or (isinstance(code, float) and math.isnan(code)):
            continue
        try:
            key = normalise_code(code)
        except DataError:
            continue
        if isinstance(name, str) and name.strip():
            legend.setdefault(key, name.strip())
        else:
            legend.setdefault(key, key)
    if not legend:
        raise InputError(f"legend {path}: no codes in column {code_col!r}")
    return legend


def load_class_table(path: Path) -> ClassTable:
    """A class table from JSON: a list of records, or an object with ``class_table`` or ``classes``
    (a dataset's or model's metadata file), or a cropstar dataset folder (its group attributes)."""
    path = Path(path)
    if path.is_dir():
        path = path / "zarr.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"class table file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read class table {path}: {error}") from None
    if isinstance(document, dict):
        document = document.get("attributes", document)
        for key in ("class_table", "classes"):
            if isinstance(document.get(key), list):
                return ClassTable.from_records(document[key])
        raise InputError(f"{path}: no 'class_table' or 'classes' list in the JSON object")
    if isinstance(document, list):
        return ClassTable.from_records(document)
    raise InputError(f"{path}: expected a JSON list of class records")
