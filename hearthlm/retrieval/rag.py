"""Answers with citations: retrieve, pack the best chunks into the model's context budget,
answer, and map every citation back to its source.

Three answer modes (``DocsQA(answer=…)``):
- ``quote``: the answer is verbatim sentences of the sources, chosen by the model among the best
  candidates (:mod:`hearthlm.retrieval.reader`). Right by construction about what the documents
  say; the default on the packaged 135M model, which invents details when it writes.
- ``constrained``: the model writes one sentence under a grammar that opens it with a source
  number. For a larger local model.
- ``free``: the model writes and cites freely. For a large model or a remote one.

A citation that points to no packed source is removed from the text and reported. A written
answer is checked for grounding (:mod:`hearthlm.retrieval.grounding`): a number, code or name
that none of its cited sources holds is reported, and with ``on_ungrounded="quote"`` the answer is
replaced by the quote answer. When nothing relevant is retrieved, the answer says so and the
model is not called, so it cannot invent one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from hearthlm.errors import ConfigError, ContextWindowError
from hearthlm.llm.backend import Constraint
from hearthlm.llm.chain import Chain, can_constrain, question_text, structured_reply, unwrap
from hearthlm.retrieval import reader
from hearthlm.retrieval.grounding import CITATION, unsupported
from hearthlm.retrieval.reader import Quote
from hearthlm.retrieval.retriever import Hit, HybridRetriever, Source

AnswerMode = Literal["auto", "quote", "constrained", "free"]

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


@dataclass
class Answer:
    """The answer, every source it was given, and the citations it actually used.

    ``quotes`` holds the verbatim sentences of a quote answer, with their offsets. ``grounded``
    is ``False`` when a written answer states a number, code or name (listed in
    ``unsupported``) that its cited sources do not hold; ``None`` when nothing was checked.
    """

    question: str
    text: str
    sources: list[Source] = field(default_factory=list)
    citations: list[Source] = field(default_factory=list)
    removed_citations: list[int] = field(default_factory=list)
    standalone_question: str | None = None
    mode: str = "quote"
    quotes: list[Quote] = field(default_factory=list)
    grounded: bool | None = None
    unsupported: list[str] = field(default_factory=list)
    replaced: str | None = None  # the written answer a quote replaced, if one did

    @property
    def known(self) -> bool:
        """False for the "I don't know" answer."""
        return self.text != NO_ANSWER

    def __add__(self, other: Answer) -> Answer:
        """Two chunks of one streamed answer as one: texts and lists are joined, and a field
        the later chunk sets wins. :meth:`DocsQA.stream`'s chunks add up to the answer
        ``invoke`` returns, as LangChain's stream contract asks."""
        if not isinstance(other, Answer):
            return NotImplemented

        def later(a: Any, b: Any) -> Any:
            return b if b is not None else a

        return Answer(
            question=other.question or self.question,
            text=self.text + other.text,
            sources=self.sources + other.sources,
            citations=self.citations + other.citations,
            removed_citations=self.removed_citations + other.removed_citations,
            standalone_question=later(self.standalone_question, other.standalone_question),
            mode=other.mode,
            quotes=self.quotes + other.quotes,
            grounded=later(self.grounded, other.grounded),
            unsupported=self.unsupported + other.unsupported,
            replaced=later(self.replaced, other.replaced),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "answer": self.text,
            "mode": self.mode,
            "quotes": [q.as_dict() for q in self.quotes],
            "grounded": self.grounded,
            "unsupported": self.unsupported,
            "replaced": self.replaced,
            "citations": [s.number for s in self.citations],
            "removed_citations": self.removed_citations,
            "sources": [
                {
                    "n": s.number,
                    "path": s.path,
                    "page": s.page,
                    "heading": s.heading,
                    "snippet": s.snippet[:300],
                    "start": s.start,
                    "similarity": s.similarity,
                }
                for s in self.sources
            ],
        }


class QAInput(TypedDict):
    """The input of :class:`DocsQA` as a mapping; a plain ``str`` question works too."""

    question: str
    history: NotRequired[Sequence[BaseMessage]]  # earlier turns of the same conversation


class CitedSentence(BaseModel):
    """A ``constrained`` answer from a chat model that reads no grammar."""

    source: int = Field(description="The number of the source that answers the question")
    sentence: str = Field(description="One sentence that answers the question from that source")


class DocsQA(Chain[str | QAInput, Answer]):
    """Question answering over a document index, with cited sources.

    A Runnable over any chat model: ``invoke``, ``batch``, ``astream`` and LCEL (``|``). Its
    ``stream`` yields :class:`Answer` chunks that add up to the answer: the text as it is
    made (already in its final form, citations checked), then one chunk with the sources,
    quotes and checks.

    Args:
        chat: the chat model. Quote answers and the ``constrained`` grammar read best on
            hearthlm's ChatHearth; with a chat model that reads no constraint the quote reader
            keeps its ranking's choice, ``auto`` writes freely and checks the answer's
            grounding, and ``constrained`` asks for a :class:`CitedSentence` by native tool
            calling, JSON mode, or a parsed reply retried once.
        retriever: where the sources come from.
        min_relevance: for written answers, below this cosine similarity no chunk counts,
            and with none left the answer is "I don't know" without a model call. Quote
            answers read every hit and refuse by ``min_quote_relevance`` instead.
        max_sources: chunks packed into the prompt (default: the retriever's ``k``).
        answer: ``quote``, ``constrained``, ``free``, or ``auto``: ``quote`` on the packaged
            default model, ``constrained`` on another local model, ``free`` on a chat model
            that reads no grammar.
        on_ungrounded: for written answers, ``flag`` marks an answer that states what its
            sources do not hold (``Answer.grounded``); ``quote`` also replaces it by the quote
            answer.
        choices: most quote candidates the model chooses among.
        choice_margin: candidates scoring within this share of the best are close enough
            for the model to choose between (by query likelihood); 0 keeps the ranking.
        min_quote_relevance: a quote answer needs a sentence at least this relevant
            (:func:`hearthlm.retrieval.reader.relevance`); else "I don't know".
        max_quotes: most sentences in a quote answer.
        quote_ratio: a further sentence joins the answer when it comes from another source
            and scores at least this share of the best one.

    Example:
        >>> qa = DocsQA(ChatHearth(), HybridRetriever.from_index(index))  # doctest: +SKIP
        >>> answer = qa.invoke("How do I reset the device?")  # doctest: +SKIP
        >>> answer.text, [(q.path, q.start, q.end) for q in answer.quotes]  # doctest: +SKIP
    """

    def __init__(
        self,
        chat: BaseChatModel,
        retriever: HybridRetriever,
        min_relevance: float = 0.3,
        max_sources: int | None = None,
        answer: AnswerMode = "auto",
        on_ungrounded: Literal["flag", "quote"] = "flag",
        choices: int = 3,
        choice_margin: float = 0.05,
        min_quote_relevance: float = 0.15,
        max_quotes: int = 2,
        quote_ratio: float = 0.7,
        citations: Literal["constrained", "free"] | None = None,
    ) -> None:
        if answer not in ("auto", "quote", "constrained", "free"):
            raise ConfigError(
                f"answer mode {answer!r} is not one of auto, quote, constrained, free"
            )
        self.chat = chat
        self.retriever = retriever
        self.min_relevance = min_relevance
        self.max_sources = max_sources or retriever.k
        # ``citations=`` is the name this setting had before quote answers existed.
        self.answer = citations or answer
        self.on_ungrounded = on_ungrounded
        self.choices = choices
        self.choice_margin = choice_margin
        self.min_quote_relevance = min_quote_relevance
        self.max_quotes = max_quotes
        self.quote_ratio = quote_ratio

    @property
    def mode(self) -> str:
        """The answer mode in effect (``auto`` resolved for this chat model)."""
        if self.answer != "auto":
            return self.answer
        if not can_constrain(self.chat):
            return "free"
        return "quote" if getattr(unwrap(self.chat), "model", None) is None else "constrained"

    def _stream(
        self,
        input: str | QAInput,
        config: RunnableConfig | None = None,
        history: Sequence[BaseMessage] = (),
        **kwargs: Any,
    ) -> Iterator[Answer]:
        """:class:`Answer` chunks that add up to the answer: text deltas as it is made, then
        the rest of the answer. ``history`` (or the input's ``history``) is earlier turns of
        the same conversation."""
        question = question_text(input)
        if isinstance(input, dict):
            history = input.get("history", history)
        mode = self.mode
        if not question.strip():
            yield Answer(question, NO_ANSWER, mode=mode)
            return
        hits = self.retriever.search(question, k=self.max_sources)
        # A chunk's cosine similarity is a coarse gate: "Within how many days are returns
        # accepted?" scores 0.28 against the chunk that answers it. The quote reader reads every
        # hit and refuses by its sentences' relevance instead.
        near = [h for h in hits if (h.similarity or 0.0) >= self.min_relevance]
        relevant = hits if mode == "quote" else near
        if not relevant:
            yield Answer(question, NO_ANSWER, mode=mode)
            return
        sources, messages = self._pack(question, relevant, history)
        if not sources:
            raise ContextWindowError(
                "no retrieved chunk fits the context window beside the question and history; "
                "shorten the history or raise llm.context_size."
            )
        if mode == "quote":
            answer = self.quote(question, sources)
            if not answer.known and not near:
                answer.sources = []  # nothing retrieved was even near the question
            yield answer
            return
        yield from self._write(question, sources, messages, mode, config)

    def quote(self, question: str, sources: list[Source]) -> Answer:
        """The quote answer over already packed ``sources``: the sentence the model chooses among
        the best candidates, or "I don't know" when no sentence is relevant enough."""
        ranked = reader.candidates(question, sources, self._embeddings())
        if not ranked or reader.relevance(ranked[0]) < self.min_quote_relevance:
            return Answer(question, NO_ANSWER, sources, mode="quote")
        pick, _ = reader.choose(self.chat, question, ranked, self.choice_margin, self.choices)
        quotes = reader.select(ranked, pick, self.max_quotes, self.quote_ratio)
        text = " ".join(f"{q.reads} [{q.source}]" for q in quotes)
        numbers = {q.source for q in quotes}
        cited = [s for s in sources if s.number in numbers]
        return Answer(question, text, sources, cited, mode="quote", quotes=quotes)

    def _write(
        self,
        question: str,
        sources: list[Source],
        messages: list[BaseMessage],
        mode: str,
        config: RunnableConfig | None = None,
    ) -> Iterator[Answer]:
        """A written answer: its text as the model writes it (in its final form: see
        :class:`CitedText`), then the rest of the checked :class:`Answer`."""
        replace = self.on_ungrounded == "quote"
        writer = CitedText(sources)
        shown = ""
        for text in self._written(sources, messages, mode, config):
            delta = writer.push(text)
            if delta and not replace:  # a reply that may be replaced is shown once checked
                shown += delta
                yield Answer(question, delta, mode=mode)
        answer = resolve_citations(question, writer.raw, sources)
        answer.mode = mode
        cited = answer.citations or sources
        answer.unsupported = unsupported(answer.text, [s.snippet for s in cited])
        answer.grounded = not answer.unsupported
        if replace and not answer.grounded:
            quoted = self.quote(question, sources)
            quoted.replaced, quoted.grounded = answer.text, False
            quoted.unsupported, quoted.mode = answer.unsupported, mode
            quoted.removed_citations = answer.removed_citations
            answer = quoted
        answer.text = answer.text[len(shown) :]  # the part not streamed yet
        yield answer

    def _written(
        self,
        sources: list[Source],
        messages: list[BaseMessage],
        mode: str,
        config: RunnableConfig | None,
    ) -> Iterator[str]:
        """The model's text: free, or one cited sentence (under a grammar on a chat model that
        reads one, else as a :class:`CitedSentence` through the structured-reply fallbacks)."""
        if mode != "constrained":
            for chunk in self.chat.stream(messages, config):
                yield str(chunk.content)
            return
        if can_constrain(self.chat):
            numbers = " | ".join(f'"{s.number}"' for s in sources)
            grammar = Constraint(grammar=CITED_SENTENCE.format(numbers=numbers))
            for chunk in self.chat.stream(messages, config, constraint=grammar):
                yield str(chunk.content)
            return
        cited = structured_reply(self.chat, messages, CitedSentence, config)
        if cited is not None:
            yield f"[{cited.source}] {cited.sentence.strip()}"

    def _embeddings(self) -> Any:
        index = getattr(self.retriever, "index", None)
        return getattr(index, "embeddings", None)

    def _pack(
        self, question: str, hits: list[Hit], history: Sequence[BaseMessage]
    ) -> tuple[list[Source], list[BaseMessage]]:
        """As many of the best chunks as fit the context, counted in the chat model's tokens.
        A chat model that does not say its context window (a remote one) gets every chunk."""
        model = unwrap(self.chat)
        window = getattr(model, "context_window", None)
        budget = window - int(getattr(model, "max_new_tokens", 0)) if window else None
        sources: list[Source] = []
        messages = prompt_messages([], question, history)
        for hit in hits:
            candidate = Source.from_hit(len(sources) + 1, hit)
            trial = prompt_messages([*sources, candidate], question, history)
            if budget is not None and model.get_num_tokens_from_messages(trial) > budget:
                continue  # a later, shorter chunk may still fit
            sources.append(candidate)
            messages = trial
        return sources, messages


def prompt_messages(
    sources: Sequence[Source], question: str, history: Sequence[BaseMessage] = ()
) -> list[BaseMessage]:
    """The messages a written answer's model reads: the instructions, ``history``, then the
    numbered sources and the question."""
    block = "\n\n".join(f"Source [{s.number}]: {s.snippet}" for s in sources)
    return [SystemMessage(SYSTEM), *history, HumanMessage(f"{block}\n\nQuestion: {question}")]


def resolve_citations(question: str, text: str, sources: list[Source]) -> Answer:
    """Map ``[n]`` citations to sources; drop (and report) any that point to none."""
    by_number = {s.number: s for s in sources}
    used: dict[int, Source] = {}
    removed: list[int] = []
    cleaned = _cited_text(text, by_number, used, removed)
    citations = [used[n] for n in sorted(used)]
    return Answer(question, cleaned, sources, citations, removed, mode="free")


# A reply's opening citation, "[2] " (the constrained form), moves to its end.
_LEAD = re.compile(r"^\[(\d+)\]\s+(.*?)([.!?]?)$", re.DOTALL)
# What may still become an opening citation: "[", "[2", "[2]", "[2] ".
_LEAD_START = re.compile(r"^\s*\[\d*(\]\s*)?$")


def _cited_text(
    text: str,
    by_number: dict[int, Source],
    used: dict[int, Source] | None = None,
    removed: list[int] | None = None,
) -> str:
    """``text`` with its citations checked: an opening citation moved to the end, numbers of
    no source dropped, runs of spaces made one, spaces before punctuation and around the text
    removed."""
    lead = _LEAD.match(text.strip())
    if lead:  # constrained form "[n] sentence." reads better as "sentence [n]."
        text = f"{lead.group(2)} [{lead.group(1)}]{lead.group(3)}"
    return _clean(text, by_number, used, removed)


def _clean(
    text: str,
    by_number: dict[int, Source],
    used: dict[int, Source] | None = None,
    removed: list[int] | None = None,
) -> str:
    def keep(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*,\s*", match.group(1))]
        valid = [n for n in numbers if n in by_number]
        if removed is not None:
            removed.extend(n for n in numbers if n not in by_number)
        if used is not None:
            for n in valid:
                used.setdefault(n, by_number[n])
        return f"[{', '.join(map(str, valid))}]" if valid else ""

    cleaned = CITATION.sub(keep, text)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)  # where a dropped citation left two spaces
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned).strip()


class CitedText:
    """A written reply's text, checked as it streams: ``push`` takes the model's deltas and
    returns the text that is settled, in the form :func:`resolve_citations` gives the whole
    reply. Text that may still change is held back: an open ``[``, trailing spaces, and an
    opening citation with the reply's last punctuation (the citation moves before it).
    Whatever was pushed, what it returned is a prefix of ``resolve_citations(raw).text``."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self._by_number = {s.number: s for s in sources}
        self.raw = ""
        self._sent = ""

    def push(self, delta: str) -> str:
        self.raw += delta
        if _LEAD_START.match(self.raw):
            return ""  # it may open with a citation
        lead = _LEAD.match(self.raw.strip())
        body = lead.group(2) + lead.group(3) if lead else self.raw
        opened = body.rfind("[")
        if opened > body.rfind("]"):
            body = body[:opened]
        body = body.rstrip()
        if lead and body.endswith((".", "!", "?")):
            body = body[:-1]  # the reply's last mark, maybe: the citation goes before it
        return self._send(_clean(body, self._by_number))

    def _send(self, text: str) -> str:
        if not text.startswith(self._sent):
            return ""  # settles later
        delta, self._sent = text[len(self._sent) :], text
        return delta
