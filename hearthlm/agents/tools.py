"""Tools for agents: the built-ins and yours, all LangChain ``BaseTool``s.

A user tool is one line: any ``@tool``, ``BaseTool`` or plain typed Python function. Packages can
register tools through the ``hearthlm.tools`` entry-point group (each entry point is a tool, a
function, or a zero-argument factory returning a list of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from hearthlm.agents.calculator import CalculatorError, calculate
from hearthlm.agents.web_search import (
    DocsBackend,
    DuckDuckGoBackend,
    SearchBackend,
    SearxNGBackend,
    web_search_tool,
)
from hearthlm.errors import ToolError
from hearthlm.plugins import PluginError, Registry

ENTRY_POINT_GROUP = "hearthlm.tools"


class _Expression(BaseModel):
    # The pattern keeps a constrained model from writing "17 * 3 = 51" as the expression; the
    # comma is for arguments, as in round(2.567, 2) or min(3, 9).
    expression: str = Field(
        description="One arithmetic expression",
        pattern=r"^[-(0-9a-z][-+*/%^()., 0-9a-z]{0,199}$",
    )


def _calculate(expression: str) -> str:
    try:
        return calculate(expression)
    except CalculatorError as exc:
        raise ToolException(f"calculator error: {exc}") from None


def calculator_tool() -> BaseTool:
    """Exact arithmetic; errors come back to the agent as observations."""
    return StructuredTool.from_function(
        func=_calculate,
        name="calculator",
        description="Evaluate an arithmetic expression exactly: + - * / // % ** ( ), "
        "percentages, sqrt log exp sin cos tan pi e round abs min max.",
        args_schema=_Expression,
        handle_tool_error=True,
    )


def docs_tool(retriever: Any, k: int = 3) -> BaseTool:
    """Search a hearthlm document collection; returns the best chunks with their sources."""

    def search_docs(query: str) -> str:
        hits = retriever.search(query, k=k)
        if not hits:
            return "No matching documents."
        lines = []
        for i, hit in enumerate(hits, 1):
            where = str(hit.metadata.get("source", ""))
            if hit.metadata.get("page"):
                where += f", page {hit.metadata['page']}"
            lines.append(f"[{i}] ({where}) {hit.text[:400]}")
        return "\n".join(lines)

    return StructuredTool.from_function(
        func=search_docs,
        name="docs",
        description="Search the user's private documents and return matching passages.",
        handle_tool_error=True,
    )


def as_tool(obj: BaseTool | Callable[..., Any]) -> BaseTool:
    """A ``BaseTool`` from a tool or a plain typed function (its docstring is the description)."""
    if isinstance(obj, BaseTool):
        return obj
    if callable(obj):
        if not (obj.__doc__ or "").strip():
            raise ToolError(
                f"function {getattr(obj, '__name__', obj)!r} needs a docstring: the agent reads "
                "it to know when to use the tool."
            )
        return StructuredTool.from_function(obj, handle_tool_error=True)
    raise ToolError(f"{obj!r} is not a tool: pass a BaseTool, an @tool or a typed function.")


def plugin_tools() -> list[BaseTool]:
    """Tools registered by installed packages under the ``hearthlm.tools`` entry points.

    Raises:
        PluginError: A plugin fails to import, is not a tool, or makes a tool that takes a
            built-in tool's name.
    """
    found: list[BaseTool] = []
    for name in TOOLS.names():
        if name in TOOLS.builtin_names:
            continue
        loaded = TOOLS.get(name)
        made = [as_tool(t) for t in loaded()] if _is_factory(loaded) else [as_tool(loaded)]
        for made_tool in made:
            if made_tool.name in TOOLS.builtin_names:
                raise PluginError(
                    f"the {ENTRY_POINT_GROUP} entry {name!r} makes a tool named "
                    f"{made_tool.name!r}, a built-in tool's name; give it another name."
                )
        found.extend(made)
    return found


def _is_factory(fn: Any) -> bool:
    """A function without arguments that returns tools (not a tool, nor a tool function)."""
    import inspect

    if isinstance(fn, BaseTool) or not callable(fn):
        return False

    try:
        return not inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def resolve_tools(tools: Iterable[BaseTool | Callable[..., Any]]) -> list[BaseTool]:
    """Normalise and check a tool list: unique names, each a ``BaseTool``."""
    resolved = [as_tool(t) for t in tools]
    names = [t.name for t in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolError(f"two tools share the name(s) {duplicates}; rename one.")
    return resolved


def _search_backend(config: Any, retriever: Any) -> SearchBackend:
    agents = config.agents
    options = {"timeout": agents.search_timeout, "retries": agents.search_retries}
    if agents.search_backend == "searxng":
        if not agents.searxng_url:
            raise ToolError("agents.searxng_url is not set; give the SearxNG base URL.")
        return SearxNGBackend(agents.searxng_url, **options)
    if agents.search_backend == "duckduckgo":
        return DuckDuckGoBackend(**options)
    return DocsBackend(retriever)


def _builtin_calculator(config: Any, retriever: Any) -> BaseTool:
    """The calculator tool."""
    return calculator_tool()


def _builtin_docs(config: Any, retriever: Any) -> BaseTool:
    """The document search tool, over the configured collection."""
    return docs_tool(retriever)


def _builtin_web_search(config: Any, retriever: Any) -> BaseTool:
    """Web search on the configured backend (SearxNG, DuckDuckGo, or the documents)."""
    return web_search_tool(_search_backend(config, retriever), config.agents.search_results)


def _is_tool_entry(name: str, obj: Any) -> bool:
    return isinstance(obj, BaseTool) or callable(obj)


# The built-in tools (each built from the config) and the plugins' (``hearthlm.tools``).
TOOLS: Registry[Any] = Registry(
    ENTRY_POINT_GROUP,
    noun="tool",
    what="a BaseTool, a typed function with a docstring, or a function without arguments "
    "that returns a list of them",
    check=_is_tool_entry,
    builtins={
        "calculator": _builtin_calculator,
        "docs": _builtin_docs,
        "web_search": _builtin_web_search,
    },
)


def build_tools(config: Any, names: Sequence[str] | None = None) -> list[BaseTool]:
    """The named tools, configured by a :class:`~hearthlm.config.HearthConfig`."""
    agents = config.agents
    names = list(names or agents.tools)
    retriever = None
    if "docs" in names or ("web_search" in names and agents.search_backend == "docs"):
        # lazy: the retrieval stack (~0.8 s) loads only when a tool searches the documents
        from hearthlm.retrieval import DocumentIndex, HybridRetriever

        retriever = HybridRetriever.from_index(DocumentIndex(config.retrieval))
    plugins = {t.name: t for t in plugin_tools()}
    unknown = [n for n in names if n not in plugins and n not in TOOLS.builtin_names]
    if unknown:
        known = ", ".join(sorted({*TOOLS.builtin_names, *plugins}))
        raise ToolError(f"unknown tool(s) {unknown}; available: {known}")
    built = {n: TOOLS.get(n)(config, retriever) for n in TOOLS.builtin_names if n in names}
    available = {**plugins, **built}
    return [available[n] for n in names]
