"""Conversational chat over documents: follow-ups are rewritten into standalone questions using
the history, and each session's history persists in SQLite, resumable by session id."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_community.chat_message_histories import SQLChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from hearthlm.llm.chain import Chain, QuestionInput, call_options, question_text
from hearthlm.retrieval.rag import Answer, DocsQA

REWRITE = (
    "Rewrite the user's last question so that it can be understood without the conversation. "
    "Reply with the rewritten question only."
)
HISTORY_TURNS = 6  # earlier messages shown to the rewriter


def history_url(history: Path | str) -> str:
    """The SQLAlchemy URL of a chat-history store: a path is an SQLite file (its folder is
    made), a string with ``://`` any database SQLAlchemy reaches."""
    if isinstance(history, str) and "://" in history:
        return history
    path = Path(history)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class DocsChat(Chain[str | QuestionInput, Answer]):
    """A chat session over documents, on the chat model of its :class:`DocsQA` (any chat model).

    A Runnable: ``invoke`` (the same as ``ask``), ``batch``, ``astream`` and LCEL (``|``); its
    ``stream`` yields :class:`Answer` chunks that add up to the answer. Each turn joins the
    session's history.

    ``history`` is where sessions are kept: an SQLite file, an SQLAlchemy URL, or an
    SQLAlchemy engine shared by many sessions.

    Example:
        >>> chat = DocsChat(qa, Path("history.sqlite"))  # doctest: +SKIP
        >>> chat.ask("How long is the warranty?").text  # doctest: +SKIP
        >>> DocsChat(qa, Path("history.sqlite"), session_id=chat.session_id)  # resumes it
    """

    def __init__(self, qa: DocsQA, history: Path | str | Any, session_id: str | None = None):
        self.qa = qa
        self.session_id = session_id or secrets.token_urlsafe(12)
        connection = history_url(history) if isinstance(history, Path | str) else history
        self.history = SQLChatMessageHistory(session_id=self.session_id, connection=connection)

    @property
    def messages(self) -> list[BaseMessage]:
        return list(self.history.messages)

    def standalone(self, question: str, config: RunnableConfig | None = None) -> str:
        """``question`` rewritten with the history; unchanged on the first turn."""
        past = self.messages[-HISTORY_TURNS:]
        if not past:
            return question
        transcript = "\n".join(
            f"{'User' if isinstance(m, HumanMessage) else 'Assistant'}: {m.content}" for m in past
        )
        prompt = [
            SystemMessage(REWRITE),
            HumanMessage(f"{transcript}\nUser: {question}\n\nRewritten question:"),
        ]
        options = call_options(self.qa.chat, max_new_tokens=48)
        rewritten = str(self.qa.chat.invoke(prompt, config, stop=["\n"], **options).content)
        return rewritten.strip() or question

    def _stream(
        self, input: str | QuestionInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Answer]:
        """:class:`Answer` chunks that add up to the answer; the turn is saved at the end."""
        question = question_text(input)
        standalone = self.standalone(question, config)
        text = ""
        for chunk in self.qa.stream(standalone, config):
            chunk.question = question
            text += chunk.text
            yield chunk
        self.history.add_messages([HumanMessage(question), AIMessage(text)])
        yield Answer(question, "", standalone_question=standalone, mode=self.qa.mode)

    def ask(self, question: str) -> Answer:
        """Answer ``question`` in this session (``invoke`` under its older name)."""
        return self.invoke(question)
