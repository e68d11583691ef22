"""Loaders: files to sections of text with their metadata (source, page, heading path).

A file that cannot be loaded raises :class:`LoadError` with the reason it is skipped. Text-like
files are read in whatever encoding they were saved in (see :mod:`hearthlm.retrieval.encoding`),
and :class:`LoaderOptions` caps what one file may cost: its size, a PDF's pages, JSON's nesting.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import itertools
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hearthlm.retrieval.encoding import decode_text
from hearthlm.retrieval.sections import LoaderOptions, LoadError, Section

__all__ = ["SUPPORTED", "LoadError", "LoaderOptions", "Section", "check_size", "load_file", "walk"]

SUPPORTED = (".txt", ".md", ".markdown", ".pdf", ".html", ".htm", ".json", ".jsonl", ".csv")


def walk(
    root: Path,
    include: Sequence[str] = ("**/*",),
    exclude: Sequence[str] = (),
    *,
    follow_links: bool = True,
    unreadable: list[tuple[Path, str]] | None = None,
) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself) matching an include glob and no exclude glob.

    With ``follow_links``, a folder a symbolic link points to is walked under the link's name
    when it lies outside ``root`` and outside every folder walked so far (one under ``root``
    is walked under its own name, and a link back up does not loop); without, linked folders
    are left out. Folders that cannot be listed are added to ``unreadable`` with the reason,
    so that a caller can tell their files from deleted ones.
    """
    if root.is_file():
        yield root
        return
    found: list[Path] = []
    walked = [root.resolve()]  # the real folders walked, each with everything under it

    def failed(error: OSError) -> None:
        if unreadable is not None:
            unreadable.append((Path(error.filename or root), error.strerror or str(error)))

    for folder, dirs, names in os.walk(root, onerror=failed, followlinks=follow_links):
        linked = [name for name in dirs if Path(folder, name).is_symlink()]
        for name in linked:
            dirs.remove(name)
            if not follow_links:
                continue
            try:
                target = Path(folder, name).resolve(strict=True)
            except OSError as exc:
                failed(exc)
                continue
            if not any(target.is_relative_to(done) for done in walked):
                walked.append(target)
                dirs.append(name)
        found.extend(p for name in names if (p := Path(folder, name)).is_file())
    for path in sorted(found):
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
        LoadError: unsupported type, too large, unreadable, undecodable, or empty. A
            third-party parser may raise other exceptions on pathological files; the indexer
            (:mod:`hearthlm.retrieval.ingest`) turns those into skipped files too.
    """
    options = options or LoaderOptions()
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(f"unsupported file type {path.suffix or '(none)'}")
    try:
        check_size(path, options)
        sections = loader(path, options)
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}") from None
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise LoadError("empty: no text to index")
    return sections


def check_size(path: Path, options: LoaderOptions) -> None:
    """Refuse a file over the size cap before reading any of it.

    Raises:
        LoadError: the file is larger than ``options.max_file_bytes``.
        OSError: the file cannot be examined.
    """
    size = path.stat().st_size
    if size > options.max_file_bytes:
        raise LoadError(
            f"too large: {size / 2**20:.1f} MB, over the {options.max_file_bytes / 2**20:g} MB "
            "limit; raise retrieval.max_file_mb to index it"
        )


def _read_text(path: Path) -> tuple[str, str]:
    return decode_text(path.read_bytes())


def _load_txt(path: Path, options: LoaderOptions) -> list[Section]:
    text, encoding = _read_text(path)
    return [Section(text, encoding=encoding)]


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _load_markdown(path: Path, options: LoaderOptions) -> list[Section]:
    """One section per heading, each carrying its heading path ("Guide > Install > Linux")."""
    text, encoding = _read_text(path)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    fences = _fenced(text)  # "# download it" in a shell block is a comment, not a heading
    starts = [
        (m.start(), len(m.group(1)), m.group(2))
        for m in _HEADING.finditer(text)
        if not any(a <= m.start() < b for a, b in fences)
    ]
    if not starts or starts[0][0] > 0:
        sections.append(Section(text[: starts[0][0] if starts else len(text)], 0))
    for i, (start, level, title) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        heading = " > ".join(t for _, t in stack)
        sections.append(Section(text[start:end], start, heading=heading))
    return _with_encoding(sections, encoding)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.M)


def _fenced(text: str) -> list[tuple[int, int]]:
    """Where ``text``'s fenced code blocks are: from an opening fence to the first fence of the
    same character at least as long (to the end when none closes it), as CommonMark reads them."""
    spans: list[tuple[int, int]] = []
    opening: re.Match[str] | None = None
    for fence in _FENCE.finditer(text):
        if opening is None:
            opening = fence
        elif fence.group(1)[0] == opening.group(1)[0] and len(fence.group(1)) >= len(
            opening.group(1)
        ):
            spans.append((opening.start(), fence.end()))
            opening = None
    if opening is not None:
        spans.append((opening.start(), len(text)))
    return spans


def _load_pdf(path: Path, options: LoaderOptions) -> list[Section]:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(path)
        # an owner password alone (printing or copying restricted) opens with the empty one
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise LoadError("encrypted PDF: it needs a password to open; decrypt it first")
        count = len(reader.pages)
        if count > options.max_pdf_pages:
            raise LoadError(
                f"PDF has {count} pages, over the {options.max_pdf_pages}-page limit; raise "
                "retrieval.max_pdf_pages to index it"
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except DependencyError:
        raise LoadError(
            "encrypted PDF (AES): install the cryptography package to read it"
        ) from None
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

    markup, encoding = _read_text(path)
    soup = BeautifulSoup(markup, "html.parser")
    # a form's controls, not the form: ASP.NET and SharePoint pages wrap the whole page in one
    chrome = ["script", "style", "noscript", "nav", "header", "footer", "aside"]
    for tag in soup([*chrome, "input", "select", "option", "textarea", "button", "label"]):
        tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    lines = (line.strip() for line in root.get_text("\n").splitlines())
    title = soup.title.get_text(strip=True) if soup.title else ""
    text = "\n".join(line for line in lines if line)
    return [Section(text, heading=title, encoding=encoding)]


def _load_json(path: Path, options: LoaderOptions) -> list[Section]:
    text, encoding = _read_text(path)
    try:
        data = _parse_json(text, options.max_json_depth)
    except json.JSONDecodeError as exc:
        raise LoadError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    records = data if isinstance(data, list) else [data]
    sections = [s for i, r in enumerate(records, 1) if (s := _record(r, str(i), options))]
    return _with_encoding(sections, encoding)


def _load_jsonl(path: Path, options: LoaderOptions) -> list[Section]:
    text, encoding = _read_text(path)
    sections, bad = [], []
    # "\n" only: splitlines() also breaks at U+2028 and U+0085, which JSON strings may hold raw
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = _parse_json(line, options.max_json_depth)
        except (json.JSONDecodeError, LoadError):  # invalid or nested too deep: this line only
            bad.append(number)
            continue
        section = _record(record, str(number), options)
        if section:
            sections.append(section)
    if bad and not sections:
        raise LoadError(f"no valid JSON line (first bad line {bad[0]})")
    if bad:  # reported with the file (hearthlm.retrieval.ingest captures it)
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if bad[10:] else "")
        warnings.warn(f"skipped lines that are not valid JSON: {shown}", stacklevel=2)
    return _with_encoding(sections, encoding)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: linear on long strings
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _parse_json(text: str, max_depth: int) -> Any:
    """``json.loads``, after refusing nesting deeper than ``max_depth``.

    Python's parser recurses once per level and raises RecursionError near 1,000 levels, so the
    depth is measured first, without recursion. A text with fewer brackets than the limit cannot
    nest past it, which keeps the measuring off ordinary records.
    """
    if text.count("[") + text.count("{") > max_depth:
        brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
        steps = (1 if c in "[{" else -1 for c in brackets)
        depth = max(itertools.accumulate(steps, initial=0))
        if depth > max_depth:
            raise LoadError(f"JSON nested {depth} levels deep, over the limit of {max_depth}")
    return json.loads(text)


def _load_csv(path: Path, options: LoaderOptions) -> list[Section]:
    """One section per row, as "column: value" lines; the delimiter is sniffed (, ; tab |)."""
    text, encoding = _read_text(path)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        header = next(rows, [])
        sections = []
        for number, row in enumerate(rows, start=2):
            names = header + [f"column {i}" for i in range(len(header) + 1, len(row) + 1)]
            lines = [f"{n}: {v.strip()}" for n, v in zip(names, row, strict=False) if v.strip()]
            if lines:
                sections.append(Section("\n".join(lines), record=str(number)))
    except csv.Error as exc:
        raise LoadError(f"invalid CSV at line {rows.line_num}: {exc}") from None
    return _with_encoding(sections, encoding)


def _record(record: Any, where: str, options: LoaderOptions) -> Section | None:
    if not isinstance(record, dict):
        return None
    parts = [str(record[f]) for f in options.json_text_fields if record.get(f)]
    if not parts:
        return None
    ident = record.get(options.json_id_field) if options.json_id_field else None
    return Section("\n".join(parts), record=str(ident) if ident is not None else where)


def _with_encoding(sections: list[Section], encoding: str) -> list[Section]:
    for section in sections:
        section.encoding = encoding
    return sections


_LOADERS: dict[str, Callable[[Path, LoaderOptions], list[Section]]] = {
    ".txt": _load_txt,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".pdf": _load_pdf,
    ".html": _load_html,
    ".htm": _load_html,
    ".json": _load_json,
    ".jsonl": _load_jsonl,
    ".csv": _load_csv,
}
