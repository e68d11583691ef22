"""Web search for agents: DuckDuckGo (``ddgs``), a SearxNG instance's JSON API, or, offline, a
hearthlm document collection. Every backend returns title, URL and snippet; timeouts, retries with
backoff and a result limit apply to all; a failing backend becomes an observation the agent reads,
never a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from hearthlm.errors import ToolError


class SearchError(ToolError):
    """A search backend failed after its retries."""


@dataclass(frozen=True)
class SearchResult:
    """One web search hit, as every search backend returns it."""

    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    """What the ``web_search`` tool searches with: ``search(query, limit)`` returns at most
    ``limit`` results, best first, and raises :class:`~hearthlm.errors.ToolError` when the
    service cannot answer; ``name`` appears in messages."""

    name: str

    def search(self, query: str, limit: int) -> list[SearchResult]: ...


class _Transient(Exception):
    """A failure worth retrying: timeouts, connection errors, HTTP 5xx, malformed bodies."""


class _RetryingBackend:
    """Timeout, retries with exponential backoff, and the error the agent reads, shared by the
    network backends; each subclass implements one attempt in ``_once``."""

    name: str
    label: str

    def __init__(self, timeout: float = 10.0, retries: int = 2, backoff: float = 0.5) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def search(self, query: str, limit: int) -> list[SearchResult]:
        for attempt in range(self.retries + 1):
            try:
                return self._once(query, limit)
            except _Transient as exc:
                if attempt == self.retries:
                    raise SearchError(
                        f"{self.label} failed after {self.retries + 1} attempts: {exc}. Try "
                        "again later, or switch agents.search_backend."
                    ) from None
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _once(self, query: str, limit: int) -> list[SearchResult]:
        raise NotImplementedError


class SearxNGBackend(_RetryingBackend):
    """``GET {url}/search?q=...&format=json`` on a SearxNG instance."""

    name = "searxng"
    label = "SearxNG search"

    def __init__(self, url: str, timeout: float = 10.0, retries: int = 2, backoff: float = 0.5):
        super().__init__(timeout, retries, backoff)
        self.url = url.rstrip("/")

    def _once(self, query: str, limit: int) -> list[SearchResult]:
        try:
            response = httpx.get(
                f"{self.url}/search", params={"q": query, "format": "json"}, timeout=self.timeout
            )
        except httpx.TimeoutException:
            raise _Transient(f"timed out after {self.timeout}s") from None
        except httpx.TransportError as exc:
            raise _Transient(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code} from {self.url}")
        if response.status_code >= 400:
            raise SearchError(
                f"HTTP {response.status_code} from {self.url}; check agents.searxng_url and that "
                "the instance enables the JSON format."
            )
        try:
            results = response.json()["results"]
            return [
                SearchResult(
                    str(r.get("title", "")), str(r.get("url", "")), str(r.get("content", ""))
                )
                for r in results[:limit]
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _Transient("malformed JSON response") from None


class DuckDuckGoBackend(_RetryingBackend):
    """DuckDuckGo through the ``ddgs`` package (needs internet)."""

    name = "duckduckgo"
    label = "DuckDuckGo search"

    def _once(self, query: str, limit: int) -> list[SearchResult]:
        from ddgs import DDGS
        from ddgs.exceptions import DDGSException

        try:
            rows = DDGS(timeout=int(self.timeout)).text(query, max_results=limit) or []
        except DDGSException as exc:
            raise _Transient(str(exc)) from None
        return [
            SearchResult(str(r.get("title", "")), str(r.get("href", "")), str(r.get("body", "")))
            for r in rows[:limit]
        ]


class DocsBackend:
    """Offline search over a hearthlm document collection."""

    name = "docs"

    def __init__(self, retriever: Any) -> None:
        self.retriever = retriever

    def search(self, query: str, limit: int) -> list[SearchResult]:
        results = []
        for hit in self.retriever.search(query, k=limit):
            source = Path(str(hit.metadata.get("source", "")))
            page = hit.metadata.get("page")
            title = source.name + (f", page {page}" if page else "")
            url = (
                source.as_uri() + (f"#page={page}" if page else "") if source.is_absolute() else ""
            )
            results.append(SearchResult(title, url, hit.text[:300]))
        return results


class _Query(BaseModel):
    query: str = Field(description="What to search for")


def format_results(results: list[SearchResult]) -> str:
    """``results`` as one numbered observation for the agent (``No results.`` when empty)."""
    if not results:
        return "No results."
    return "\n".join(f"[{i}] {r.title} ({r.url})\n{r.snippet}" for i, r in enumerate(results, 1))


def web_search_tool(backend: SearchBackend, limit: int = 5) -> BaseTool:
    """The ``web_search`` tool over ``backend``; failures come back as observations."""

    def run(query: str) -> str:
        try:
            return format_results(backend.search(query, limit))
        except SearchError as exc:
            raise ToolException(str(exc)) from None

    return StructuredTool.from_function(
        func=run,
        name="web_search",
        description=f"Search the web ({backend.name}) and return titles, URLs and snippets.",
        args_schema=_Query,
        handle_tool_error=True,
    )
