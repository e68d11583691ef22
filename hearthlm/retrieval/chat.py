"""Conversational chat over documents: follow-ups that point back into the conversation are
rewritten into standalone questions using the history, and each session's history persists in
SQLite, resumable by session id."""

from __future__ import annotations

import re
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
# A follow-up needs the conversation when it points back into it: a pronoun or demonstrative,
# an opening connective ("And the price?"), or too few words to stand alone. Any other question
# is already standalone, and is kept as asked: a small model asked to rewrite it as often
# answers it instead ("Error E4: The error E4 is a type of error that occurs when ...").
_REFERS_BACK = re.compile(
    r"\b(it|its|they|them|their|theirs|this|that|these|those|he|him|his|she|her|hers|there|"
    r"then|one|ones|such|same|other|else|former|latter)\b",
    re.IGNORECASE,
)
_CONNECTIVE = re.compile(r"^\s*(and|but|so|also|or|what about|how about)\b", re.IGNORECASE)
_STANDALONE_WORDS = 4


def refers_back(question: str) -> bool:
    """Whether a follow-up ``question`` needs the conversation to be understood.

    Example:
        >>> refers_back("And how long does it take?"), refers_back("What does error E4 mean?")
        (True, False)
    """
    words = question.split()
    return (
        len(words) < _STANDALONE_WORDS
        or bool(_REFERS_BACK.search(question))
        or bool(_CONNECTIVE.match(question))
    )


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
        >>> DocsChat(qa, Path("history.sqlite"), session_id=chat.session_id)  # doctest: +SKIP
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
        """``question`` rewritten with the history where it points back into it; unchanged on
        the first turn, when it already stands alone, or when the rewrite is not a question
        while the follow-up was."""
        past = self.messages[-HISTORY_TURNS:]
        if not past or not refers_back(question):
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
        rewritten = rewritten.strip()
        if not rewritten or (question.rstrip().endswith("?") and not rewritten.endswith("?")):
            return question
        return rewritten

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
