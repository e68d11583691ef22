"""The quoting reader: an answer made of verbatim sentences from the sources, chosen, never
written.

A 135M model invents details when it writes a sentence of its own, but it can choose. So the
packed sources are split into candidate sentences (:mod:`hearthlm.retrieval.sentences`) and each
is scored against the question. Where the best few are close, the model decides between them by
how likely it finds the question given each sentence (query likelihood). The quote keeps where it
came from: source number, file, page, heading and character offsets, so a caller can highlight
it.

Scores (each in [0, 1]; ``benchmarks/bench_answers.py`` measures the whole reader):
- ``dense``: cosine similarity of the question and the sentence read under its heading, with
  the index's own embedder;
- ``coverage``: the share of the question's content words the sentence (or its heading)
  holds, each word weighted by its rarity among the candidates. A word that no candidate holds
  weighs most, so a question about something the sources lack scores low everywhere, and is
  answered "I don't know";
- ``typed``: the sentence holds what the question asks for (a number for "how many", a date for
  "when", a name for "who") beyond the words of the question itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from hearthlm.llm.chain import scorer_of
from hearthlm.retrieval.retriever import Source
from hearthlm.retrieval.sentences import Span, split_sentences

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel


QUESTION_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
WEIGHTS = {"dense": 0.45, "coverage": 0.4, "typed": 0.15}
TITLE_WORD = 0.5  # weight of a question word found in the sentence's heading only
LIST_RATIO = 0.8  # a list item's neighbour this close to it makes the whole list the answer

_DATE = re.compile(
    r"\b(1[5-9]\d\d|20\d\d|january|february|march|april|may|june|july|august|september|"
    r"october|november|december)\b",
    re.IGNORECASE,
)
_AMOUNT = re.compile(
    r"\b(\d[\d,.]*|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|"
    r"thirty|forty|fifty|sixty|hundred|thousand|million|half|several|few)\b",
    re.IGNORECASE,
)
_NAME = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-z]+")
_QUALIFIER = re.compile(r"\s*\([^)]*\)")  # "(film)", "(American football)" after a title


@dataclass
class Quote:
    """A verbatim sentence of a source: ``text`` is the source's text at ``start:end``.

    Offsets count characters of the file's extracted text (for .txt and .md files, the file
    itself; for PDF and HTML, the text the loader took out of them).
    """

    text: str
    source: int
    path: str
    page: int | None
    heading: str
    start: int
    end: int
    score: float
    title: str = ""  # the heading or title line the sentence sits under

    @property
    def display(self) -> str:
        """The text on one line, as it reads in an answer."""
        return " ".join(self.text.split())

    @property
    def reads(self) -> str:
        """The quote as the answer shows it: led by its title unless the sentence names it.
        "It is told in first person …" says nothing without "Animorphs:" before it, and "Set in
        the Spiderwick Estate …" says which film only under "The Spiderwick Chronicles (film)"."""
        title, text = " ".join(self.title.split()), self.display
        if title and not _names(text, title):
            return f"{title}: {text}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": self.source,
            "path": self.path,
            "page": self.page,
            "heading": self.heading,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 4),
            "title": self.title,
        }


@dataclass
class Candidate:
    """A sentence of a packed source and its scores against the question."""

    span: Span
    source: Source
    features: dict[str, float]
    score: float = 0.0

    def quote(self, span: Span | None = None) -> Quote:
        s, span = self.source, span or self.span
        title = span.title or s.heading.rsplit(" > ", 1)[-1].strip()
        return Quote(
            span.text, s.number, s.path, s.page, s.heading, span.start, span.end, self.score, title
        )


def select(
    ranked: Sequence[Candidate],
    first: int = 0,
    max_quotes: int = 2,
    ratio: float = 0.7,
    bridge: bool = True,
) -> list[Quote]:
    """The quotes of an answer: ``ranked[first]``, then up to ``max_quotes - 1`` more from other
    sources: with ``bridge``, the best sentence of a source whose title the first quote names
    (the second hop of a two-hop question), then those that score at least ``ratio`` times as
    high (a question that needs two facts finds them in two places). A list item becomes its
    whole list when another item of it scores as high and matches as much of the question:
    "What comes in the box?" asks for every item.
    """
    top = ranked[first]
    span = top.span
    group = span.group
    if group is not None and any(
        c.span.group == group
        and c is not top
        and c.features["coverage"] >= top.features["coverage"]
        and c.score >= LIST_RATIO * top.score
        for c in ranked[:3]
    ):
        span = group
    quotes = [top.quote(span)]
    linked = _bridge(top, ranked) if bridge and max_quotes > 1 else None
    if linked is not None:
        quotes.append(linked.quote())
    for candidate in ranked:
        if len(quotes) >= max_quotes:
            break
        if candidate.source.number in {q.source for q in quotes}:
            continue
        if candidate.score >= ratio * top.score and relevance(candidate) >= relevance(top) / 2:
            quotes.append(candidate.quote())
    return quotes


def _bridge(top: Candidate, ranked: Sequence[Candidate]) -> Candidate | None:
    """The best sentence of another source whose title the top sentence names: the second hop
    of a question about "the woman who portrayed Corliss Archer" is the source titled with the
    name that the first sentence gives."""
    text = top.span.text.lower()
    for candidate in ranked:
        if candidate.source.number == top.source.number:
            continue
        title = " ".join((candidate.span.title or candidate.source.heading).split()).lower()
        if len(title) >= 4 and re.search(rf"(?<!\w){re.escape(title)}(?!\w)", text):
            return candidate
    return None


def candidates(
    question: str, sources: Sequence[Source], embeddings: Embeddings | None
) -> list[Candidate]:
    """Every candidate sentence of ``sources``, scored against ``question``, best first."""
    found: list[Candidate] = []
    for source in sources:
        for span in split_sentences(source.snippet, source.start):
            found.append(Candidate(span, source, {}))
    if not found:
        return []
    texts = [" ".join(c.span.text.split()) for c in found]
    # A sentence is read under its section's title: "Hold Start for three seconds" answers a
    # question about keep-warm mode because it sits under "Keep-warm mode".
    titled = [
        _titled(c.span.title or c.source.heading, text)
        for c, text in zip(found, texts, strict=True)
    ]
    dense = _dense(question, titled, embeddings)
    own = [_terms(text) for text in texts]
    titles = [_terms(text) for text in titled]
    weights = _term_weights(_terms(question), titles)
    total = sum(weights.values()) or 1.0
    kind = _answer_kind(question)
    for i, candidate in enumerate(found):
        # a word of the question in the sentence itself counts fully, in its heading half
        matched = sum(
            w * (1.0 if t in own[i] else TITLE_WORD if t in titles[i] else 0.0)
            for t, w in weights.items()
        )
        candidate.features = {
            "dense": float(dense[i]),
            "coverage": matched / total,
            "typed": _typed(kind, texts[i], question),
            # for "I don't know": how much of the question the sentence and its heading reach
            "reach": sum(w for t, w in weights.items() if t in titles[i]) / total,
        }
        candidate.score = sum(w * candidate.features[k] for k, w in WEIGHTS.items())
    found.sort(key=lambda c: -c.score)
    return found


def relevance(candidate: Candidate) -> float:
    """How much of the question ``candidate`` speaks to: the rarity-weighted share of the
    question's content words in it or its heading (a question whose rare words no source holds
    is not answered there)."""
    return candidate.features["reach"]


def choose(
    chat: BaseChatModel | None, question: str, ranked: Sequence[Candidate], margin: float, most: int
) -> tuple[int, bool]:
    """The index in ``ranked`` of the answer sentence, and whether the model was asked.

    Among the (at most ``most``) candidates that score within ``margin`` of the best, the model
    picks the one under which the question is most likely (query likelihood, as in UPR: Sachan
    et al., 2022). A clear winner is kept without a model call, and a chat model that cannot
    score text keeps the ranking's choice.
    """
    if not ranked:
        return 0, False
    best = ranked[0].score
    near = [i for i, c in enumerate(ranked[:most]) if c.score >= (1 - margin) * best]
    # Only a model that scores text (ChatHearth on a backend that can) is asked; another chat
    # model keeps the ranking's pick, and a .bind()-ed ChatHearth scores as the one under it.
    model = scorer_of(chat) if len(near) > 1 else None
    if model is None:
        return 0, False
    likelihood = [
        model.loglikelihood(
            QUESTION_PROMPT.format(passage=_titled(ranked[i].span.title, _flat(ranked[i]))),
            " " + " ".join(question.split()),
        )
        for i in near
    ]
    return near[int(np.argmax(likelihood))], True


def _names(text: str, title: str) -> bool:
    """Whether ``text`` names ``title`` (without its qualifier in brackets)."""
    name = " ".join(_QUALIFIER.sub(" ", title).split()).lower()
    return not name or name in text.lower()


def _flat(candidate: Candidate) -> str:
    return " ".join(candidate.span.text.split())


def _dense(question: str, texts: list[str], embeddings: Embeddings | None) -> np.ndarray:
    if embeddings is None:
        return np.zeros(len(texts))
    vectors = np.asarray(embeddings.embed_documents([question, *texts]), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.maximum(norms, 1e-9)
    return np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)


def _term_weights(question: set[str], bags: list[set[str]]) -> dict[str, float]:
    """Inverse document frequency of each question word over the candidates. A word that no
    candidate holds weighs most: it is what the question asks about and the sources lack."""
    n = len(bags)
    return {t: math.log(1 + (n + 1) / (sum(t in bag for bag in bags) + 0.5)) for t in question}


def _titled(heading: str, text: str) -> str:
    title = heading.rsplit(" > ", 1)[-1].strip()
    return f"{title}: {text}" if title else text


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | {"does", "mean", "many", "much", "long", "happen"}


def _terms(text: str) -> set[str]:
    words = [w for w in re.findall(r"\w+", text.lower()) if w not in _stopwords()]
    return set(_stemmer().stemWords(words))


def _answer_kind(question: str) -> str | None:
    q = question.lower()
    if re.search(r"\b(how (many|much|long|old|far|often|big|large|tall|high)|what (year|age))", q):
        return "amount"
    if re.search(r"\b(when|what (date|day|month|time))\b", q):
        return "date"
    if re.search(r"\bwho(m|se)?\b", q):
        return "name"
    return None


def _typed(kind: str | None, text: str, question: str) -> float:
    """1 when ``text`` holds the kind of thing the question asks for, beyond the question."""
    if kind is None:
        return 0.0
    pattern = {"amount": _AMOUNT, "date": _DATE, "name": _NAME}[kind]
    asked = {m.lower() for m in pattern.findall(question)}
    return float(any(m.lower() not in asked for m in pattern.findall(text)))
