"""Agents on the local model: tools (calculator, web search, documents, your own), ReAct and
chain of thought."""

from hearthlm.agents.calculator import CalculatorError, calculate, evaluate
from hearthlm.agents.web_search import (
    DocsBackend,
    DuckDuckGoBackend,
    SearchError,
    SearchResult,
    SearxNGBackend,
    web_search_tool,
)

__all__ = [
    "CalculatorError",
    "DocsBackend",
    "DuckDuckGoBackend",
    "SearchError",
    "SearchResult",
    "SearxNGBackend",
    "calculate",
    "evaluate",
    "web_search_tool",
]
