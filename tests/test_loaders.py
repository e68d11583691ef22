"""Every loader on real files, and every bad input skipped with its reason."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from retrieval_helpers import TOPICS, write_corpus, write_pdf

from hearthlm.retrieval.loaders import LoaderOptions, LoadError, load_file, walk
from hearthlm.retrieval.splitter import TokenSplitter


def test_markdown_keeps_the_heading_path(tmp_path: Path):
    sections = load_file(write_corpus(tmp_path) / "guide.md")
    headings = [s.heading for s in sections]
    assert "Garden guide > Roses > Pruning" in headings
    assert "Garden guide > Tomatoes" in headings
    text = (tmp_path / "guide.md").read_text(encoding="utf-8")
    for s in sections:
        assert text[s.offset : s.offset + len(s.text)] == s.text


def test_pdf_pages_are_numbered(tmp_path: Path):
    pdf = write_pdf(tmp_path / "multi.pdf", list(TOPICS.values()))
    sections = load_file(pdf)
    assert [s.page for s in sections] == [1, 2, 3]
    assert "waggle dance" in sections[1].text


def test_html_main_text_only(tmp_path: Path):
    (section,) = load_file(write_corpus(tmp_path) / "page.html")
    assert "flat tyre repair costs twelve euros" in section.text
    for noise in ("tracking", "Home | Shop", "Copyright"):
        assert noise not in section.text
    assert section.heading == "Bike shop"


def test_json_and_jsonl_with_configurable_fields(tmp_path: Path):
    corpus = write_corpus(tmp_path)
    records = load_file(corpus / "records.jsonl", LoaderOptions(json_id_field="id"))
    assert [r.record for r in records] == ["a1", "a2"]
    (tmp_path / "list.json").write_text(
        '[{"title": "T1", "body": "first body"}, {"title": "T2", "body": "second"}]',
        encoding="utf-8",
    )
    items = load_file(tmp_path / "list.json", LoaderOptions(json_text_fields=["title", "body"]))
    assert [i.text for i in items] == ["T1\nfirst body", "T2\nsecond"]


def test_walk_is_recursive_with_include_and_exclude(tmp_path: Path):
    write_corpus(tmp_path / "a" / "b")
    (tmp_path / "top.md").write_text("# Top\n\ntext", encoding="utf-8")
    names = [p.name for p in walk(tmp_path, include=["**/*.md", "**/*.txt"])]
    assert sorted(names) == ["guide.md", "notes.txt", "top.md"]
    names = [p.name for p in walk(tmp_path, exclude=["a/**"])]
    assert names == ["top.md"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("noise.txt", bytes(range(128, 256)) * 8, "no other encoding reads as text"),
        ("empty.md", b"   \n\n", "empty"),
        ("report.docx", b"PK\x03\x04 zipped", "unsupported file type .docx"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "PDF"),
        ("bad.json", b'{"text": "unterminated', "invalid JSON at line 1"),
        ("binary.txt", b"\x00\x01\x02\x03", "binary"),
    ],
)
def test_bad_files_raise_load_error_with_reason(tmp_path: Path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoadError, match=reason):
        load_file(path)


def test_unreadable_file(tmp_path: Path):
    link = tmp_path / "dangling.txt"
    link.symlink_to(tmp_path / "missing-target.txt")
    with pytest.raises(LoadError, match="unreadable"):
        load_file(link)


def test_chunks_never_exceed_the_embedder_limit(embeddings, tmp_path: Path):
    splitter = TokenSplitter(embeddings.tokenizer, embeddings.max_tokens, overlap=32)
    from hearthlm.retrieval.loaders import Section

    prose = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(600))
    unbroken = "x" * 5000 + "y" * 3000  # no separator at all
    chunks = splitter.split("s", [Section(prose), Section(unbroken, offset=len(prose) + 1)])
    assert len(chunks) > 10
    assert max(embeddings.count_tokens(c.text) for c in chunks) <= embeddings.max_tokens == 256
    assert len({c.id for c in chunks}) == len(chunks)
    full = prose + "\n" + unbroken
    for chunk in chunks:
        assert full[chunk.metadata["start"] : chunk.metadata["end"]] == chunk.text


def test_overlap_is_configurable(embeddings):
    from hearthlm.retrieval.loaders import Section

    prose = " ".join(f"Sentence number {i} is here." for i in range(400))
    for overlap in (0, 48):
        chunks = TokenSplitter(embeddings.tokenizer, 64, overlap).split("s", [Section(prose)])
        shared = [a.metadata["end"] - b.metadata["start"] for a, b in itertools.pairwise(chunks)]
        assert (max(shared) > 0) == (overlap > 0)
