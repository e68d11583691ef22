"""Candidate sentences of a chunk, each with its exact character offsets.

The quoting reader answers with verbatim text, so every candidate must map back to the very
characters it came from. Text is first cut into blocks at blank lines, headings, list items and
code lines such as ``E4 - The heating plate …``; a list item or code line is one candidate however
many sentences it holds (it is one statement). Prose blocks are split into sentences by pysbd.
Text with no sentence punctuation at all is cut at word boundaries, so no candidate is a wall of
text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_CHARS = 400  # a longer candidate is cut at word boundaries into pieces of about this size
MIN_WORDS = 3  # shorter pieces ("Home | Products", "Step 2.") are no answer on their own

# A line that starts a statement of its own: a bullet, a numbered item, or a code with a dash or
# colon after it ("E4 - …", "v2.1: …", "Q: …").
_ITEM = re.compile(
    r"^\s*(?:[-*+\u2022\u25aa\u2023\u25e6]\s+|\(?\d{1,3}[.)]\s+|\(?[a-zA-Z][.)]\s+"
    r"|[A-Za-z]{0,4}\d[\w.]{0,6}\s*[-\u2013\u2014:]\s+|[A-Z][A-Za-z ]{0,20}:\s+)"
)
_HEADING = re.compile(r"^\s*#{1,6}\s")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Span:
    """A piece of a text and where it lies: ``text == whole[start:end]``."""

    text: str
    start: int
    end: int
    title: str = ""  # the heading or title line the span sits under, if the text has one
    group: Span | None = None  # for a list item: the whole list it belongs to


@lru_cache(maxsize=1)
def _segmenter() -> Any:
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str, offset: int = 0) -> list[Span]:
    """The candidate sentences of ``text``; offsets are ``offset`` plus the position in ``text``.

    Example:
        >>> [s.text for s in split_sentences("E1 - Empty. Fill it.\\nE4 - Too hot.")]
        ['E1 - Empty. Fill it.', 'E4 - Too hot.']
    """
    spans: list[Span] = []
    title = ""
    items: list[Span] = []  # the list being read: consecutive items
    for block in [*_blocks(text), None]:
        if block is None or not _ITEM.match(block.text):
            spans.extend(_listed(text, items, offset, title))
            items = []
        if block is None:
            break
        if _HEADING.match(block.text) or _is_title(block.text):
            # A heading names a topic; it answers nothing, but the sentences under it are
            # read with it.
            title = block.text.lstrip("#").strip()
            continue
        if _ITEM.match(block.text):
            items.append(block)
            continue
        for piece in _prose(block):
            spans.extend(_kept(piece, offset, title))
    return spans


def _kept(span: Span, offset: int, title: str, group: Span | None = None) -> list[Span]:
    """``span`` (cut when too long) moved by ``offset``, without pieces too short to answer."""
    return [
        Span(part.text, part.start + offset, part.end + offset, title, group)
        for part in _cut(span)
        if len(_WORD.findall(part.text)) >= MIN_WORDS
    ]


def _listed(text: str, items: list[Span], offset: int, title: str) -> list[Span]:
    """The items of one list, each knowing the whole list (a question may ask for all of it)."""
    if not items:
        return []
    group = None
    if len(items) > 1:
        start, end = items[0].start, items[-1].end
        group = Span(text[start:end], start + offset, end + offset, title)
    return [span for item in items for span in _kept(item, offset, title, group)]


def _blocks(text: str) -> list[Span]:
    """Paragraphs, with each list item, code line or heading starting a block of its own."""
    blocks: list[Span] = []
    start: int | None = None
    end = 0
    position = 0
    for line in text.splitlines(keepends=True):
        body = line.strip()
        line_start = position
        position += len(line)
        if not body:
            if start is not None:
                blocks.append(_trimmed(text, start, end))
                start = None
            continue
        new_block = _ITEM.match(line) or _HEADING.match(line)
        if start is not None and (
            new_block or _HEADING.match(text[start:end]) or _title(text[start:end], body)
        ):
            blocks.append(_trimmed(text, start, end))
            start = None
        if start is None:
            start = line_start
        end = line_start + len(line.rstrip("\r\n"))
    if start is not None:
        blocks.append(_trimmed(text, start, end))
    return [b for b in blocks if b.text]


def _is_title(line: str) -> bool:
    return (
        "\n" not in line
        and len(line.split()) <= 8
        and not line.endswith((".", "!", "?", ":", ";", ","))
        and not _ITEM.match(line)
        and line[:1].isupper()
    )


def _title(block: str, next_line: str) -> bool:
    """A short first line with no punctuation, followed by a capitalised line, is a title
    (HTML headings and PDF titles arrive so, with no blank line after them)."""
    line = block.strip()
    return (
        "\n" not in line
        and len(line.split()) <= 8
        and not line.endswith((".", "!", "?", ":", ";", ","))
        and next_line[:1].isupper()
    )


def _trimmed(text: str, start: int, end: int) -> Span:
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    piece = piece.strip()
    return Span(piece, start + lead, start + lead + len(piece))


def _prose(block: Span) -> list[Span]:
    """Sentences of a prose block, located in it one after another."""
    spans = []
    cursor = 0
    # Wrapped lines are one paragraph; pysbd would end a sentence at each line break. Spaces
    # for line breaks keep every offset where it was.
    flat = block.text.replace("\r", " ").replace("\n", " ")
    for sentence in _segmenter().segment(flat):
        sentence = sentence.strip()
        if not sentence:
            continue
        at = flat.find(sentence, cursor)
        if at < 0:  # pysbd changed the text; keep the rest of the block whole
            rest = _trimmed(block.text, cursor, len(block.text))
            spans.append(Span(rest.text, block.start + rest.start, block.start + rest.end))
            break
        text = block.text[at : at + len(sentence)]
        spans.append(Span(text, block.start + at, block.start + at + len(sentence)))
        cursor = at + len(sentence)
    return spans


def _cut(span: Span) -> list[Span]:
    """``span`` itself, or pieces of it at word boundaries when it is too long."""
    if len(span.text) <= MAX_CHARS:
        return [span]
    pieces = []
    start = end = None
    for word in _WORD.finditer(span.text):
        if start is None:
            start = word.start()
        elif word.end() - start > MAX_CHARS and end is not None:
            pieces.append(Span(span.text[start:end], span.start + start, span.start + end))
            start = word.start()
        end = word.end()
    if start is not None and end is not None:
        pieces.append(Span(span.text[start:end], span.start + start, span.start + end))
    return pieces
