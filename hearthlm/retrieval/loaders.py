"""Loaders: files to sections of text with their metadata (source, page, heading path).

A file that cannot be loaded is skipped with a reason; a run never stops because of one file.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED = (".txt", ".md", ".markdown", ".pdf", ".html", ".htm", ".json", ".jsonl")


@dataclass
class Section:
    """A piece of a file that splits on its own: a page, a markdown section, a JSON record."""

    text: str
    offset: int = 0  # character offset of ``text`` in the file's extracted text
    page: int | None = None
    heading: str = ""
    record: str | None = None  # a JSON record's id or line number


@dataclass
class Skipped:
    path: str
    reason: str


class LoadError(Exception):
    """Raised inside a loader; becomes a :class:`Skipped` entry in the run summary."""


@dataclass
class LoaderOptions:
    json_text_fields: Sequence[str] = ("text",)
    json_id_field: str | None = None


def walk(
    root: Path, include: Sequence[str] = ("**/*",), exclude: Sequence[str] = ()
) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself) matching an include glob and no exclude glob."""
    if root.is_file():
        yield root
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not any(_match(rel, g) for g in include):
            continue
        if any(_match(rel, g) for g in exclude):
            continue
        yield path


def _match(rel: str, pattern: str) -> bool:
    # fnmatch's "*" already crosses "/", so "**/" may also match nothing (top-level files).
    return fnmatch.fnmatch(rel, pattern) or (
        pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:])
    )


def load_file(path: Path, options: LoaderOptions | None = None) -> list[Section]:
    """Sections of ``path``.

    Raises:
        LoadError: unsupported type, unreadable, undecodable, or empty.
    """
    options = options or LoaderOptions()
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(f"unsupported file type {path.suffix or '(none)'}")
    try:
        sections = loader(path, options)
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}") from None
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise LoadError("empty: no text to index")
    return sections


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise LoadError("binary content in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(
            f"not UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 1]!r}); "
            "convert it to UTF-8"
        ) from None


def _load_txt(path: Path, options: LoaderOptions) -> list[Section]:
    return [Section(_read_text(path))]


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _load_markdown(path: Path, options: LoaderOptions) -> list[Section]:
    """One section per heading, each carrying its heading path ("Guide > Install > Linux")."""
    text = _read_text(path)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    starts = [(m.start(), len(m.group(1)), m.group(2)) for m in _HEADING.finditer(text)]
    if not starts or starts[0][0] > 0:
        sections.append(Section(text[: starts[0][0] if starts else len(text)], 0))
    for i, (start, level, title) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        heading = " > ".join(t for _, t in stack)
        sections.append(Section(text[start:end], start, heading=heading))
    return sections


def _load_pdf(path: Path, options: LoaderOptions) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise LoadError("encrypted PDF; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"corrupt PDF: {exc}") from None
    sections, offset = [], 0
    for number, page_text in enumerate(pages, start=1):
        sections.append(Section(page_text, offset, page=number))
        offset += len(page_text) + 1
    return sections


def _load_html(path: Path, options: LoaderOptions) -> list[Section]:
    """The main text: <main> or <article> when present, without scripts, menus and footers."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "aside", "form"]):
        tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    lines = (line.strip() for line in root.get_text("\n").splitlines())
    title = soup.title.get_text(strip=True) if soup.title else ""
    return [Section("\n".join(line for line in lines if line), heading=title)]


def _load_json(path: Path, options: LoaderOptions) -> list[Section]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    records = data if isinstance(data, list) else [data]
    return [s for i, r in enumerate(records, 1) if (s := _record(r, str(i), options))]


def _load_jsonl(path: Path, options: LoaderOptions) -> list[Section]:
    sections, bad = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        section = _record(record, str(number), options)
        if section:
            sections.append(section)
    if bad and not sections:
        raise LoadError(f"no valid JSON line (first bad line {bad[0]})")
    return sections


def _record(record: Any, where: str, options: LoaderOptions) -> Section | None:
    if not isinstance(record, dict):
        return None
    parts = [str(record[f]) for f in options.json_text_fields if record.get(f)]
    if not parts:
        return None
    ident = record.get(options.json_id_field) if options.json_id_field else None
    return Section("\n".join(parts), record=str(ident) if ident is not None else where)


_LOADERS: dict[str, Callable[[Path, LoaderOptions], list[Section]]] = {
    ".txt": _load_txt,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".pdf": _load_pdf,
    ".html": _load_html,
    ".htm": _load_html,
    ".json": _load_json,
    ".jsonl": _load_jsonl,
}
