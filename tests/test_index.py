"""The incremental index on a real Chroma folder and a real `chroma run` server."""

from __future__ import annotations

from pathlib import Path

import pytest
from retrieval_helpers import kill_after_files, write_corpus

from hearthlm.config import RetrievalConfig
from hearthlm.errors import RetrievalError
from hearthlm.retrieval import DocumentIndex, HybridRetriever


def _state(index: DocumentIndex) -> tuple[set[str], int, int]:
    ids = set(index.collection.get(include=[])["ids"])
    return ids, index.count, index.store.count()


def test_index_reindex_change_delete(retrieval_config, embeddings, tmp_path: Path):
    corpus = write_corpus(tmp_path / "docs")
    index = DocumentIndex(retrieval_config, embeddings)
    first = index.index_path(corpus, progress=False)
    assert first.files_indexed == 5 and first.skipped == []
    ids, count, stored = _state(index)
    assert first.chunks_added == first.embedded == count == stored == len(ids) > 5

    for mode in ("dense", "bm25", "hybrid"):  # queries run the same code on both stores
        hits = HybridRetriever.from_index(index, mode=mode, k=1).search("flat tyre repair price")
        assert hits[0].metadata["source"].endswith("page.html"), mode

    again = index.index_path(corpus, progress=False)
    assert (again.embedded, again.chunks_added, again.chunks_removed) == (0, 0, 0)
    assert again.files_unchanged == 5 and _state(index)[0] == ids

    notes = corpus / "notes.txt"
    notes.write_text(
        notes.read_text(encoding="utf-8") + "\nThe printer on floor two needs toner.\n",
        encoding="utf-8",
    )
    changed = index.index_path(corpus, progress=False)
    assert changed.files_indexed == 1 and changed.files_unchanged == 4
    assert changed.embedded == changed.chunks_added == 1 and changed.chunks_removed == 1
    assert index.count == count  # one chunk replaced

    (corpus / "page.html").unlink()
    deleted = index.index_path(corpus, progress=False)
    assert deleted.files_removed == 1 and deleted.embedded == 0
    remaining = set(index.collection.get(include=["metadatas"])["ids"])
    sources = {m["source"] for m in index.collection.get(include=["metadatas"])["metadatas"]}
    assert not any(s.endswith("page.html") for s in sources)
    assert len(remaining) == index.count == index.store.count() == count - 1

    # The same folder indexed from scratch gives exactly the same ids.
    fresh_config = retrieval_config.model_copy(
        update={"collection": retrieval_config.collection + "-fresh"}
    )
    fresh = DocumentIndex(fresh_config, embeddings)
    fresh.index_path(corpus, progress=False)
    assert _state(fresh)[0] == remaining


def test_bad_files_are_skipped_with_reasons_and_run_continues(embeddings, tmp_path: Path):
    corpus = write_corpus(tmp_path / "docs")
    (corpus / "noise.txt").write_bytes(bytes(range(128, 256)) * 8)
    (corpus / "empty.md").write_text("", encoding="utf-8")
    (corpus / "slides.pptx").write_bytes(b"PK\x03\x04")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (corpus / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    report = index.index_path(corpus, progress=False)
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == {"noise.txt", "empty.md", "slides.pptx", "broken.pdf", "deep.json"}
    assert "not UTF-8" in reasons["noise.txt"] and "empty" in reasons["empty.md"]
    assert "nested 100000 levels deep" in reasons["deep.json"]
    assert report.files_indexed == 5


def test_collections_are_separate_and_embedder_is_checked(embeddings, tmp_path: Path):
    corpus = write_corpus(tmp_path / "docs")
    a = DocumentIndex(RetrievalConfig(path=tmp_path / "idx", collection="alpha"), embeddings)
    a.index_path(corpus / "notes.txt", progress=False)
    b = DocumentIndex(RetrievalConfig(path=tmp_path / "idx", collection="beta"), embeddings)
    b.index_path(corpus / "guide.md", progress=False)
    assert {m["source"] for m in a.collection.get(include=["metadatas"])["metadatas"]} == {
        str(corpus / "notes.txt")
    }
    assert b.count > 0 and a.count > 0

    other = type(embeddings)(embeddings.path)
    other.name = "some-other-model"
    with pytest.raises(RetrievalError, match="all-MiniLM-L6-v2"):
        DocumentIndex(RetrievalConfig(path=tmp_path / "idx", collection="alpha"), other)


def test_unreachable_server_is_a_clear_error(tmp_path: Path, embeddings):
    with pytest.raises(RetrievalError, match="chroma run"):
        DocumentIndex(RetrievalConfig(path=tmp_path, server="http://127.0.0.1:9"), embeddings)


@pytest.mark.slow
def test_a_file_a_killed_run_had_begun_leaves_nothing_once_deleted(embeddings, tmp_path: Path):
    """A run killed mid-file leaves that file's chunks in Chroma and the store with no file row
    (the row is written once all its chunks are in). Deleted, or made unreadable, before the
    next run, the file must not stay searchable and citable."""
    corpus = write_corpus(tmp_path / "docs")
    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    index.index_path(corpus, progress=False)
    notes, guide = str(corpus / "notes.txt"), str(corpus / "guide.md")
    begun = index.store.chunk_ids(notes) | index.store.chunk_ids(guide)
    for source in (notes, guide):
        index.store.drop_file(source)  # the state a SIGKILL mid-file leaves
    (corpus / "notes.txt").unlink()
    (corpus / "guide.md").write_bytes(b"\x00\x01\x02 not text any more \xff" * 10)
    report = index.index_path(corpus, progress=False)
    assert report.chunks_removed == len(begun) > 0
    assert [s for s, _ in report.skipped] == [guide]
    sources = {m["source"] for m in index.collection.get(include=["metadatas"])["metadatas"]}
    assert not {notes, guide} & sources and index.store.chunk_sources() == sources
    hits = HybridRetriever.from_index(index, mode="bm25", k=3).search("wifi password rotated")
    assert notes not in {h.metadata["source"] for h in hits}


def test_a_folder_that_cannot_be_read_keeps_its_files_indexed(
    embeddings, tmp_path: Path, monkeypatch
):
    """A subfolder that cannot be listed (permissions changed, a mount gone offline) is not a
    deleted one: its files stay indexed, and the run says why it did not look inside."""
    import os

    corpus = write_corpus(tmp_path / "docs")
    team = corpus / "team"
    team.mkdir()
    (team / "kiln.txt").write_text("The pottery kiln fires on Thursdays.", encoding="utf-8")
    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    index.index_path(corpus, progress=False)
    before = _state(index)
    listing = os.scandir

    def scandir(path: object = ".") -> object:  # root reads any folder: refuse this one
        if Path(str(path)) == team:
            raise PermissionError(13, "Permission denied", str(team))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index.index_path(corpus, progress=False)
    monkeypatch.undo()
    assert (report.files_removed, report.chunks_removed) == (0, 0) and _state(index) == before
    assert [(s, r.split(" (")[0]) for s, r in report.skipped] == [
        (str(team), "a folder that cannot be read")
    ]
    hits = HybridRetriever.from_index(index, mode="bm25", k=1).search("pottery kiln")
    assert hits[0].metadata["source"] == str(team / "kiln.txt")


def test_chunks_another_run_records_while_bm25_rebuilds_are_found_next(
    embeddings, tmp_path: Path, monkeypatch
):
    """Another machine's run can store chunks and move the index's version on while this one
    rebuilds BM25; the rebuilt index must not carry the newer version, or keyword search would
    miss those chunks until the next change."""
    from hearthlm.retrieval.splitter import Chunk

    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    index.index_path(write_corpus(tmp_path / "docs"), progress=False)
    late = Chunk("kiln-1", "The pottery kiln fires on Thursdays.", {"source": "late.txt"})
    read = index.store.corpus

    def read_while_another_run_records() -> object:  # the interleaving a real race may give
        rows = list(read())
        index.store.add_chunks([late])
        index.store.bump_version()
        return iter(rows)

    monkeypatch.setattr(index.store, "corpus", read_while_another_run_records)
    index.bm25.rebuild()
    monkeypatch.undo()
    assert [cid for cid, _ in index.bm25.search("pottery kiln", 3)] == ["kiln-1"]


def test_sigkill_mid_run_then_the_next_run_completes(embeddings, tmp_path: Path):
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(40):
        body = "\n\n".join(
            f"Document {i} paragraph {j} describes item {i * 100 + j} in detail, with notes on "
            f"its colour, weight, maker and history number {j * 7 + i}."
            for j in range(12)
        )
        (corpus / f"doc{i:02}.txt").write_text(body, encoding="utf-8")
    index_dir = tmp_path / "idx"
    kill_after_files(index_dir, corpus)

    config = RetrievalConfig(path=index_dir)
    resumed = DocumentIndex(config, embeddings)
    before = resumed.count
    assert before > 0
    report = resumed.index_path(corpus, progress=False)
    ids = resumed.collection.get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == resumed.count == resumed.store.count()
    assert report.embedded <= resumed.count - before + 16  # at most one batch redone
    reference = DocumentIndex(config.model_copy(update={"collection": "reference"}), embeddings)
    reference.index_path(corpus, progress=False)
    assert set(ids) == set(reference.collection.get(include=[])["ids"])
    assert resumed.index_path(corpus, progress=False).embedded == 0
    hits = HybridRetriever.from_index(resumed, k=1).search("item 3905 colour and weight")
    assert hits and hits[0].metadata["source"].endswith("doc39.txt")
