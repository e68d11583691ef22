"""A folder of good documents, and a copy of it mixed with as many awkward files.

Good files are SciFact abstracts, two per file, as .txt, .md, .html, .json, .jsonl and .pdf.
Awkward files are the kinds a private folder holds and that once stopped, slowed or cluttered a
run: each kind is written ``count`` times, and ``KINDS`` says what should become of it (indexed,
or skipped with a reason that starts with the given words).
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

# The index settings the awkward folder is measured with: small limits, so the files that go
# over them stay small enough to write quickly.
LIMITS = {"max_file_mb": 1.0, "max_pdf_pages": 50}


def _pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(pdf.output())


def _encrypted_pdf(text: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf([text]))))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write_good(folder: Path, docs: list[dict[str, str]], files: int) -> None:
    """``files`` good files, two abstracts each, cycling through the supported types."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        pair = docs[2 * i : 2 * i + 2]
        title = pair[0]["title"]
        body = "\n\n".join(d["text"] for d in pair)
        kind = i % 6
        if kind == 0:
            (folder / f"note{i:03}.txt").write_text(f"{title}\n\n{body}\n", encoding="utf-8")
        elif kind == 1:
            sections = "\n\n".join(f"## {d['title']}\n\n{d['text']}" for d in pair)
            (folder / f"guide{i:03}.md").write_text(f"# {title}\n\n{sections}\n", encoding="utf-8")
        elif kind == 2:
            paragraphs = "".join(f"<p>{d['text']}</p>" for d in pair)
            page = f"<html><head><title>{title}</title></head><body><main>{paragraphs}</main>"
            (folder / f"page{i:03}.html").write_text(page + "</body></html>", encoding="utf-8")
        elif kind == 3:
            (folder / f"records{i:03}.json").write_text(json.dumps(pair), encoding="utf-8")
        elif kind == 4:
            lines = "".join(json.dumps(d) + "\n" for d in pair)
            (folder / f"records{i:03}.jsonl").write_text(lines, encoding="utf-8")
        else:
            (folder / f"paper{i:03}.pdf").write_bytes(_pdf([d["text"] for d in pair]))


def _latin1(i: int, text: str) -> tuple[str, bytes]:
    sample = f"Caf\xe9 cr\xe8me, na\xefve r\xe9sum\xe9 {i}: " + text[:300]
    return f"legacy{i:03}.txt", sample.encode("cp1252", "replace")


KINDS: dict[str, tuple[str, Callable[[int, str], tuple[str, bytes]]]] = {
    "deep JSON": (
        "skipped: JSON nested",
        lambda i, t: (f"deep{i:03}.json", b"[" * 100_000 + b"]" * 100_000),
    ),
    "Windows-1252 text": ("indexed", _latin1),
    "UTF-16 markdown": (
        "indexed",
        lambda i, t: (f"utf16_{i:03}.md", f"# Notes {i}\n\n{t[:300]}".encode("utf-16")),
    ),
    "truncated PDF": ("skipped: corrupt PDF", lambda i, t: (f"cut{i:03}.pdf", b"")),
    "encrypted PDF": ("skipped: encrypted PDF", lambda i, t: (f"locked{i:03}.pdf", b"")),
    "PDF over the page cap": ("skipped: PDF has", lambda i, t: (f"long{i:03}.pdf", b"")),
    "empty": ("skipped: empty", lambda i, t: (f"empty{i:03}.md", b" \n\n ")),
    "NUL bytes": ("skipped: binary", lambda i, t: (f"binary{i:03}.txt", b"\x00\x01" * 64)),
    "undecodable": (
        "skipped: not UTF-8",
        lambda i, t: (f"noise{i:03}.txt", random.Random(i).randbytes(4096).replace(b"\x00", b"")),
    ),
    "unsupported type": (
        "skipped: unsupported file type",
        lambda i, t: (f"slides{i:03}.pptx", b"PK\x03\x04" + b"\x01" * 64),
    ),
    "too large": ("skipped: too large", lambda i, t: (f"dump{i:03}.txt", b"word " * 300_000)),
    "invalid JSON": (
        "skipped: invalid JSON",
        lambda i, t: (f"bad{i:03}.json", b'{"text": "unterminated'),
    ),
    "JSONL without a valid line": (
        "skipped: no valid JSON line",
        lambda i, t: (f"bad{i:03}.jsonl", b"{nope\n" + b"[" * 5000 + b"\n"),
    ),
    "broken HTML": (
        "indexed",
        lambda i, t: (f"broken{i:03}.html", f"<html><body><div><p>{t[:300]}<b><i".encode()),
    ),
    "odd file name": (
        "indexed",
        lambda i, t: (f"line\nbreak ünï 名 {i:03}.txt", t[:300].encode()),
    ),
}


def write_mixed(folder: Path, good: Path, docs: list[dict[str, str]], total: int) -> dict[str, str]:
    """A copy of ``good`` plus ``total`` awkward files spread over the kinds; name -> kind."""
    shutil.copytree(good, folder)
    pdf = _pdf(["A short page about basalt."])
    over_cap = _pdf(["page"] * (int(LIMITS["max_pdf_pages"]) + 10))
    special: dict[str, Callable[[int], bytes]] = {
        "truncated PDF": lambda i: pdf[: len(pdf) * (i % 9 + 1) // 10],
        "encrypted PDF": lambda i: _encrypted_pdf(f"A locked page, number {i}."),
        "PDF over the page cap": lambda i: over_cap,
    }
    made: dict[str, str] = {}
    for k, (kind, (_, write)) in enumerate(KINDS.items()):
        count = total // len(KINDS) + (k < total % len(KINDS))
        for i in range(count):
            name, data = write(i, docs[i]["text"])
            if kind in special:
                data = special[kind](i)
            (folder / name).write_bytes(data)
            made[name] = kind
    return made
