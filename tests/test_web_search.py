"""Web-search backends against a real HTTP server on loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from retrieval_helpers import write_corpus
from werkzeug import Response

from hearthlm.agents.web_search import (
    DocsBackend,
    SearchError,
    SearxNGBackend,
    web_search_tool,
)

RESULTS = {
    "query": "llama",
    "results": [
        {"title": f"Llama fact {i}", "url": f"https://example.org/{i}", "content": f"Snippet {i}"}
        for i in range(8)
    ],
}


def test_searxng_json_results_with_limit(httpserver):
    httpserver.expect_request(
        "/search", query_string={"q": "llama", "format": "json"}
    ).respond_with_json(RESULTS)
    results = SearxNGBackend(httpserver.url_for("/")).search("llama", limit=3)
    assert [r.title for r in results] == ["Llama fact 0", "Llama fact 1", "Llama fact 2"]
    assert results[0].url == "https://example.org/0" and results[0].snippet == "Snippet 0"


def test_5xx_is_retried_with_backoff_then_succeeds(httpserver):
    httpserver.expect_ordered_request("/search").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/search").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/search").respond_with_json(RESULTS)
    start = time.perf_counter()
    results = SearxNGBackend(httpserver.url_for("/"), retries=2, backoff=0.1).search("x", 2)
    assert len(results) == 2
    assert time.perf_counter() - start >= 0.3  # waited 0.1 then 0.2


def test_slow_server_times_out_and_reports(httpserver):
    def slow(request):
        time.sleep(1.0)
        return Response(json.dumps(RESULTS), content_type="application/json")

    httpserver.expect_request("/search").respond_with_handler(slow)
    backend = SearxNGBackend(httpserver.url_for("/"), timeout=0.2, retries=1, backoff=0.01)
    with pytest.raises(SearchError, match=r"timed out after 0\.2s"):
        backend.search("x", 3)


@pytest.mark.parametrize(
    "body", ["<html>not json</html>", '{"results": 5}', '{"no_results": []}', "{"]
)
def test_malformed_bodies_are_errors(httpserver, body):
    httpserver.expect_request("/search").respond_with_data(body, content_type="application/json")
    with pytest.raises(SearchError, match="malformed JSON"):
        SearxNGBackend(httpserver.url_for("/"), retries=0).search("x", 3)


def test_4xx_is_not_retried(httpserver):
    httpserver.expect_request("/search").respond_with_data("forbidden", status=403)
    with pytest.raises(SearchError, match="HTTP 403"):
        SearxNGBackend(httpserver.url_for("/"), retries=3, backoff=5).search("x", 3)


def test_unreachable_server_is_an_error():
    with pytest.raises(SearchError, match="cannot reach"):
        SearxNGBackend("http://127.0.0.1:9", retries=1, backoff=0.01).search("x", 3)


def test_tool_turns_failures_into_observations(httpserver):
    httpserver.expect_request("/search").respond_with_data("down", status=500)
    tool = web_search_tool(SearxNGBackend(httpserver.url_for("/"), retries=0))
    observation = tool.invoke({"query": "anything"})
    assert "SearxNG search failed after 1 attempts: HTTP 500" in observation


def test_tool_formats_results(httpserver):
    httpserver.expect_request("/search").respond_with_json(RESULTS)
    tool = web_search_tool(SearxNGBackend(httpserver.url_for("/")), limit=2)
    text = tool.invoke({"query": "llama"})
    assert text.startswith("[1] Llama fact 0 (https://example.org/0)\nSnippet 0")
    assert "[3]" not in text


def test_offline_backend_over_a_document_collection(embeddings, tmp_path: Path):
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex, HybridRetriever

    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    index.index_path(write_corpus(tmp_path / "docs"), progress=False)
    backend = DocsBackend(HybridRetriever.from_index(index))
    (top, *_) = backend.search("honey bee waggle dance", limit=2)
    assert top.title == "science.pdf, page 2"
    assert top.url.startswith("file://") and top.url.endswith("science.pdf#page=2")
    assert "waggle dance" in top.snippet
