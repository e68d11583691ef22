"""No file can stop a run: per-file isolation, quiet libraries, and only the store may fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chromadb
import pytest
from retrieval_helpers import write_corpus

from hearthlm.config import RetrievalConfig
from hearthlm.errors import RetrievalError
from hearthlm.retrieval import DocumentIndex
from hearthlm.retrieval.ingest import captured_warnings, ingest_file
from hearthlm.retrieval.loaders import LoaderOptions
from hearthlm.retrieval.splitter import TokenSplitter

HEARTH = str(Path(sys.executable).with_name("hearth"))
CORRUPT_PDF = b"%PDF-1.4 garbage"  # pypdf logs "EOF marker not found", then fails


def _awkward(folder: Path) -> Path:
    """The files that stopped or cluttered a run before, beside a good corpus."""
    corpus = write_corpus(folder)
    (corpus / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    (corpus / "latin1.txt").write_bytes(
        "Le caf\xe9 de la gare est tr\xe8s appr\xe9ci\xe9.".encode("latin-1")
    )
    (corpus / "broken.pdf").write_bytes(CORRUPT_PDF)
    return corpus


def test_a_parser_exception_becomes_a_skipped_file(embeddings, tmp_path: Path):
    path = tmp_path / "deep.json"
    path.write_text('{"text": ' + "[" * 5000 + "]" * 5000 + "}", encoding="utf-8")
    splitter = TokenSplitter(embeddings.tokenizer, embeddings.max_tokens)
    # Without the depth cap, Python's own parser raises RecursionError on this file.
    outcome = ingest_file(path, splitter, LoaderOptions(max_json_depth=10**6))
    assert outcome.chunks == []
    assert outcome.skipped == "too deeply nested for the parser (recursion limit)"
    capped = ingest_file(path, splitter, LoaderOptions())
    assert capped.skipped == "JSON nested 5001 levels deep, over the limit of 100"


def test_library_warnings_are_captured_not_printed(embeddings, tmp_path: Path, capfd):
    path = tmp_path / "broken.pdf"
    path.write_bytes(CORRUPT_PDF)
    splitter = TokenSplitter(embeddings.tokenizer, embeddings.max_tokens)
    outcome = ingest_file(path, splitter, LoaderOptions())
    assert outcome.skipped is not None and "corrupt PDF" in outcome.skipped
    assert any("EOF marker not found" in w for w in outcome.warnings)
    assert capfd.readouterr().err == ""


def test_captured_warnings_are_kept_once_and_capped():
    import logging
    import warnings

    with captured_warnings() as outer:
        with captured_warnings() as inner:
            for i in range(20):
                logging.getLogger("pypdf._reader").warning("object %d is broken", i)
            warnings.warn("odd markup", UserWarning, stacklevel=1)
        logging.getLogger("bs4").warning("after the file")
    assert inner[:2] == ["pypdf._reader: object 0 is broken", "pypdf._reader: object 1 is broken"]
    assert inner[-1] == "… and 16 more warnings" and len(inner) == 6
    assert outer == ["bs4: after the file"]
    assert logging.getLogger("pypdf").propagate and not logging.getLogger("pypdf").handlers


def test_awkward_folder_indexes_the_rest(embeddings, tmp_path: Path, capfd):
    corpus = _awkward(tmp_path / "docs")
    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    report = index.index_path(corpus, progress=True)
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == {"deep.json", "broken.pdf"}
    assert report.files_indexed == 6  # the five good files and the Latin-1 one
    warned = {Path(p).name for p, _ in report.warnings}
    assert warned == {"broken.pdf"}
    metadatas = index.collection.get(include=["metadatas"])["metadatas"]
    encodings = {Path(m["source"]).name: m.get("encoding") for m in metadatas}
    assert encodings["latin1.txt"] == "windows-1252" and encodings["notes.txt"] == "utf-8"
    err = capfd.readouterr().err
    assert "EOF marker" not in err and "━" not in err  # no stray warning, no bar in a log


def test_a_failing_store_stops_the_run_with_a_clear_error(embeddings, tmp_path: Path):
    corpus = write_corpus(tmp_path / "docs")
    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    index.index_path(corpus / "notes.txt", progress=False)
    before = index.store.files()
    # Another process deletes the collection under the running index.
    chromadb.PersistentClient(path=str(tmp_path / "idx")).delete_collection("docs")
    with pytest.raises(
        RetrievalError, match=r"writing the index at .* failed.*run the same command again"
    ):
        index.index_path(corpus, progress=False)
    assert index.store.files() == before  # no file recorded without its chunks
    assert DocumentIndex(index.config, embeddings).index_path(corpus, progress=False).skipped == []


@pytest.mark.slow
def test_hearth_index_in_a_log(tmp_path: Path):
    """As a user redirecting output to a log: exit 0, skips listed, no stray or bar lines."""
    corpus = _awkward(tmp_path / "docs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HEARTH_RETRIEVAL__PATH": str(tmp_path / "idx")}

    def hearth_index(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [HEARTH, "index", str(corpus), *flags]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    first = hearth_index()
    assert first.returncode == 0, first.stderr
    assert "skipped" in first.stdout and "nested 100000 levels deep" in first.stdout
    assert "1 library warning from 1 file; --verbose lists them" in first.stdout
    assert "EOF marker" not in first.stdout + first.stderr
    assert "━" not in first.stdout + first.stderr
    verbose = hearth_index("--verbose")
    assert "broken.pdf: pypdf._reader: EOF marker not found" in verbose.stdout
    as_json = hearth_index("--json")
    report = json.loads(as_json.stdout)
    assert report["embedded"] == 0 and report["files_unchanged"] == 6
    assert as_json.stderr == ""
