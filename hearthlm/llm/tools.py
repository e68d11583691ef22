"""Tool calling on small models: tools in the prompt, calls under a JSON-schema grammar.

A call is one JSON object, ``{"name": ..., "arguments": {...}}``. Decoding is constrained to the
bound tools' names and argument schemas, so even the 135M default model emits a well-formed call,
and with ``copy_from`` its string and number arguments are chosen from the request's own words
(:mod:`hearthlm.llm.spans`).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.utils.function_calling import convert_to_openai_tool

from hearthlm.errors import ConfigError, ToolError
from hearthlm.llm.spans import copy_schema

TOOL_CHOICE_AUTO = {"auto", None}
# Strings in calls are bounded so that a small model stuck repeating itself still closes its JSON.
MAX_STRING_CHARS = 256
# Arrays likewise: a small model can otherwise add items until the token cap cuts the JSON.
MAX_ARRAY_ITEMS = 16
TOOL_CHOICE_REQUIRED = {"any", "required", True}


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI-style function specs for LangChain tools, pydantic models, functions or dicts.

    Raises:
        ToolError: two tools share a name, so a call could not say which one it means.
    """
    specs = [convert_to_openai_tool(tool) for tool in tools]
    names = [spec["function"]["name"] for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolError(
            f"two tools share the name(s) {duplicates}; a call names its tool, so rename one "
            "(StructuredTool.from_function(fn, name=...) or @tool('other_name'))."
        )
    return specs


def select_tools(
    tools: list[dict[str, Any]], tool_choice: Any
) -> tuple[list[dict[str, Any]], bool]:
    """The tools a reply may call, and whether a call is optional (text allowed instead)."""
    if tool_choice == "none" or not tools:
        return [], True
    named = isinstance(tool_choice, dict)  # {"type": "function", "function": {"name": ...}}
    if not named and tool_choice in TOOL_CHOICE_AUTO:
        return tools, True
    if not named and tool_choice in TOOL_CHOICE_REQUIRED:
        return tools, False
    name = tool_choice
    if named:
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        known = ", ".join(t["function"]["name"] for t in tools)
        raise ConfigError(
            f"tool_choice {tool_choice!r} names no bound tool. Bound tools: {known}; "
            "or use 'auto', 'any' or 'none'."
        )
    return chosen, False


def tools_instructions(tools: list[dict[str, Any]], required: bool) -> str:
    """The system-prompt text that lists the tools and how to call one.

    The wording follows the function-calling format SmolLM2 was trained on (tools as JSON inside
    ``<tools>`` tags); with it the 135M model picks the right tool far more often than with a
    bulleted list.
    """
    specs = [
        {
            "name": spec["function"]["name"],
            "description": spec["function"].get("description", ""),
            "parameters": spec["function"].get("parameters", {}).get("properties", {}),
        }
        for spec in tools
    ]
    task = (
        "you will need to make one function call to achieve the purpose."
        if required
        else "make one function call if a function fits; otherwise answer in plain text."
    )
    return (
        "You are an expert in composing functions. You are given a question and a set of "
        f"possible functions. Based on the question, {task}\n\n"
        "Here is a list of functions in JSON format that you can invoke:\n"
        f"<tools>{json.dumps(specs, ensure_ascii=False)}</tools>\n\n"
        'To call a function, reply with only JSON: {"name": ..., "arguments": {...}}'
    )


def call_schema(
    tools: list[dict[str, Any]],
    copy_from: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``; ``$defs`` are hoisted to the root.

    With ``copy_from`` (texts for every tool, or texts by tool name), free string and number
    arguments must be spans and numbers of those texts (:func:`hearthlm.llm.spans.copy_schema`).
    """
    defs: dict[str, Any] = {}
    variants = []
    for spec in tools:
        fn = spec["function"]
        params = strict_schema(fn.get("parameters") or {"type": "object", "properties": {}})
        texts = copy_from.get(fn["name"]) if isinstance(copy_from, Mapping) else copy_from
        if texts is not None:
            params = copy_schema(params, texts)
        defs.update(params.pop("$defs", {}))
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = variants[0] if len(variants) == 1 else {"anyOf": variants}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` whose objects accept no undeclared keys (small models invent them)
    and whose free strings and arrays have a length bound."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            if node.get("type") == "array":
                node.setdefault("maxItems", MAX_ARRAY_ITEMS)
            if node.get("type") == "string" and not {"enum", "const", "format"} & node.keys():
                node.setdefault("maxLength", MAX_STRING_CHARS)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(schema)
    schema.pop("title", None)
    schema.pop("description", None)
    return schema


def parse_tool_call(text: str) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Read a reply as a tool call. Text that is not JSON is a plain answer: no calls."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return [], []
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    try:
        data = json.loads(stripped, strict=True)  # no raw control characters in strings
        name, args = data["name"], data["arguments"]
        if not isinstance(name, str) or not isinstance(args, dict):
            raise TypeError("name must be a string and arguments an object")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return [], [
            InvalidToolCall(
                name=None, args=stripped, id=call_id, error=str(exc), type="invalid_tool_call"
            )
        ]
    return [ToolCall(name=name, args=args, id=call_id, type="tool_call")], []


def render_tool_call(name: str, args: dict[str, Any]) -> str:
    """How an earlier call appears in the prompt: the same JSON the model is asked to write."""
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
