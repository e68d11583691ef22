"""Rows of data from CSV, JSON and JSONL, with malformed rows reported by file and line.

Evaluation records a bad row (undecodable bytes, broken JSON, a missing column, an answer out of
range) in :class:`BadRows` and skips it, so one broken line never costs a whole run; with
``strict=True`` the first one raises instead, which is what training data asks for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearthlm.errors import EvalError, HearthError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One data row: its file, 1-based line (or record number), and field values."""

    path: Path
    line: int
    values: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class BadRows:
    """Malformed rows seen so far: ``"file:line: reason"`` strings."""

    strict: bool = False
    problems: list[str] = field(default_factory=list)
    error: type[HearthError] = EvalError
    hint: str = " (run without --strict to skip such rows)"

    def add(self, path: Path, line: int, reason: str) -> None:
        message = f"{path}:{line}: {reason}"
        if self.strict:
            raise self.error(f"malformed row {message}{self.hint}")
        log.warning("skipping malformed row %s", message)
        self.problems.append(message)

    def __len__(self) -> int:
        return len(self.problems)


def read_rows(path: Path, bad: BadRows) -> Iterator[Row]:
    """Every well-formed row of a ``.csv``, ``.jsonl`` or ``.json`` (a list of objects) file."""
    if not path.is_file():
        raise bad.error(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path, bad)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(path, bad)
    elif suffix == ".json":
        yield from _json_rows(path, bad)
    else:
        raise EvalError(f"{path}: unsupported data format {suffix!r}; use .csv, .jsonl or .json")


def _jsonl_rows(path: Path, bad: BadRows) -> Iterator[Row]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad.add(path, number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                bad.add(path, number, f"not JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(value, dict):
                bad.add(path, number, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield Row(path, number, value)


def _json_rows(path: Path, bad: BadRows) -> Iterator[Row]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise EvalError(f"{path}: expected a JSON list of objects")
    for number, value in enumerate(data, 1):
        if isinstance(value, dict):
            yield Row(path, number, value)  # "line" is the item number in a JSON list
        else:
            bad.add(path, number, f"item {number} is not a JSON object")


def _csv_rows(path: Path, bad: BadRows) -> Iterator[Row]:
    # surrogateescape keeps undecodable bytes visible per record instead of failing the file.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    start = reader.line_num + 1
    for values in reader:
        line, start = start, reader.line_num + 1
        if None in values or any(v is None for v in values.values()):
            bad.add(path, line, f"expected {len(header)} columns, got a different number")
            continue
        if any(_has_surrogates(v) for v in values.values()):
            bad.add(path, line, "not UTF-8")
            continue
        yield Row(path, line, dict(values))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def field_of(row: Row, name: str, bad: BadRows) -> Any:
    """``row[name]``, or None (recorded as bad) when the column is missing or empty."""
    value = row.values.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        bad.add(row.path, row.line, f"missing field {name!r}")
        return None
    return value
