"""Token-aware splitting that never exceeds the embedder's input length.

sentence-transformers silently truncates long inputs, and the cut text would never be found. So a
chunk is measured with the embedder's own tokenizer, and any chunk still too long after the
recursive split is cut again on token boundaries.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

from hearthlm.retrieval.sections import Section

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


@dataclass(frozen=True)
class Chunk:
    """One piece of a document to embed: its content-hash ``id``, text, and metadata (source,
    page, heading, character offsets)."""

    id: str
    text: str
    metadata: dict[str, Any]


class TokenSplitter:
    """Splits sections into chunks of at most ``max_tokens`` embedder tokens, specials included."""

    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int = 32) -> None:
        self.tokenizer = tokenizer
        # The Rust tokenizer underneath: counts without the Python wrapper's overhead and warnings.
        self._fast = getattr(tokenizer, "backend_tokenizer", None) or _Wrapped(tokenizer)
        self.max_tokens = max_tokens
        specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
        self.budget = max_tokens - specials  # tokens left for the text itself
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.budget,
            chunk_overlap=min(overlap, self.budget // 2),
            length_function=self._length,
            separators=SEPARATORS,
            keep_separator="end",
            strip_whitespace=True,
        )

    def _length(self, text: str) -> int:
        return len(self._fast.encode(text, add_special_tokens=False).ids)

    def split(self, source: str, sections: list[Section]) -> list[Chunk]:
        """Chunks of one file, with ids that depend only on file and content."""
        seen: Counter[str] = Counter()
        chunks = []
        for section in sections:
            for piece, start in self._pieces(section.text):
                content_hash = hashlib.sha256(piece.encode("utf-8")).hexdigest()
                seen[content_hash] += 1  # the same text twice in one file gets two ids
                key = f"{source}\x00{content_hash}\x00{seen[content_hash]}"
                metadata: dict[str, Any] = {
                    "source": source,
                    "start": section.offset + start,
                    "end": section.offset + start + len(piece),
                    "content_hash": content_hash,
                    "heading": section.heading,
                }
                if section.page is not None:
                    metadata["page"] = section.page
                if section.record is not None:
                    metadata["record"] = section.record
                if section.encoding is not None:
                    metadata["encoding"] = section.encoding
                chunk_id = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
                chunks.append(Chunk(chunk_id, piece, metadata))
        return chunks

    def _pieces(self, text: str) -> list[tuple[str, int]]:
        out = []
        cursor = 0
        for piece in self._splitter.split_text(text):
            # Chunks come in order and overlap only backwards, so each starts at or after the
            # previous one. (LangChain's own start_index treats the token overlap as characters.)
            start = text.find(piece, cursor)
            if start < 0:
                start = text.find(piece)
            cursor = max(start, cursor)
            if self._length(piece) <= self.budget:
                out.append((piece, start))
            else:
                out.extend(self._cut(piece, start))
        return out

    def _cut(self, text: str, start: int) -> list[tuple[str, int]]:
        """Hard cut on token boundaries, for text with no separator the splitter could use."""
        enc = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = enc["offset_mapping"]
        pieces = []
        for i in range(0, len(offsets), self.budget):
            window = offsets[i : i + self.budget]
            a, b = window[0][0], window[-1][1]
            pieces.append((text[a:b], start + a))
        return pieces


class _Wrapped:
    """Gives a slow tokenizer the ``encode(text).ids`` shape of a fast one."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = False) -> Any:
        from types import SimpleNamespace

        ids = self._tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        return SimpleNamespace(ids=ids)
