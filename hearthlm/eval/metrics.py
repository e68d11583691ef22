"""Scores for generated text, retrieval, citations and agents.

ROUGE comes from rouge-score and BLEU/chrF from sacrebleu, so figures compare with published ones;
exact match and token F1 use the SQuAD normalisation (lower case, no punctuation, no articles).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F-measures (stemmed). ROUGE-Lsum splits sentences on newlines."""
    scores = _rouge_scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults, 0-100); each prediction's reference, or its references
    (n-gram counts are clipped by the most any of them holds)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), _streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu defaults, 0-100); each prediction's reference, or its references
    (the best of them counts)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), _streams(references)).score)


def _streams(references: Sequence[str | Sequence[str]]) -> Any:
    """Every item's references in sacrebleu's layout: stream k holds each item's k-th reference,
    None where an item has fewer (sacrebleu then scores that item against the ones it has;
    its type hints leave out the None its documentation allows)."""
    listed = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    most = max((len(refs) for refs in listed), default=1)
    return [[refs[k] if k < len(refs) else None for refs in listed] for k in range(most)]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CITATIONS = re.compile(r"\[\d+(?:,\s*\d+)*\]")  # "[1]", "[2, 3]": a cited answer's markers


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse spaces; a
    cited answer's markers ("[1]") go first, so that their numbers do not count as words."""
    text = _CITATIONS.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text.translate(_PUNCTUATION))
    return " ".join(text.split())


def contains_answer(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when a normalised reference appears in the normalised prediction as whole words:
    a cited answer quotes a sentence, so it holds its answer rather than equals it."""
    refs = [references] if isinstance(references, str) else references
    haystack = f" {normalize_answer(prediction)} "
    return float(any(f" {w} " in haystack for r in refs if (w := normalize_answer(r))))


def abstention_scores(answered: Sequence[bool], answerable: Sequence[bool]) -> dict[str, float]:
    """How well "I don't know" is kept for the questions the documents do not answer:
    ``idk_precision``, the share of abstentions that were on unanswerable questions, and
    ``idk_recall``, the share of unanswerable questions abstained on (each 0.0 with nothing to
    count)."""
    pairs = list(zip(answered, answerable, strict=True))
    abstained = [can for done, can in pairs if not done]
    unanswerable = [done for done, can in pairs if not can]
    precision = sum(not can for can in abstained) / len(abstained) if abstained else 0.0
    recall = sum(not done for done in unanswerable) / len(unanswerable) if unanswerable else 0.0
    return {"idk_precision": precision, "idk_recall": recall}


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference."""
    refs = [references] if isinstance(references, str) else references
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in refs))


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """Best bag-of-tokens F1 against any reference, after SQuAD normalisation."""
    refs = [references] if isinstance(references, str) else references
    return max((_f1(prediction, r) for r in refs), default=0.0)


def _f1(prediction: str, reference: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Share of the relevant ids found in the first ``k`` results."""
    gold = set(relevant)
    return len(gold & set(ranked[:k])) / len(gold) if gold else 0.0


def mrr(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    """Reciprocal rank of the first relevant result (0 when none is found)."""
    gold = set(relevant)
    return next((1.0 / rank for rank, doc in enumerate(ranked, 1) if doc in gold), 0.0)


def ndcg_at_k(ranked: Sequence[str], relevance: dict[str, float], k: int) -> float:
    """nDCG@k with graded relevance (``{doc id: grade}``), as in BEIR and trec_eval."""
    dcg = sum(
        relevance.get(doc, 0.0) / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1)
    )
    ideal = sorted(relevance.values(), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, 1))
    return dcg / idcg if idcg else 0.0


def citation_precision(cited_texts: Sequence[str], supporting: Sequence[str]) -> float:
    """Share of citations whose chunk contains some supporting text (normalised containment);
    0.0 for an answer that cites nothing."""
    if not cited_texts:
        return 0.0
    needles = [normalize_answer(s) for s in supporting if normalize_answer(s)]
    hits = sum(any(n in normalize_answer(text) for n in needles) for text in cited_texts)
    return hits / len(cited_texts)


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean of ``values``; 0.0 for none (a task with no records scores 0)."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0
