"""LangChain's own conformance suites (``langchain-tests``) run against hearthlm's components:
the chat model on the real packaged model (greedy), the embedder, the retriever over a real
Chroma folder, and the built-in tools (web search against a real HTTP server on loopback).

A test skipped here is skipped through the suite's documented capability flag, only where the
capability does not exist; the README lists each with its reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    ToolsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests, ToolsUnitTests
from retrieval_helpers import write_corpus

from hearthlm.agents.tools import calculator_tool
from hearthlm.agents.web_search import SearxNGBackend, web_search_tool
from hearthlm.config import RetrievalConfig
from hearthlm.llm import ChatHearth
from hearthlm.retrieval import DocumentIndex, HearthEmbeddings, HybridRetriever


class _ChatHearthSuite:
    """What ChatHearth can do, in the suites' capability flags."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatHearth

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"backend": "llamacpp"}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per instance; a per-call model= is refused


class TestChatHearthUnit(_ChatHearthSuite, ChatModelUnitTests):
    """Construction, tool binding and structured-output set-up; no model is loaded."""


@pytest.mark.slow
class TestChatHearthIntegration(_ChatHearthSuite, ChatModelIntegrationTests):
    """The suite's calls on the real packaged model (SmolLM2-135M on llama.cpp, greedy)."""

    @pytest.fixture
    def model(self, request: Any, llama_chat: ChatHearth) -> BaseChatModel:
        # Every test gets the suite's own configured instance, sharing the session's loaded
        # weights instead of loading the model again.
        extra = getattr(request, "param", None) or {}
        model = ChatHearth(**{**self.standard_chat_model_params, **self.chat_model_params, **extra})
        model._engine = llama_chat.engine
        return model


class TestChatHearthOpenAIUnit(_ChatHearthSuite, ChatModelUnitTests):
    """The openai backend's construction; no server is reached until the model loads."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "server": "hearth"}


@pytest.mark.slow
class TestChatHearthOpenAIIntegration(_ChatHearthSuite, ChatModelIntegrationTests):
    """The suite's calls through the openai backend to a real `hearth serve` on loopback
    (the packaged model, batched): the remote path behaves as the local one."""

    @pytest.fixture
    def model(self, request: Any, server: Any) -> BaseChatModel:
        from conftest import ALPHA

        extra = getattr(request, "param", None) or {}
        remote = {"backend": "openai", "base_url": f"{server.url}/v1", "server": "hearth",
                  "api_key": ALPHA}  # fmt: skip
        return ChatHearth(**{**self.standard_chat_model_params, **remote, **extra})


class TestEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[HearthEmbeddings]:
        return HearthEmbeddings


class TestEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[HearthEmbeddings]:
        return HearthEmbeddings

    @pytest.fixture
    def model(self, embeddings: HearthEmbeddings) -> HearthEmbeddings:
        return embeddings  # the session's loaded embedder: the same class and defaults


@pytest.fixture(scope="module")
def docs_index(tmp_path_factory: pytest.TempPathFactory, embeddings) -> DocumentIndex:
    root = tmp_path_factory.mktemp("conformance")
    index = DocumentIndex(RetrievalConfig(path=root / "index"), embeddings)
    index.index_path(write_corpus(root / "docs"), progress=False)
    return index


class TestRetrieverIntegration(RetrieversIntegrationTests):
    """The hybrid retriever over a real Chroma folder holding the test corpus."""

    @pytest.fixture(autouse=True)
    def _index(self, docs_index: DocumentIndex) -> None:
        self.index = docs_index

    @property
    def retriever_constructor(self) -> type[HybridRetriever]:
        return HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": self.index}

    @property
    def retriever_query_example(self) -> str:
        return "flat tyre repair price"


class _CalculatorTool:
    @property
    def tool_constructor(self) -> BaseTool:
        return calculator_tool()

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"expression": "21 * 47"}


class TestCalculatorToolUnit(_CalculatorTool, ToolsUnitTests):
    pass


class TestCalculatorToolIntegration(_CalculatorTool, ToolsIntegrationTests):
    pass


SEARXNG = {"results": [{"title": "Llamas", "url": "https://example.org/", "content": "Wool."}]}


class _WebSearchTool:
    """The web-search tool over SearxNG; the backend is a real HTTP server on loopback."""

    @pytest.fixture(autouse=True)
    def _server(self, httpserver) -> None:
        httpserver.expect_request("/search").respond_with_json(SEARXNG)
        self.url = httpserver.url_for("/")

    @property
    def tool_constructor(self) -> BaseTool:
        return web_search_tool(SearxNGBackend(self.url, retries=0))

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": "llama"}


class TestWebSearchToolUnit(_WebSearchTool, ToolsUnitTests):
    pass


class TestWebSearchToolIntegration(_WebSearchTool, ToolsIntegrationTests):
    pass
