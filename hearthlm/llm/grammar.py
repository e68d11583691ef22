"""JSON-schema grammars whose strings are JSON strings, one GBNF for both backends.

Neither converter we had was strict. llama-cpp-python's ``json_schema_to_gbnf`` lets a string
hold any character but ``"`` and ``\\`` (``char ::= [^"\\\\] | ...``), control characters
included, so a small model wrote raw newlines inside arguments and the reply was not JSON.
xgrammar's converter does the same for every string with a ``maxLength`` (``[^"\\\\\\r\\n]``,
no escapes), and every free string in a call has one. JSON (RFC 8259) and llama.cpp's own C++
converter exclude U+0000 to U+001F. So we keep llama-cpp-python's converter, which covers the JSON
schema that tools produce, swap its two character rules for llama.cpp's strict ones, and hand
the same GBNF to llama.cpp and to xgrammar (``Grammar.from_ebnf`` reads it). Its literals are
escaped as llama.cpp's converter escapes them: llama-cpp-python's copy leaves backslashes alone,
so an enum value or copied span holding ``\\`` or ``"`` gave a broken grammar.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hearthlm.errors import ConfigError
from hearthlm.llm.backend import TEXT_REPLY, Constraint

# Plain text that is not a tool call: it may not open with "{" or whitespace.
_TEXT_RULE = f"text-reply ::= {TEXT_REPLY}"

# A JSON string character: no quote, backslash or control character, or an escape (llama.cpp's
# json-schema-to-grammar rule, byte for byte).
STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})'
# A regex "." inside a string pattern: one character that needs no escape in JSON.
STRICT_DOT = r'[^"\\\x7F\x00-\x1F]'


def json_schema_gbnf(schema: dict[str, Any]) -> str:
    """GBNF of JSON matching ``schema``, whose strings are valid JSON strings.

    Raises:
        ConfigError: llama-cpp-python cannot convert the schema (the message says which part).
    """
    converter = _converter()
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "stdin")
        converter.visit(resolved, "")
    except (AssertionError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"llama.cpp cannot turn this JSON schema into a grammar ({exc!r}): "
            f"{json.dumps(schema)[:300]}. Simplify the tool's argument types."
        ) from exc
    rules = converter._rules  # name -> body; the converter keeps no other copy
    if "char" in rules:
        rules["char"] = STRICT_CHAR
    if "dot" in rules:
        rules["dot"] = STRICT_DOT
    return str(converter.format_grammar())


def _converter() -> Any:
    from llama_cpp import llama_grammar

    class StrictConverter(llama_grammar.SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            return _literal(literal)

    return StrictConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"}


def choice_gbnf(options: list[str]) -> str:
    """GBNF of plain text that is exactly one of ``options`` (each a literal).

    Raises:
        ConfigError: ``options`` is empty, so no reply could match.
    """
    if not options:
        raise ConfigError("a choice grammar needs at least one option; got none.")
    return "root ::= " + " | ".join(_literal(option) for option in options) + "\n"


def _literal(text: str) -> str:
    """A GBNF literal of ``text``, escaped as llama.cpp's own converter escapes it."""
    return '"' + "".join(_LITERAL_ESCAPES.get(c, c) for c in text) + '"'


def constraint_gbnf(constraint: Constraint) -> str:
    """The GBNF grammar llama.cpp decodes ``constraint`` under.

    Raises:
        ConfigError: the JSON schema cannot be turned into a grammar.
    """
    if constraint.grammar is not None:
        gbnf = constraint.grammar
    else:
        gbnf = json_schema_gbnf(constraint.json_schema or {})
    if constraint.allow_text:
        gbnf = gbnf.replace("root ::=", "tool-call ::=", 1)
        gbnf = f"root ::= tool-call | text-reply\n{_TEXT_RULE}\n{gbnf}"
    return gbnf


def regex_gbnf(pattern: str) -> str:
    """GBNF of plain text that matches the regular expression ``pattern`` whole (it is
    anchored if it is not already).

    Raises:
        ConfigError: llama-cpp-python cannot convert the pattern (look-arounds, for one).
    """
    from llama_cpp import llama_grammar

    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"not a regular expression ({exc}): {pattern[:300]}") from None
    expanded = _expand_classes(pattern)
    anchored = ("" if expanded.startswith("^") else "^") + expanded
    anchored += "" if expanded.endswith("$") else "$"
    converter = llama_grammar.SchemaConverter(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=True
    )
    try:
        converter._visit_pattern(anchored, "root")
    except (AssertionError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise ConfigError(
            f"this regular expression cannot be turned into a grammar ({exc!r}): {pattern[:300]}"
        ) from exc
    return str(converter.format_grammar())


# Class escapes the converter reads as literals, as sets: outside brackets and inside them.
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r"}


def _expand_classes(pattern: str) -> str:
    """``pattern`` with ``\\d``, ``\\w`` and ``\\s`` written as character sets."""
    out, inside, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            if escaped in _CLASS_ESCAPES:
                body = _CLASS_ESCAPES[escaped]
                out.append(body if inside else f"[{body}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        out.append(c)
        i += 1
    return "".join(out)
