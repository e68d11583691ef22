"""``ChatHearth.with_structured_output``: replies decoded under a schema's grammar (or JSON mode's),
parsed into the schema, with LangChain's ``include_raw`` form."""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from hearthlm.errors import ConfigError
from hearthlm.llm.call_options import JSON_OBJECT, json_schema_of


def structured_output(
    chat: Any,
    schema: dict[str, Any] | type | None = None,
    *,
    include_raw: bool = False,
    method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
    **kwargs: Any,
) -> Runnable[LanguageModelInput, Any]:
    """Replies parsed into ``schema`` (a pydantic v2 or v1 class, TypedDict or JSON schema).

    ``json_schema`` constrains the reply to the schema itself; ``function_calling`` makes it a
    forced call of a tool with that schema; ``json_mode`` constrains the reply to a JSON
    object of any shape (the prompt must say which keys), parsed into ``schema`` if given.
    """
    if method not in ("json_schema", "function_calling", "json_mode"):
        raise ConfigError(
            f"unknown method {method!r}; use 'json_schema', 'function_calling' or 'json_mode'."
        )
    if schema is None and method != "json_mode":
        raise ConfigError(f"method={method!r} needs a schema; pass one or use 'json_mode'.")
    if method == "function_calling":
        return BaseChatModel.with_structured_output(
            chat, schema or {}, include_raw=include_raw, **kwargs
        )
    traced = {"kwargs": {"method": method}}
    if schema is not None:
        traced["schema"] = convert_to_json_schema(schema)
    response_format = JSON_OBJECT if method == "json_mode" else json_schema_of(schema)
    llm = chat.bind(response_format=response_format, ls_structured_output_format=traced)
    parser: Runnable[Any, Any] = (
        PydanticOutputParser(pydantic_object=schema)
        if isinstance(schema, type) and is_basemodel_subclass(schema)
        else JsonOutputParser()
    )
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
