"""A request's constraint, from whichever field names it, checked before any token is made.

A schema that cannot become a grammar, or that no value can satisfy, is a 400: a constrained
request never falls back to an unconstrained reply. Each engine's own fields are read:
OpenAI's ``response_format``, vLLM's ``structured_outputs`` (``json``, ``regex``, ``choice``,
``grammar``) and llama.cpp server's ``json_schema`` and ``grammar``.
"""

from __future__ import annotations

import json
from typing import Any

from hearthlm.errors import ConfigError
from hearthlm.llm.backend import Constraint
from hearthlm.llm.grammar import choice_gbnf, json_schema_gbnf, regex_gbnf
from hearthlm.llm.tools import strict_schema
from hearthlm.serve.errors import APIError
from hearthlm.serve.schemas import Sampling

_BOUNDS = (
    ("minimum", "maximum"),
    ("exclusiveMinimum", "maximum"),
    ("minimum", "exclusiveMaximum"),
    ("minLength", "maxLength"),
    ("minItems", "maxItems"),
    ("minProperties", "maxProperties"),
)
_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


def checked_schema(schema: Any, param: str) -> dict[str, Any]:
    """``schema``, once it is known to be a valid JSON schema that some value satisfies and
    that llama.cpp can decode under.

    Raises:
        APIError: 400, naming what is wrong.
    """
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        raise APIError(400, "a JSON schema must be an object.", code="invalid_schema", param=param)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise APIError(
            400, f"not a valid JSON schema: {exc.message}", code="invalid_schema", param=param
        ) from None
    problem = _contradiction(schema, "schema")
    if problem:
        raise APIError(
            400, f"no value can satisfy this schema: {problem}", code="invalid_schema", param=param
        )
    try:
        json_schema_gbnf(strict_schema(schema))
    except ConfigError as exc:
        raise APIError(400, str(exc), code="invalid_schema", param=param) from None
    return schema


def _contradiction(node: Any, where: str) -> str | None:
    """The first part of a schema that no value satisfies, described; None if none is found."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            found = _contradiction(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if not isinstance(node, dict):
        return None
    for low, high in _BOUNDS:
        if low in node and high in node:
            a, b = node[low], node[high]
            strict = low.startswith("exclusive") or high.startswith("exclusive")
            numbers = isinstance(a, int | float) and isinstance(b, int | float)
            if numbers and (a > b or (strict and a == b)):
                return f"{where}: {low} {a} is above {high} {b}"
    if "enum" in node and not node["enum"]:
        return f"{where}: enum is empty"
    types = node.get("type")
    listed = types if isinstance(types, list) else [types] if types else []
    unknown = [t for t in listed if t not in _TYPES]
    if unknown:
        return f"{where}: unknown type {unknown[0]!r}"
    properties = node.get("properties")
    if isinstance(properties, dict) and node.get("additionalProperties") is False:
        missing = [r for r in node.get("required", []) if r not in properties]
        if missing:
            return f"{where}: requires {missing[0]!r}, which it does not allow"
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples"):
            continue
        found = _contradiction(value, f"{where}.{key}")
        if found:
            return found
    return None


def request_options(body: Sampling, response_format: Any = None) -> dict[str, Any]:
    """The ChatHearth call options a request's constraint fields give: ``constraint=`` or
    ``response_format=``. At most one way of constraining may be used.

    Raises:
        APIError: 400, two constraints, or one that is not valid.
    """
    given: list[tuple[str, dict[str, Any]]] = []
    if response_format is not None and response_format.type != "text":
        if response_format.type == "json_object":
            given.append(("response_format", {"response_format": {"type": "json_object"}}))
        else:
            spec = response_format.json_schema
            if spec is None or not spec.schema_:
                raise APIError(
                    400,
                    "response_format json_schema needs json_schema.schema.",
                    param="response_format",
                )
            schema = checked_schema(spec.schema_, "response_format")
            given.append(("response_format", _schema_options(schema)))
    if body.json_schema is not None:
        schema = checked_schema(body.json_schema, "json_schema")
        given.append(("json_schema", {"constraint": Constraint(json_schema=strict_schema(schema))}))
    if body.grammar is not None:
        given.append(("grammar", {"constraint": _grammar(body.grammar, "grammar")}))
    outputs = body.structured_outputs
    if outputs is not None:
        set_fields = [
            f for f in ("json_", "regex", "choice", "grammar") if getattr(outputs, f) is not None
        ]
        if len(set_fields) != 1:
            raise APIError(
                400,
                "structured_outputs takes exactly one of json, regex, choice and grammar.",
                param="structured_outputs",
            )
        given.append(("structured_outputs", {"constraint": _structured(outputs)}))
    if len(given) > 1:
        names = ", ".join(name for name, _ in given)
        raise APIError(400, f"one constraint per request; this one sets {names}.")
    return given[0][1] if given else {}


def _schema_options(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema with properties is structured output (its fields chosen as a call's
    arguments are); any other schema is a plain JSON constraint."""
    if schema.get("type") == "object" and isinstance(schema.get("properties"), dict):
        return {"response_format": schema}
    return {"constraint": Constraint(json_schema=strict_schema(schema))}


def _structured(outputs: Any) -> Constraint:
    if outputs.json_ is not None:
        schema = outputs.json_
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise APIError(
                    400, f"structured_outputs.json is not JSON: {exc}", param="structured_outputs"
                ) from None
        return Constraint(json_schema=strict_schema(checked_schema(schema, "structured_outputs")))
    try:
        if outputs.regex is not None:
            return Constraint(grammar=regex_gbnf(outputs.regex))
        if outputs.choice is not None:
            return Constraint(grammar=choice_gbnf(list(outputs.choice)))
    except ConfigError as exc:
        raise APIError(400, str(exc), code="invalid_value", param="structured_outputs") from None
    return _grammar(outputs.grammar, "structured_outputs")


def _grammar(gbnf: str, param: str) -> Constraint:
    """A GBNF grammar, parsed now so that a bad one is a 400."""
    from llama_cpp import LlamaGrammar

    try:
        LlamaGrammar.from_string(gbnf, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise APIError(
            400, f"the grammar does not parse: {exc}", code="invalid_grammar", param=param
        ) from None
    return Constraint(grammar=gbnf)
