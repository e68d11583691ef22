"""A grounding check for generated answers: every number, date, code and name an answer states
must be in the sources it cites.

A small model's free sentence is where invented details enter ("2 years and 10 months" for a
"two-year warranty"). The check is deliberately literal: numbers are compared as numbers (number
words count: "two-year" supports "2 years"), codes such as ``E4`` or ``v2.1`` and capitalised
names must appear in the cited text, case-insensitively. It cannot tell whether a sentence is
true, only whether its specific facts have a source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_COUNTING = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(_COUNTING.split())} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "hundred": "100",
}
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_CODE = re.compile(r"\b(?=[A-Za-z]*\d)(?=\w*[A-Za-z])[A-Za-z0-9]+(?:[.\-][A-Za-z0-9]+)*\b")
_NAME = re.compile(r"\b[A-Z][a-zA-Z'\u2019]+(?:\s+[A-Z][a-zA-Z'\u2019]+)*")
CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")  # "[2]", "[1, 3]": the numbers
# Capitalised words that name nothing: sentence openers and the like.
_OPENERS = (
    "I A An The This That These Those It Its If In On At For To Of And Or But So As By With "
    "Yes No Not Please Note You Your We Our They Their He She His Her There Here When Where What "
    "Which Who Why How Do Does Did Is Are Was Were Be Can Could Should Would Will May Must "
    "After Before Then Also Every Each All Any Some Most Source Sources Answer Monday Tuesday "
    "Wednesday Thursday Friday Saturday Sunday"
)
_COMMON = set(_OPENERS.split())


def claims(answer: str) -> list[str]:
    """The specific facts ``answer`` states: numbers, codes and capitalised names, in order.

    Example:
        >>> claims("The warranty is 2 years and 10 months [1].")
        ['2', '10']
    """
    text = CITATION.sub(" ", answer)
    found: list[str] = []
    for match in _CODE.finditer(text):
        if not match.group().isdigit():
            found.append(match.group())
    for match in _NUMBER.finditer(text):
        found.append(match.group().replace(",", ""))
    for match in _NAME.finditer(text):
        words = match.group().split()
        if re.search(r"(^|[.!?:]\s+)$", text[: match.start()]):
            words = words[1:]  # a sentence's first word is capitalised whatever it is
        words = [w for w in words if w not in _COMMON]
        if words and not any(c.isdigit() for c in match.group()):
            found.append(" ".join(words))
    return list(dict.fromkeys(found))


def unsupported(answer: str, sources: Iterable[str]) -> list[str]:
    """The claims of ``answer`` that none of ``sources`` contains (empty: grounded).

    Example:
        >>> unsupported("It lasts 2 years.", ["a two-year limited warranty"])
        []
        >>> unsupported("It lasts 2 years and 10 months.", ["a two-year limited warranty"])
        ['10']
    """
    haystack = " ".join(sources)
    words = set(_normalise(haystack).split())
    flat = f" {_normalise(haystack)} "
    missing = []
    for claim in claims(answer):
        norm = _normalise(claim)
        if not norm:
            continue
        present = f" {norm} " in flat if " " in norm else norm in words
        if not present:
            missing.append(claim)
    return missing


def _normalise(text: str) -> str:
    """Lower case, number words as digits, thousands separators gone, punctuation as spaces."""
    text = text.lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"[^\w.]+|\.(?!\d)", " ", text)
    return " ".join(_NUMBER_WORDS.get(word, word) for word in text.split())
