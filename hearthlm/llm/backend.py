"""The backend interface and its registry.

A backend turns prompt token ids into generated token ids. Everything above that (chat templates,
detokenizing, stop sequences, tool calls, usage counts) lives in the chat model, once, so that every
backend behaves the same. Built-in backends are registered through the ``hearthlm.backends`` entry
point group, exactly as a plugin would register its own.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.errors import ConfigError
from hearthlm.plugins import registered

ENTRY_POINT_GROUP = "hearthlm.backends"
# GBNF body of a plain-text reply that cannot be a tool call: it may not open with "{" or
# whitespace. Used as the text alternative of optional tool calls and for tool_choice="none".
TEXT_REPLY = "[^{ \\t\\n] [^\\x00]*"


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
    time.
    """

    name: ClassVar[str]
    model_name: str
    context_size: int
    chat_template: str
    bos_token: str = ""
    eos_token: str = ""
    stop_token_ids: frozenset[int] = frozenset()

    def __init__(self) -> None:
        self.lock = threading.Lock()

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

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        """Sum of the log-probabilities of ``continuation`` following ``context``. Callers hold
        ``lock``. Backends that cannot score raise ``NotImplementedError``."""
        raise NotImplementedError(f"the {self.name} backend does not score text")

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool = False
    ) -> list[float]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``: how the
        model ranks a set of alternatives. Backends may evaluate the context once. With
        ``best_only`` a backend may skip continuations that cannot score highest (their score
        is then ``-inf``); the best one is exact. Callers hold ``lock``."""
        return [self.loglikelihood(context, continuation) for continuation in continuations]

    def describe(self) -> dict[str, Any]:
        """Facts shown in response metadata and ``hearth models``."""
        return {"backend": self.name, "model": self.model_name, "context_size": self.context_size}


@cache
def available_backends() -> dict[str, type[Backend]]:
    """Every registered backend class by name, built-ins and plugins alike."""
    return dict(registered(ENTRY_POINT_GROUP))


def backend_class(name: str) -> type[Backend]:
    """The backend registered as ``name``.

    Raises:
        ConfigError: No backend has that name; the message lists the known ones.
    """
    backends = available_backends()
    if name not in backends:
        known = ", ".join(sorted(backends)) or "none (is hearthlm installed?)"
        raise ConfigError(
            f"unknown backend {name!r}. Known backends: {known}. "
            "Set llm.backend (or --backend) to one of them."
        )
    return backends[name]


def load_backend(config: LLMConfig) -> Backend:
    """Load the backend and model that ``config`` names."""
    return backend_class(config.backend).load(config)
