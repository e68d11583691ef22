"""GSM8K solutions and answers: parsed once, and the number a reply or a solution ends in, written
one way.

The chains of thought (:mod:`hearthlm.agents.cot`), the maths and agent benchmarks
(:mod:`hearthlm.eval`) and the ReAct traces for fine-tuning (:mod:`hearthlm.finetune.traces`)
all read solutions through :func:`parse_solution` and compare numbers in this form, so
``"1,234.50"``, ``"$1234.5"`` and ``"1234.50"`` are one answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Solution", "extract_answer", "normalise_number", "parse_solution", "solution_answer"]

_ANSWER = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")  # a calculator step: <<48/2=24>>


@dataclass(frozen=True)
class Solution:
    """A GSM8K solution: its working (before the last ``####``), the ``(expression, result)`` of
    each ``<<expression=result>>`` calculator annotation in it, and what follows ``####``."""

    body: str
    steps: list[tuple[str, str]]
    final: str

    @property
    def answer(self) -> str | None:
        """The final answer, normalised (see :func:`normalise_number`)."""
        return normalise_number(self.final)

    @property
    def working(self) -> str:
        """The working without its calculator annotations, as a person reads it."""
        return _ANNOTATION.sub("", self.body).strip()


def parse_solution(solution: str) -> Solution:
    """Split a GSM8K solution (``"... <<48/2=24>>24 ...\\n#### 72"``) into a :class:`Solution`.

    Example:
        >>> parse_solution("She sold 48/2 = <<48/2=24>>24 clips.\\n#### 24").steps
        [('48/2', '24')]
    """
    body, _, final = solution.rpartition("####")
    return Solution(body, _ANNOTATION.findall(body), final.strip())


def normalise_number(text: str) -> str | None:
    """The first number in ``text``, without thousands commas, a dollar sign or trailing zeros:
    ``"1,234.50"`` -> ``"1234.5"``; None if ``text`` holds no number."""
    match = _NUMBER.search(text.replace("$", ""))
    if not match:
        return None
    value = match.group(0).replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value or None


def extract_answer(text: str) -> str | None:
    """A model's answer: the number after the last "The answer is", else the last number in
    ``text``, normalised; None if ``text`` holds no number."""
    found = _ANSWER.findall(text)
    if found:
        return normalise_number(found[-1])
    numbers = _NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def solution_answer(solution: str) -> str | None:
    """The gold answer of a GSM8K solution: the number after its last ``####`` (or the first
    number of a solution without one), normalised; None if there is none."""
    return parse_solution(solution).answer
