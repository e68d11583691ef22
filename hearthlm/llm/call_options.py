"""What a call asks of the reply, read from its options and messages before anything is
decoded: the constraint given with the call, JSON mode's keys, a response format's schema, the
distinct tools bound, and each message in the form the chat template reads."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from hearthlm.errors import ConfigError
from hearthlm.llm.backend import TEXT_REPLY, Constraint
from hearthlm.llm.tools import render_tool_call, strict_schema

__all__ = [
    "JSON_OBJECT",
    "TEXT_ONLY",
    "distinct_tools",
    "explicit_constraint",
    "json_mode_schema",
    "json_schema_of",
    "template_message",
]

TEXT_ONLY = f"root ::= {TEXT_REPLY}\n"  # plain text that cannot open a JSON tool call
# JSON mode, in OpenAI's words: the reply is a JSON object, of any shape.
JSON_OBJECT: dict[str, Any] = {"type": "json_object"}


# A quoted key name, in a sentence that speaks of keys or fields.
_QUOTED_KEY = re.compile(r"""['"`]([A-Za-z_][A-Za-z0-9_]{0,63})['"`]""")
_KEY_WORDS = re.compile(r"\b(keys?|fields?|propert(y|ies)|attributes?)\b", re.IGNORECASE)


def json_mode_schema(request: str) -> dict[str, Any]:
    """JSON mode's grammar: an object, whose keys are those the request quotes in a sentence
    about keys ("a JSON with 'setup' and 'punchline' keys"), each required and holding a
    string, number, boolean or null, if it quotes any. JSON mode asks the prompt to say which
    keys; a small model left to write them forgets one, or nests an object in another.
    """
    keys: list[str] = []
    for sentence in re.split(r"(?<=[.!?\n])\s+", request):
        if _KEY_WORDS.search(sentence):
            keys += [k for k in _QUOTED_KEY.findall(sentence) if k not in keys]
    if not keys:
        return {"type": "object"}
    return {
        "type": "object",
        "properties": {k: {"type": ["string", "number", "boolean", "null"]} for k in keys},
        "required": keys,
        "additionalProperties": False,
    }


def explicit_constraint(kwargs: dict[str, Any]) -> Constraint | None:
    """The constraint given with the call (``constraint=``), which overrides tools and formats:
    a :class:`Constraint`, a GBNF grammar (``str``) or a JSON schema (``dict``)."""
    if "grammar" in kwargs:
        raise ConfigError(
            "grammar= is not a ChatHearth option; pass constraint=Constraint(grammar=...) "
            "or constraint='<GBNF>'."
        )
    constraint = kwargs.get("constraint")
    if constraint is None or isinstance(constraint, Constraint):
        return constraint
    if isinstance(constraint, str):
        return Constraint(grammar=constraint)
    if isinstance(constraint, dict):
        return Constraint(json_schema=strict_schema(constraint))
    raise ConfigError(
        f"constraint={constraint!r} is not a Constraint, a GBNF grammar (str) or a JSON schema "
        "(dict)."
    )


def distinct_tools(tools: Sequence[Any]) -> list[Any]:
    """``tools`` with repeats of one definition dropped: a pydantic class and its own JSON schema
    differ only in ``title`` annotations, and are the same tool. Two runnable tools (functions or
    LangChain tools) that share a name stay, even with one schema: a call could not say which one
    runs, so :func:`format_tools` refuses them."""
    kept: list[Any] = []
    runnable: dict[str, bool] = {}
    for tool in tools:
        key = json.dumps(_untitled(convert_to_openai_tool(tool)), sort_keys=True, default=str)
        runs = _runs(tool)
        if key in runnable and not (runs and runnable[key]):
            continue
        runnable[key] = runnable.get(key, False) or runs
        kept.append(tool)
    return kept


def _runs(tool: Any) -> bool:
    """Whether ``tool`` is code that runs (a function or a LangChain tool), not only a schema."""
    return isinstance(tool, BaseTool) or (callable(tool) and not isinstance(tool, type))


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def json_schema_of(schema: Any) -> dict[str, Any]:
    """The JSON schema a structured reply must follow: JSON mode's any-object, a JSON schema as
    given, or the parameters of a pydantic class, TypedDict or tool."""
    if schema == JSON_OBJECT:
        return {"type": "object"}
    if isinstance(schema, dict) and "function" not in schema and "properties" in schema:
        return schema
    return dict(convert_to_openai_tool(schema)["function"]["parameters"])


def template_message(message: BaseMessage) -> dict[str, str]:
    """``message`` as the chat template reads it: a role and text; an AI message's tool calls
    rendered as the model writes them, a tool result as a user turn that names the tool."""
    text = message.text if isinstance(message.text, str) else str(message.content)
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": text}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": text}
    if isinstance(message, AIMessage):
        calls = [render_tool_call(c["name"], c["args"]) for c in message.tool_calls]
        return {"role": "assistant", "content": "\n".join([text, *calls]).strip()}
    if isinstance(message, ToolMessage):
        name = message.name or "the tool"
        return {"role": "user", "content": f"Result of {name}: {text}"}
    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": text}
    raise ConfigError(
        f"unsupported message type {type(message).__name__}; use System, Human, AI, Tool or "
        "ChatMessage."
    )
