"""GSM8K answers: the number a reply or a solution ends in, written one way.

The chains of thought (:mod:`hearthlm.agents.cot`), the maths and agent benchmarks
(:mod:`hearthlm.eval`) and the ReAct traces for fine-tuning all compare numbers in this form, so
``"1,234.50"``, ``"$1234.5"`` and ``"1234.50"`` are one answer.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "normalise_number", "solution_answer"]

_ANSWER = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


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
    return normalise_number(solution.rpartition("####")[2])
