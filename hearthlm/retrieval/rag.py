"""Answers with citations: retrieve, pack the best chunks into the model's context budget, ask
for ``[n]`` citations, and map every citation back to its source.

A citation that points to no packed source is removed from the text and reported. When nothing
relevant is retrieved, the answer says so and the model is not called, so it cannot invent one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from hearthlm.errors import ContextWindowError
from hearthlm.llm.chat_model import ChatHearth
from hearthlm.retrieval.retriever import Hit, HybridRetriever

NO_ANSWER = "I don't know: the indexed documents do not cover this question."
SYSTEM = (
    "You answer questions from the given sources only. Cite the source number in brackets, "
    "like [1]. If the sources do not answer the question, say that you don't know."
)
# Constrained citations: the reply must open with a source number and be one sentence. Small
# models rarely write "[n]" unprompted; choosing the source first also ties the answer to it.
CITED_SENTENCE = """root ::= "[" num "] " char+ [.!?]
char ::= [^\\[\\]\\n.!?]
num ::= {numbers}
"""
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass
class Source:
    """A chunk given to the model, numbered as in the prompt."""

    number: int
    path: str
    page: int | None
    heading: str
    snippet: str
    chunk_id: str
    similarity: float | None

    @classmethod
    def from_hit(cls, number: int, hit: Hit) -> Source:
        meta = hit.metadata
        return cls(
            number=number,
            path=str(meta.get("source", "")),
            page=meta.get("page"),
            heading=str(meta.get("heading", "")),
            snippet=hit.text,
            chunk_id=hit.id,
            similarity=hit.similarity,
        )

    def label(self) -> str:
        where = Path(self.path).name
        if self.page is not None:
            where += f", page {self.page}"
        if self.heading:
            where += f", {self.heading}"
        return where


@dataclass
class Answer:
    """The answer, every source it was given, and the citations it actually used."""

    question: str
    text: str
    sources: list[Source] = field(default_factory=list)
    citations: list[Source] = field(default_factory=list)
    removed_citations: list[int] = field(default_factory=list)
    standalone_question: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "answer": self.text,
            "citations": [s.number for s in self.citations],
            "removed_citations": self.removed_citations,
            "sources": [
                {
                    "n": s.number,
                    "path": s.path,
                    "page": s.page,
                    "heading": s.heading,
                    "snippet": s.snippet[:300],
                    "similarity": s.similarity,
                }
                for s in self.sources
            ],
        }


class DocsQA:
    """Question answering over a document index, with cited sources.

    Example:
        >>> qa = DocsQA(ChatHearth(), HybridRetriever.from_index(index))  # doctest: +SKIP
        >>> answer = qa.invoke("How do I reset the device?")  # doctest: +SKIP
        >>> [c.path for c in answer.citations]  # doctest: +SKIP
    """

    def __init__(
        self,
        chat: ChatHearth,
        retriever: HybridRetriever,
        min_relevance: float = 0.3,
        max_sources: int | None = None,
        citations: Literal["constrained", "free"] = "constrained",
    ) -> None:
        self.chat = chat
        self.retriever = retriever
        self.min_relevance = min_relevance
        self.max_sources = max_sources or retriever.k
        self.citations = citations

    def invoke(self, question: str, history: Sequence[BaseMessage] = ()) -> Answer:
        """Answer ``question``; ``history`` is earlier turns of the same conversation."""
        final = None
        for item in self.stream(question, history):
            if isinstance(item, Answer):
                final = item
        assert final is not None  # stream always ends with the Answer
        return final

    def stream(self, question: str, history: Sequence[BaseMessage] = ()) -> Iterator[str | Answer]:
        """Text deltas as the model writes them, then the finished :class:`Answer`."""
        hits = self.retriever.search(question, k=self.max_sources)
        relevant = [h for h in hits if (h.similarity or 0.0) >= self.min_relevance]
        if not relevant:
            yield NO_ANSWER
            yield Answer(question, NO_ANSWER)
            return
        sources, messages = self._pack(question, relevant, history)
        if not sources:
            raise ContextWindowError(
                "no retrieved chunk fits the context window beside the question and history; "
                "shorten the history or raise llm.context_size."
            )
        options: dict[str, Any] = {}
        if self.citations == "constrained":
            numbers = " | ".join(f'"{s.number}"' for s in sources)
            options["grammar"] = CITED_SENTENCE.format(numbers=numbers)
        parts = []
        for chunk in self.chat.stream(messages, **options):
            text = str(chunk.content)
            parts.append(text)
            if text:
                yield text
        yield resolve_citations(question, "".join(parts), sources)

    def _pack(
        self, question: str, hits: list[Hit], history: Sequence[BaseMessage]
    ) -> tuple[list[Source], list[BaseMessage]]:
        """As many of the best chunks as fit the context, counted in the chat model's tokens."""
        budget = self.chat.context_window - self.chat.max_new_tokens
        sources: list[Source] = []
        messages = _messages([], question, history)
        for hit in hits:
            candidate = Source.from_hit(len(sources) + 1, hit)
            trial = _messages([*sources, candidate], question, history)
            if self.chat.get_num_tokens_from_messages(trial) > budget:
                continue  # a later, shorter chunk may still fit
            sources.append(candidate)
            messages = trial
        return sources, messages


def _messages(
    sources: Sequence[Source], question: str, history: Sequence[BaseMessage]
) -> list[BaseMessage]:
    block = "\n\n".join(f"Source [{s.number}]: {s.snippet}" for s in sources)
    return [SystemMessage(SYSTEM), *history, HumanMessage(f"{block}\n\nQuestion: {question}")]


def resolve_citations(question: str, text: str, sources: list[Source]) -> Answer:
    """Map ``[n]`` citations to sources; drop (and report) any that point to none."""
    by_number = {s.number: s for s in sources}
    used: dict[int, Source] = {}
    removed: list[int] = []

    def keep(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*,\s*", match.group(1))]
        valid = [n for n in numbers if n in by_number]
        removed.extend(n for n in numbers if n not in by_number)
        for n in valid:
            used.setdefault(n, by_number[n])
        return f"[{', '.join(map(str, valid))}]" if valid else ""

    lead = re.match(r"^\[(\d+)\]\s+(.*?)([.!?]?)$", text.strip(), re.DOTALL)
    if lead:  # constrained form "[n] sentence." reads better as "sentence [n]."
        text = f"{lead.group(2)} [{lead.group(1)}]{lead.group(3)}"
    cleaned = _CITATION.sub(keep, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned).strip()
    citations = [used[n] for n in sorted(used)]
    return Answer(question, cleaned, sources, citations, removed)
