"""Tool calls chosen, not written: the small-model principle applied to the whole call.

Asked to open a call and write its name, the 135M model names the right tool for under half of
the requests; its greedy grammar-bound choice of an argument goes wrong in the same way (the
first token decides, so "Buenos" beats "Buenos Aires" and "USD" beats the currency the user
named). Scoring whole alternatives with the model's log-likelihood does much better:

- **The tool** is the one under whose description the request is most likely, a noisy-channel
  choice: ``log p(request | "Function: <name>: <description>\\nA user request that needs this
  function:")``. When a call is optional, a pass "function" (answer directly) competes with the
  tools in the same way.
- **Each argument** is the candidate (a span or number of the request, as in
  :mod:`hearthlm.llm.spans`, or a value of the field's enum) whose text, with its closing quote,
  is most likely right after ``"field":`` in the call. Fields are filled in order, each with the
  ones before it in the prompt. An enum value that the request names in words wins over the
  model's prior; a value is not used for two fields; an optional field is included only when
  the model would go on to it rather than close the call.

Fields with no finite set of candidates (free text that fits no span, objects, arrays) are left
to the grammar, which then writes the call with every chosen field fixed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from hearthlm.llm.spans import copy_schema
from hearthlm.llm.tools import strict_schema

# (context, continuations) -> log-likelihood of each continuation after the context; only the
# highest is used, so a scorer may give -inf to those that cannot be highest.
Scorer = Callable[[str, Sequence[str]], list[float]]

CHANNEL = "Function: {name}: {description}\nA user request that needs this function:"
PASS_DESCRIPTION = "Answer the user directly without any function."
_FREE = object()  # a field whose value the grammar writes


def best_scorer(model: Any) -> Scorer:
    """The :data:`Scorer` of a model with ``loglikelihoods`` (ChatHearth): only the best
    alternative is scored exactly, which is all a choice needs."""
    return partial(model.loglikelihoods, best_only=True)


def choose_tool(
    score: Scorer, tools: Sequence[dict[str, Any]], request: str, *, optional: bool
) -> dict[str, Any] | None:
    """The tool spec under which ``request`` is most likely, or None when a call is
    ``optional`` and answering directly is more likely than every tool."""
    names = [t["function"]["name"] for t in tools]
    pass_name = next(n for n in ("respond", "reply", "answer_directly") if n not in names)
    entries = [(t["function"]["name"], t["function"].get("description") or "") for t in tools]
    if optional:
        entries.append((pass_name, PASS_DESCRIPTION))
    if len(entries) == 1:
        return tools[0]
    scores = [
        score(CHANNEL.format(name=name, description=_one_line(text)), [" " + request.strip()])[0]
        for name, text in entries
    ]
    best = max(range(len(entries)), key=scores.__getitem__)
    return tools[best] if best < len(tools) else None


def choose_call(
    score: Scorer, prompt: str, tool: dict[str, Any], texts: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arguments chosen for a call of ``tool`` written right after ``prompt``, and the
    tool's spec with them fixed (:func:`choose_arguments`), for :func:`call_schema`."""
    function = tool["function"]
    parameters = strict_schema(function.get("parameters") or {"type": "object"})
    opening = f'{prompt}{{"name": {json.dumps(function["name"])}, "arguments": {{'
    chosen, fixed = choose_arguments(score, opening, parameters, texts)
    return chosen, {"type": "function", "function": {**function, "parameters": fixed}}


def choose_arguments(
    score: Scorer, opening: str, parameters: dict[str, Any], texts: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Values chosen for the top-level fields of ``parameters`` (a strict object schema) and
    the schema that fixes them, for the grammar to write the call.

    ``opening`` is the prompt up to the call's arguments object, ending in ``{``; ``texts`` are
    the texts that values are copied from. Returns ``(chosen, schema)``: ``chosen`` holds the
    fields chosen here, and ``schema`` accepts exactly those values, drops the optional fields
    left out, and leaves the rest (free fields) as they were.
    """
    properties = parameters.get("properties")
    if parameters.get("type") != "object" or not isinstance(properties, dict):
        return {}, parameters
    narrowed = copy_schema(parameters, texts)["properties"]
    required = set(parameters.get("required", []))
    text = " ".join(texts)
    fields = list(properties)
    found = {f: _options(properties[f], narrowed[f], text) for f in fields}
    # Enum values the request names are taken first, in the order named ("EUR into USD"), so
    # that no span field takes their words ("thank you in German": the text is not "German").
    named: dict[str, Any] = {}
    for field in fields:
        left = [v for v in found[field][1] if v not in named.values()]
        if left:
            named[field] = left[0]
    chosen: dict[str, Any] = {}
    omitted: set[str] = set()
    prefix = opening
    for field in fields:
        options, _ = found[field]
        optional = field not in required
        if options is _FREE:
            if optional and _kind(properties[field]) in ("string", "number"):
                omitted.add(field)  # nothing in the request fits: a value would be invented
            continue
        taken = [*chosen.values(), *(v for f, v in named.items() if f != field)]
        fresh = _unused(options, taken)
        first = prefix.endswith("{")
        kind = _kind(properties[field])
        if optional and field not in named and not _wanted(field, kind, fresh, text, taken):
            close, go = score(prefix, ["}", ' "' if first else ","])
            if close > go:
                omitted.add(field)
                continue
        prefix += f"{'' if first else ', '}{json.dumps(field)}:"
        if field in named:
            value = named[field]
        else:
            options = fresh or options
            after = "" if isinstance(options[0], str) else ("}" if field == fields[-1] else ",")
            rendered = [" " + json.dumps(o, ensure_ascii=False) + after for o in options]
            scores = score(prefix, rendered)
            value = options[max(range(len(options)), key=scores.__getitem__)]
        chosen[field] = value
        prefix += " " + json.dumps(value, ensure_ascii=False)
    schema = dict(parameters)
    schema["properties"] = {
        name: ({"const": chosen[name]} if name in chosen else node)
        for name, node in properties.items()
        if name not in omitted
    }
    schema["required"] = [n for n in fields if n in required or n in chosen]
    return chosen, schema


def mentions(value: str, text: str) -> int | None:
    """Where ``text`` names the enum ``value`` in words ("changed_mind" in "I changed my mind",
    "fahrenheit" in "in Fahrenheit?"): the position of its first word, or None."""
    words = [w for w in re.split(r"[\s_\-]+", value.lower()) if w]
    if not words:
        return None
    positions = []
    for word in words:
        found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text.lower())
        if found is None:
            return None
        positions.append(found.start())
    return min(positions)


def _names_field(field: str, text: str) -> bool:
    """Whether ``text`` names ``field`` ("with the label gym", "labelled medicine"): a user who
    gives an optional argument tends to name it, where the model's prior is to leave it out."""
    words = [w for w in re.split(r"[\s_\-]+", field.lower()) if len(w) >= 3]
    return bool(words) and all(re.search(rf"(?<!\w){re.escape(w)}", text.lower()) for w in words)


def _options(
    original: dict[str, Any], narrowed: dict[str, Any], text: str
) -> tuple[Any, list[Any]]:
    """The candidate values of one field (or ``_FREE``), and those of its enum that ``text``
    names, in the order it names them."""
    node = _non_null(original)
    narrowed = _non_null(narrowed)
    if "const" in node:
        return [node["const"]], [node["const"]]
    if "enum" in node:
        values = list(node["enum"])
        named = [(mentions(v, text), v) for v in values if isinstance(v, str)]
        ordered = [v for at, v in sorted((p, v) for p, v in named if p is not None)]
        return values, ordered
    if node.get("type") == "boolean":
        return [True, False], []
    if "enum" in narrowed and node.get("type") in ("string", "integer", "number"):
        return list(narrowed["enum"]), []
    return _FREE, []


def _non_null(node: dict[str, Any]) -> dict[str, Any]:
    """``X`` of an ``anyOf: [X, null]`` (an optional field), else the node itself."""
    branches = node.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) == 1:
            return {**kept[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


def _unused(options: list[Any], used: list[Any]) -> list[Any]:
    """The options that no other field took, nor that hold a value another field took, in any
    case (the request's words go to one argument each); may be empty."""
    taken = [u.replace("_", " ") for u in used if isinstance(u, str)]
    return [o for o in options if o not in used and not _holds(o, taken)]


def _holds(option: Any, taken: list[str]) -> bool:
    return isinstance(option, str) and any(
        re.search(rf"(?<!\w){re.escape(t)}(?!\w)", option, re.IGNORECASE) for t in taken
    )


def _kind(node: dict[str, Any]) -> str:
    """ "enum" (the schema's own values), "number" or "string" (copied), else "other"."""
    node = _non_null(node)
    if {"enum", "const"} & node.keys() or node.get("type") == "boolean":
        return "enum"
    return {"integer": "number", "number": "number", "string": "string"}.get(
        node.get("type", ""), "other"
    )


def _wanted(field: str, kind: str, fresh: list[Any], text: str, taken: list[Any]) -> bool:
    """Whether the request gives an optional field without the model's say: it names the
    field, or holds a number that no other field took (a number field), or a name or code (a
    capitalised word inside a sentence, a word with digits) that no other field took (a string
    field)."""
    if _names_field(field, text):
        return True
    if kind == "number":
        return bool(fresh)
    if kind != "string":
        return False
    used = " ".join(str(t) for t in taken).lower()
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        words = re.findall(r"[\w'-]+", sentence)[1:]
        for word in words:
            value_like = (word[:1].isupper() and word != "I") or any(c.isdigit() for c in word)
            if value_like and word.lower() not in used:
                return True
    return False


def _one_line(text: str) -> str:
    return " ".join(text.split())
