"""Arguments copied from the request, not written: the small-model principle for tool calls.

At 135M parameters the model writes string arguments badly (it invents text, or repeats itself
until a length cap) but copies well when it may only choose. Ids, names, cities, dates and numbers
in a request usually appear in it verbatim, so :func:`copy_schema` narrows each free string field
of a JSON schema to the word spans of the source texts, and each number field to the numbers in
them. The grammar then lets the model choose among those, and it cannot write anything else. A
field keeps its free form when no span fits its constraints (length, pattern, format, bounds), so
the narrowed schema always accepts a subset of what the original accepts.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

MAX_SPAN_WORDS = 8
# Enough for a few sentences of spans; a long message keeps its most recent words' spans.
MAX_SPANS = 400
# Punctuation that may close or open a word without being part of a value.
EDGE = "\"'`.,;:!?()[]{}<>"
_OPERATORS = frozenset(["+", "-", "*", "/", "^", "%", "=", "**", "//", "\u00d7", "\u00f7"])
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")


def text_spans(texts: Sequence[str], max_words: int = MAX_SPAN_WORDS) -> list[str]:
    """Word spans of ``texts`` (latest text first), each also without edge punctuation or a
    trailing possessive, so that "A123?" offers "A123" and "Chen Wei's" offers "Chen Wei"."""
    spans: dict[str, None] = {}
    for text in reversed(texts):
        words = text.split()
        for length in range(1, max_words + 1):
            for start in range(len(words) - length + 1):
                if _cuts(words, start, start + length):
                    continue
                raw = " ".join(words[start : start + length])
                for span in _variants(raw):
                    if len(spans) >= MAX_SPANS:
                        return list(spans)
                    spans.setdefault(span, None)
    return list(spans)


def _cuts(words: list[str], start: int, end: int) -> bool:
    """Whether ``words[start:end]`` cuts an expression short: it starts or ends at an operator,
    or one stands right outside it ("1234" of "1234 * 5678"), or it opens a bracket it does not
    close. Offered such a span, a small model takes the short one."""
    inside = words[start:end]
    edges = [inside[0], inside[-1]]
    if start > 0:
        edges.append(words[start - 1])
    if end < len(words):
        edges.append(words[end])
    if any(w in _OPERATORS for w in edges):
        return True
    return not _balanced(" ".join(inside))


def _balanced(text: str) -> bool:
    return all(text.count(a) == text.count(b) for a, b in ("()", "[]"))


def _variants(raw: str) -> list[str]:
    stripped = raw.strip(EDGE)
    if stripped.endswith(("'s", "\u2019s")):
        stripped = stripped[:-2]
    return [s for s in dict.fromkeys((raw, stripped)) if s and _plain(s) and _balanced(s)]


def _plain(span: str) -> bool:
    return not any(ord(c) < 0x20 or c == "\x7f" for c in span)


def text_numbers(texts: Sequence[str]) -> list[float]:
    """The numbers written in digits in ``texts``, in order, without repeats."""
    found: dict[float, None] = {}
    for text in texts:
        for match in _NUMBER.findall(text):
            found.setdefault(float(match), None)
    return list(found)


def copy_schema(schema: dict[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """A copy of ``schema`` whose free strings are spans of ``texts`` and whose numbers are numbers
    written in ``texts``, wherever at least one candidate satisfies the field's constraints."""
    spans = text_spans(texts)
    numbers = text_numbers(texts)
    schema = copy.deepcopy(schema)

    def visit(node: Any, field: str = "") -> Any:
        if isinstance(node, list):
            return [visit(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {
            key: (
                {name: visit(sub, name) for name, sub in value.items()}
                if key == "properties" and isinstance(value, dict)
                else visit(value)
            )
            for key, value in node.items()
        }
        kind = node.get("type")
        if {"enum", "const"} & node.keys() or kind not in ("string", "integer", "number"):
            return node
        if kind == "string":
            fitting: list[Any] = [
                s for s in spans if _string_fits(s, node) and not _echoes(s, field)
            ]
        else:
            fitting = [_as_json_number(n, kind) for n in numbers if _number_fits(n, kind, node)]
        if not fitting:
            return node
        narrowed = {k: v for k, v in node.items() if k in ("description", "title", "default")}
        return {**narrowed, "enum": fitting}

    result: dict[str, Any] = visit(schema)
    return result


def _echoes(span: str, field: str) -> bool:
    """Whether ``span`` holds a word of its own field's name: after ``"order_id": "`` a 135M model
    copies "order" or "order Q-77" where the id is "Q-77"; the value of a field rarely names it."""
    names = set(field.lower().split("_")) - {""}
    return any(word.lower().strip("'\".,?!") in names for word in span.split())


def _string_fits(span: str, node: dict[str, Any]) -> bool:
    if "format" in node:
        return False
    if not node.get("minLength", 0) <= len(span) <= node.get("maxLength", len(span)):
        return False
    pattern = node.get("pattern")
    return pattern is None or re.search(pattern, span) is not None


def _number_fits(value: float, kind: str, node: dict[str, Any]) -> bool:
    if kind == "integer" and not value.is_integer():
        return False
    if "minimum" in node and value < node["minimum"]:
        return False
    if "maximum" in node and value > node["maximum"]:
        return False
    if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
        return False
    return not ("exclusiveMaximum" in node and value >= node["exclusiveMaximum"])


def _as_json_number(value: float, kind: str) -> int | float:
    return int(value) if kind == "integer" or value.is_integer() else value
