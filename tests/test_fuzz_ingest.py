"""Fuzzing ingestion: random and mutated files of every supported type never stop a run.

Each case writes real files (truncated PDFs, deep or huge JSON, broken HTML, mixed encodings,
enormous lines, NUL bytes, names with newlines and unicode) and indexes them into a real Chroma
collection. ``index_path`` must return a report that accounts for every file, the index must
agree with its manifest, and a second run must embed nothing.

The fixed set below runs in the fast tier; the hypothesis search is marked slow.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearthlm.config import RetrievalConfig
from hearthlm.retrieval import DocumentIndex
from hearthlm.retrieval.ingest import ingest_file
from hearthlm.retrieval.loaders import LoaderOptions
from hearthlm.retrieval.splitter import TokenSplitter


def _pdf_bytes() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in ("Basalt lava flows are runny.", "Bees dance to show where flowers are."):
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


SEEDS = {
    ".txt": b"Expense reports are due on the fifth working day.\n\nThe wifi rotates.\n",
    ".md": b"# Guide\n\nIntro.\n\n## Roses\n\nRoses need sun.\n",
    ".html": b"<html><head><title>T</title></head><body><main><p>Repairs cost twelve euros."
    b"</p></main></body></html>",
    ".json": json.dumps([{"text": "Saturn has many moons."}, {"text": "Mars is red."}]).encode(),
    ".jsonl": b'{"text": "first record"}\n{"text": "second record"}\n',
    ".csv": b'name,note\nAnna,"likes tea, not coffee"\nBo,cycles to work\n',
    ".pdf": _pdf_bytes(),
}

# Pathological files that once stopped or slowed a run, one per kind; the fast tier's cases.
FIXED = {
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "deep-object.json": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "huge.json": json.dumps({"text": "big", "numbers": list(range(200_000))}).encode(),
    "cut-short.json": json.dumps([{"text": f"record {i}"} for i in range(2000)]).encode()[:-1],
    "truncated.pdf": SEEDS[".pdf"][: len(SEEDS[".pdf"]) // 2],
    "header-only.pdf": b"%PDF-1.7\n",
    "broken.html": b"<html><body><div><p>unclosed <b>tags <i>and <" + b"<" * 300 + b"</scr",
    "nested.html": b"<div>" * 20_000 + b"deep text" + b"</div>" * 10,
    "mixed-encodings.txt": "caf\xe9 ".encode()
    + "cr\xe8me ".encode("latin-1")
    + "да".encode("cp1251"),
    "utf16.md": "# Titel\n\nGr\xfc\xdfe".encode("utf-16"),
    "long-line.txt": b"x" * 20_000 + b"word " * 2_000,
    "nul.txt": b"text\x00with\x00nul bytes",
    "zero.jsonl": b"\x00" * 1000,
    "ragged.csv": b'a,b\n1,2,3,4\n"open quote,5\n' + b"x" * 200_000 + b",y\n",
    "empty.md": b"",
    "name\nwith newline.txt": b"A file name with a newline is still a file.",
    "ünïcødé 名前.md": "# Überschrift\n\nText mit Umlauten: äöü.".encode(),
}


def _check_run(index: DocumentIndex, folder: Path, files: int) -> None:
    """One run accounts for every file; the index matches its manifest; a re-run embeds 0."""
    report = index.index_path(folder, progress=False)
    assert report.files_seen == files
    assert report.files_indexed + len(report.skipped) == files
    assert all(reason.strip() for _, reason in report.skipped)
    in_chroma = set(index.collection.get(include=[])["ids"])
    in_manifest = {i for _, ids in index.store.files().values() for i in ids}
    assert in_chroma == index.store.chunk_ids() == in_manifest
    again = index.index_path(folder, progress=False)
    assert (again.embedded, again.chunks_added, again.chunks_removed) == (0, 0, 0)
    assert again.files_unchanged == report.files_indexed
    assert set(index.collection.get(include=[])["ids"]) == in_chroma


def _new_index(root: Path, embeddings) -> DocumentIndex:
    config = RetrievalConfig(path=root / "idx", collection=f"fuzz-{uuid.uuid4().hex[:8]}")
    return DocumentIndex(config, embeddings)


@pytest.mark.slow
def test_pathological_files_never_stop_a_run(embeddings, tmp_path: Path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, data in FIXED.items():
        (folder / name).write_bytes(data)
    (folder / "good.md").write_bytes(SEEDS[".md"])
    index = _new_index(tmp_path, embeddings)
    _check_run(index, folder, len(FIXED) + 1)
    sources = {Path(s).name for s in index.store.files()}
    assert {"good.md", "utf16.md", "name\nwith newline.txt", "ünïcødé 名前.md"} <= sources


# -- the hypothesis search ------------------------------------------------------------------

_NAME = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="/\\\x00"),
    min_size=1,
    max_size=12,
)


@st.composite
def _content(draw: st.DrawFn, suffix: str) -> bytes:
    seed = SEEDS[suffix]
    kind = draw(
        st.sampled_from(
            ["random", "truncated", "flipped", "spliced", "deep", "long", "encoded", "nul"]
        )
    )
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "truncated":
        return seed[: draw(st.integers(0, len(seed)))]
    if kind == "flipped":
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 20))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "spliced":
        at = draw(st.integers(0, len(seed)))
        return seed[:at] + draw(st.binary(min_size=1, max_size=512)) + seed[at:]
    if kind == "deep":
        depth = draw(st.integers(50, 50_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b"<b>", b"</b>")]))
        return opener * depth + b"1" + closer * draw(st.integers(0, depth))
    if kind == "long":
        unit = draw(st.sampled_from([b"x", b"word ", "\u00e9".encode(), "名".encode()]))
        return unit * draw(st.integers(1, 60_000 // len(unit)))
    if kind == "encoded":
        text = draw(st.text(min_size=1, max_size=300))
        codec = draw(st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "cp1252", "cp1251"]))
        return text.encode(codec, errors="replace")
    return seed.replace(b" ", b"\x00", draw(st.integers(1, 5)))  # NUL bytes


@st.composite
def _files(draw: st.DrawFn) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for _ in range(draw(st.integers(1, 4))):
        suffix = draw(st.sampled_from(sorted(SEEDS)))
        name = draw(_NAME).strip(".") or "f"
        files[f"{name}{suffix}"] = draw(_content(suffix))
    return files


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=_files())
def test_fuzzed_files_never_stop_a_run(embeddings, tmp_path: Path, files: dict[str, bytes]):
    folder = tmp_path / f"docs-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    _check_run(_new_index(tmp_path, embeddings), folder, len(files))


@settings(max_examples=40, deadline=None, database=None)
@given(suffix=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_ingest_file_always_answers(embeddings, tmp_path_factory, suffix: str, data):
    """Without Chroma, so many more cases fit the fast tier: chunks or a reason, never a raise."""
    path = tmp_path_factory.mktemp("one") / f"fuzz{suffix}"
    path.write_bytes(data.draw(_content(suffix)))
    splitter = TokenSplitter(embeddings.tokenizer, embeddings.max_tokens)
    outcome = ingest_file(path, splitter, LoaderOptions())
    assert (outcome.skipped is None) == bool(outcome.chunks)


def test_a_folder_without_a_single_keyword(embeddings, tmp_path: Path):
    """Found by the fuzz: chunks with no BM25 token at all ("\\x01") once crashed bm25s."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "0.html").write_bytes(b"\x01")
    (folder / "symbols.txt").write_text("+ - * / = !", encoding="utf-8")
    index = _new_index(tmp_path, embeddings)
    _check_run(index, folder, 2)
    assert index.count == 2 and index.bm25.search("anything", k=3) == []
