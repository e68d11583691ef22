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
from typing import Any

from hearthlm.llm.spans import copy_schema
from hearthlm.llm.tools import strict_schema

# (context, continuations) -> log-likelihood of each continuation after the context; only the
# highest is used, so a scorer may give -inf to those that cannot be highest.
Scorer = Callable[[str, Sequence[str]], list[float]]

CHANNEL = "Function: {name}: {description}\nA user request that needs this function:"
PASS_DESCRIPTION = "Answer the user directly without any function."
_FREE = object()  # a field whose value the grammar writes


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
    chosen: dict[str, Any] = {}
    omitted: set[str] = set()
    prefix = opening
    fields = list(properties)
    for field in fields:
        options, named = _options(properties[field], narrowed[field], text)
        if options is _FREE:
            continue
        options = _unused(options, list(chosen.values()))
        named = [v for v in named if v in options]
        first = prefix.endswith("{")
        if field not in required and not named and not _names_field(field, text):
            close, go = score(prefix, ["}", ' "' if first else ","])
            if close > go:
                omitted.add(field)
                continue
        prefix += f"{'' if first else ', '}{json.dumps(field)}:"
        if named:
            value = named[0]
        else:
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
    """The options no earlier field took, nor that hold a value an earlier field took (the
    request's words go to one argument each); all of them when that would leave none."""
    taken = [u for u in used if isinstance(u, str)]
    kept = [o for o in options if o not in used and not _holds(o, taken)]
    return kept or options


def _holds(option: Any, taken: list[str]) -> bool:
    return isinstance(option, str) and any(
        re.search(rf"(?<!\w){re.escape(t)}(?!\w)", option) for t in taken
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
