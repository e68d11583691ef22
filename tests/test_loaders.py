"""Every loader on real files, and every bad input skipped with its reason."""

from __future__ import annotations

import itertools
import json
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


def test_a_comment_in_a_code_block_is_not_a_heading(tmp_path: Path):
    guide = tmp_path / "install.md"
    guide.write_text(
        "# Install\n\nRun:\n\n```bash\n# download the archive\ncurl -O x.tgz\n```\n\n"
        "Then unpack it.\n\n~~~~\n## not a heading either\n~~~~\n\n## Linux\n\nUse apt.\n",
        encoding="utf-8",
    )
    sections = load_file(guide)
    assert [s.heading for s in sections] == ["Install", "Install > Linux"]
    assert "Then unpack it." in sections[0].text and "curl -O x.tgz" in sections[0].text


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


def test_walk_follows_a_linked_folder_once_and_not_round_a_loop(tmp_path: Path):
    team, root = tmp_path / "team", tmp_path / "root"
    team.mkdir()
    root.mkdir()
    (team / "a.txt").write_text("shared notes", encoding="utf-8")
    (root / "b.txt").write_text("own notes", encoding="utf-8")
    (root / "v2").mkdir()
    (root / "v2" / "c.txt").write_text("release notes", encoding="utf-8")
    (root / "shared").symlink_to(team, target_is_directory=True)
    (root / "latest").symlink_to(root / "v2", target_is_directory=True)  # inside: its own name
    (team / "up").symlink_to(root, target_is_directory=True)  # a loop back to the root
    walked = [p.relative_to(root).as_posix() for p in walk(root)]
    assert walked == ["b.txt", "shared/a.txt", "v2/c.txt"]
    assert [p.relative_to(root).as_posix() for p in walk(root, follow_links=False)] == [
        "b.txt",
        "v2/c.txt",
    ]


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


@pytest.mark.parametrize(
    ("text", "codec", "recorded"),
    [
        ("caf\xe9 cr\xe8me", "latin-1", "windows-1252"),
        ("The caf\xe9 costs \u20ac5 \u2013 \u201cfine\u201d.", "cp1252", "windows-1252"),
        ("Gr\xfc\xdfe aus M\xfcnchen, die Stra\xdfe ist sch\xf6n.", "latin-1", "windows-1252"),
        ("Привет, как дела? Это тестовый текст на русском языке.", "cp1251", "windows-1251"),
        ("# Titel\n\nGr\xfc\xdfe", "utf-16", "utf-16"),
        ("# Titel\n\nGr\xfc\xdfe", "utf-32", "utf-32"),
        ("# Titel\n\nGr\xfc\xdfe", "utf-8-sig", "utf-8"),
        ("# Titel\n\nplain", "utf-8", "utf-8"),
    ],
)
def test_text_in_legacy_encodings_is_read_and_its_encoding_kept(tmp_path, text, codec, recorded):
    path = tmp_path / "note.md"
    path.write_bytes(text.encode(codec))
    sections = load_file(path)
    assert "".join(s.text for s in sections) == text
    assert {s.encoding for s in sections} == {recorded}


def test_the_encoding_reaches_the_chunk_metadata(embeddings, tmp_path: Path):
    path = tmp_path / "page.html"
    path.write_bytes(
        "<html><body><p>Cr\xe8me br\xfbl\xe9e \xe0 la carte.</p></body></html>".encode("cp1252")
    )
    splitter = TokenSplitter(embeddings.tokenizer, embeddings.max_tokens)
    (chunk,) = splitter.split(str(path), load_file(path))
    assert chunk.text == "Cr\xe8me br\xfbl\xe9e \xe0 la carte."
    assert chunk.metadata["encoding"] == "windows-1252"


def test_a_byte_order_mark_the_bytes_contradict(tmp_path: Path):
    path = tmp_path / "odd.txt"
    path.write_bytes(b"\xef\xbb\xbfcaf\xe9")  # UTF-8 mark, then Latin-1
    with pytest.raises(LoadError, match="byte-order mark but is not valid utf-8"):
        load_file(path)


def test_each_file_has_a_cost_limit(tmp_path: Path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * 300_000)
    with pytest.raises(LoadError, match=r"too large: 1\.4 MB, over the 1 MB limit.*max_file_mb"):
        load_file(big, LoaderOptions(max_file_bytes=2**20))
    pdf = write_pdf(tmp_path / "three.pdf", list(TOPICS.values()))
    with pytest.raises(LoadError, match=r"3 pages, over the 2-page limit.*max_pdf_pages"):
        load_file(pdf, LoaderOptions(max_pdf_pages=2))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(LoadError, match="nested 100000 levels deep, over the limit of 100"):
        load_file(deep)


def test_json_depth_ignores_brackets_inside_strings(tmp_path: Path):
    path = tmp_path / "brackets.json"
    path.write_text(json.dumps({"text": "[" * 500 + " {quoted}"}), encoding="utf-8")
    (section,) = load_file(path)
    assert section.text.startswith("[[[")


def test_a_deep_jsonl_line_is_dropped_and_the_rest_kept(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"text": "first"}\n' + "[" * 5000 + "]" * 5000 + '\n{"text": "third"}\n',
        encoding="utf-8",
    )
    with pytest.warns(UserWarning, match="not valid JSON: 2$"):
        sections = load_file(path)
    assert [(s.text, s.record) for s in sections] == [("first", "1"), ("third", "3")]


def test_a_jsonl_string_may_hold_unicode_line_separators(tmp_path: Path):
    """json.dumps(..., ensure_ascii=False) writes U+2028 and U+0085 raw inside a string; only
    "\n" ends a JSON line."""
    path = tmp_path / "steps.jsonl"
    rows = [{"text": "Step one.\u2028Step two.\x85Step three."}, {"text": "Warranty is two years."}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), "utf-8")
    sections = load_file(path)
    assert [(s.text, s.record) for s in sections] == [
        (r["text"], str(i)) for i, r in enumerate(rows, 1)
    ]


def test_a_pdf_restricted_only_by_an_owner_password_is_read(tmp_path: Path):
    from pypdf import PdfReader, PdfWriter

    plain = write_pdf(tmp_path / "plain.pdf", list(TOPICS.values()))

    def encrypted(name: str, user: str) -> Path:
        writer = PdfWriter(clone_from=PdfReader(plain))
        writer.encrypt(user_password=user, owner_password="owner-secret", algorithm="RC4-128")
        writer.write(tmp_path / name)
        return tmp_path / name

    restricted = load_file(encrypted("no-printing.pdf", user=""))
    assert [s.page for s in restricted] == [1, 2, 3] and "waggle dance" in restricted[1].text
    with pytest.raises(LoadError, match="needs a password to open"):
        load_file(encrypted("locked.pdf", user="user-secret"))


def test_html_wrapped_in_one_form_keeps_its_text(tmp_path: Path):
    """ASP.NET WebForms and SharePoint pages wrap the whole body in a <form>."""
    page = tmp_path / "returns.html"
    page.write_text(
        '<html><body><form id="form1" method="post"><input type="hidden" name="__VIEWSTATE" '
        'value="dDwtMTA4"><main><h1>Returns</h1><p>Returns are accepted within 30 days.</p>'
        "<button>Search</button></main></form></body></html>",
        encoding="utf-8",
    )
    (section,) = load_file(page)
    assert section.text == "Returns\nReturns are accepted within 30 days."


def test_csv_rows_become_records_in_any_encoding(tmp_path: Path):
    path = tmp_path / "contacts.csv"
    path.write_bytes(
        "name;city;note\nJos\xe9;M\xfcnchen;caf\xe9 au lait\nAnna;Oslo;\n".encode("cp1252")
    )
    rows = load_file(path)
    assert [(r.text, r.record) for r in rows] == [
        ("name: Jos\xe9\ncity: M\xfcnchen\nnote: caf\xe9 au lait", "2"),
        ("name: Anna\ncity: Oslo", "3"),
    ]
    assert {r.encoding for r in rows} == {"windows-1252"}
