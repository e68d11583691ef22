"""The docs chatbot built from configuration, one way for every caller: the CLI, the demo and
the server build :class:`DocsQA` and :class:`DocsChat` here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from hearthlm.config import HearthConfig
from hearthlm.llm import ChatHearth
from hearthlm.retrieval.chat import DocsChat
from hearthlm.retrieval.index import DocumentIndex
from hearthlm.retrieval.rag import DocsQA
from hearthlm.retrieval.retriever import HybridRetriever


def build_docs_qa(
    config: HearthConfig,
    chat: BaseChatModel | None = None,
    index: DocumentIndex | None = None,
) -> DocsQA:
    """The :class:`DocsQA` that ``config`` describes: its ``retrieval`` section's index, search
    and answer settings over ``chat`` (default: :meth:`ChatHearth.from_config`).

    Example:
        >>> qa = build_docs_qa(load_config())  # doctest: +SKIP
        >>> qa.invoke("How long is the warranty?").text  # doctest: +SKIP
    """
    retrieval = config.retrieval
    return DocsQA(
        chat if chat is not None else ChatHearth.from_config(config),
        HybridRetriever.from_index(index or DocumentIndex(retrieval)),
        min_relevance=retrieval.min_relevance,
        answer=retrieval.answer,
        on_ungrounded=retrieval.on_ungrounded,
    )


def build_docs_chat(
    config: HearthConfig,
    session_id: str | None = None,
    qa: DocsQA | None = None,
    history: Path | str | Any = None,
    **options: Any,
) -> DocsChat:
    """A :class:`DocsChat` session over :func:`build_docs_qa`'s chatbot (or ``qa``), its
    history in ``history`` (an SQLite file, an SQLAlchemy URL or engine; default:
    ``retrieval.history_path``)."""
    return DocsChat(
        qa or build_docs_qa(config, **options),
        history if history is not None else config.retrieval.history_path,
        session_id=session_id,
    )
