"""The backend interface and its registry.

A backend turns prompt token ids into generated token ids. Everything above that (chat templates,
detokenizing, stop sequences, tool calls, usage counts) lives in the chat model, once, so that every
backend behaves the same. ``BACKENDS`` lists the built-in backends and finds the plugins'
(``hearthlm.backends`` entry points) through the one registry of :mod:`hearthlm.plugins`.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.plugins import Registry

ENTRY_POINT_GROUP = "hearthlm.backends"
# GBNF body of a plain-text reply that cannot be a tool call: it may not open with "{" or
# whitespace. Used as the text alternative of optional tool calls and for tool_choice="none".
TEXT_REPLY = "[^{ \\t\\n] [^\\x00]*"
# The cancel event of the request the current thread serves (see cancel_scope).
_CANCEL: ContextVar[threading.Event | None] = ContextVar("hearth_cancel", default=None)


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[threading.Event]:
    """Generation and scoring started inside this block end soon after ``event`` is set: a
    reply stops within a token or two, and a batched backend frees the sequence at once, even
    mid-prompt. This is how a server stops the work of a client that went away.

    Example:
        >>> stop = threading.Event()
        >>> with cancel_scope(stop):  # doctest: +SKIP
        ...     chat.invoke("Write a long story.")  # another thread may call stop.set()
    """
    token = _CANCEL.set(event)
    try:
        yield event
    finally:
        _CANCEL.reset(token)


def current_cancel() -> threading.Event | None:
    """The cancel event of the enclosing :func:`cancel_scope`, if any."""
    return _CANCEL.get()


def cancelled() -> bool:
    """Whether the enclosing :func:`cancel_scope`'s event is set."""
    event = _CANCEL.get()
    return event is not None and event.is_set()


@dataclass(frozen=True)
class Constraint:
    """Constrains generation to JSON matching ``json_schema``, or to a ``grammar``.

    With ``allow_text`` the model may instead answer in plain text, as long as that text does not
    start with ``{``: this is how a tool call stays optional yet always well formed. ``grammar`` is
    GBNF, in the subset that llama.cpp and xgrammar both read (rules, literals, character classes,
    alternation, grouping, ``?``, ``*``, ``+`` and ``{m,n}``).
    """

    json_schema: dict[str, Any] | None = None
    allow_text: bool = False
    grammar: str | None = None

    @property
    def key(self) -> str:
        import json

        return json.dumps([self.json_schema, self.allow_text, self.grammar], sort_keys=True)


# A token's log-probability and the likeliest tokens at its position with theirs.
Scored = tuple[float, dict[int, float]]


@dataclass(frozen=True)
class Piece:
    """A piece of a reply, how many tokens it holds, and their ids where the backend yields
    ids (a remote server streams text alone)."""

    text: str
    tokens: int = 1
    ids: tuple[int, ...] = ()
    scored: tuple[Scored, ...] = ()  # the ids' log-probabilities, where they were asked for


class GrammarCache:
    """Compiled grammars by constraint key, the ``size`` most recently used kept: with copied
    arguments each request has its own grammar, so an unbounded cache would grow forever."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, constraint: Constraint, build: Callable[[Constraint], Any]) -> Any:
        key = constraint.key
        if key in self._items:
            self._items.move_to_end(key)
        else:
            self._items[key] = build(constraint)
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return self._items[key]


class Backend(ABC):
    """A loaded model that generates token ids.

    Subclasses set the attributes below in ``load`` and implement ``tokenize``, ``decode`` and
    ``generate``. ``lock`` serialises generation, since one loaded model serves one request at a
    time; a backend that batches concurrent requests itself has a lock that never blocks.
    """

    name: ClassVar[str]
    model_name: str
    context_size: int
    chat_template: str
    bos_token: str = ""
    eos_token: str = ""
    stop_token_ids: frozenset[int] = frozenset()
    # The token ids it reads are 0 <= id < vocab_size; None where it cannot tell (a server).
    vocab_size: int | None = None
    # A backend that streams text rather than token ids implements generate_text instead.
    streams_text: ClassVar[bool] = False
    # Whether loglikelihoods works: every local backend scores; a server may not.
    can_score: bool = True
    # Whether generate_logprobs works: the log-probability of each token as it is sampled.
    logprobs_while_generating: ClassVar[bool] = False

    def __init__(self) -> None:
        self.generated_tokens = 0  # replies' tokens, counted by the chat model
        self.lock: contextlib.AbstractContextManager[Any] = threading.Lock()

    @classmethod
    @abstractmethod
    def load(cls, config: LLMConfig) -> Backend:
        """Load the model that ``config`` names."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, parsing special tokens, adding none."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, skipping special tokens."""

    @abstractmethod
    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids until an end-of-generation token (not yielded) or until the
        caller stops iterating. Callers hold ``lock`` while iterating."""

    def generate_logprobs(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None,
        top: int,
    ) -> Iterator[tuple[int, Scored]]:
        """:meth:`generate`, each token with the log-probability the model gave it where it
        was sampled (from the raw logits, before temperature, penalties or a grammar) and the
        ``top`` likeliest tokens there, on a backend with ``logprobs_while_generating``."""
        raise NotImplementedError(f"the {self.name} backend does not record log-probabilities")

    def generate_text(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None,
        stop: list[str] | None,
        max_tokens: int,
    ) -> Iterator[Piece]:
        """Yield the reply as text pieces, on a backend with ``streams_text``: at most
        ``max_tokens`` tokens, ending before any of ``stop`` where the server can tell."""
        raise NotImplementedError(f"the {self.name} backend generates token ids")

    def enforces(self, constraint: Constraint | None) -> bool:
        """Whether generation is held to ``constraint``; local backends hold every one."""
        return True

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        """Sum of the log-probabilities of ``continuation`` following ``context``. Callers hold
        ``lock``. Backends that cannot score raise ``NotImplementedError``."""
        raise NotImplementedError(f"the {self.name} backend does not score text")

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool | int = False
    ) -> list[float]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``: how the
        model ranks a set of alternatives. Backends may evaluate the context once. With
        ``best_only`` a backend may skip continuations that cannot score highest (their score
        is then ``-inf``); the best one is exact (with a number ``k``, the ``k`` best are).
        Callers hold ``lock``."""
        return [self.loglikelihood(context, continuation) for continuation in continuations]

    def token_logprobs(self, ids: list[int], top: int = 0) -> list[tuple[float, dict[int, float]]]:
        """For each token of ``ids`` after the first: its log-probability given the tokens
        before it, and the ``top`` likeliest tokens there with theirs (what an OpenAI
        ``/v1/completions`` request with ``echo`` and ``logprobs`` returns). Callers hold
        ``lock``. Backends that cannot score raise ``NotImplementedError``."""
        raise NotImplementedError(f"the {self.name} backend does not score text")

    def describe(self) -> dict[str, Any]:
        """Facts shown in response metadata and ``hearth models``."""
        return {"backend": self.name, "model": self.model_name, "context_size": self.context_size}

    def close(self) -> None:
        """Free what the backend holds beyond memory (threads, contexts); the default has
        nothing to free."""
        return None


BACKENDS: Registry[type[Backend]] = Registry(
    ENTRY_POINT_GROUP,
    noun="backend",
    check=Backend,
    builtins={
        "llamacpp": "hearthlm.llm.llamacpp_backend:LlamaCppBackend",
        "transformers": "hearthlm.llm.hf_backend:TransformersBackend",
        "openai": "hearthlm.llm.openai_backend:OpenAIBackend",
    },
    hint="Set llm.backend (or --backend) to one of them.",
)


def available_backends() -> dict[str, type[Backend]]:
    """Every registered backend class by name, built-ins and plugins alike (each imported;
    ``BACKENDS.names()`` lists them without importing)."""
    return BACKENDS.load_all()


def backend_class(name: str) -> type[Backend]:
    """The backend registered as ``name``.

    Raises:
        ConfigError: No backend has that name; the message lists the known ones.
        PluginError: A plugin's backend fails to import or is not a :class:`Backend`.
    """
    return BACKENDS.get(name)


def load_backend(config: LLMConfig) -> Backend:
    """Load the backend and model that ``config`` names."""
    return backend_class(config.backend).load(config)
