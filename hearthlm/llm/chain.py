"""What hearthlm's chains share: they run on any LangChain chat model, and compose in LCEL.

Constraints. :class:`~hearthlm.llm.chat_model.ChatHearth` reads a
:class:`~hearthlm.llm.backend.Constraint` (a GBNF grammar or a JSON schema) passed with the call,
the one documented way to constrain a reply::

    chat.bind(constraint=Constraint(grammar='root ::= "yes" | "no"')).invoke("Is it raining?")
    chat.invoke(messages, constraint=Constraint(json_schema={"type": "object", ...}))

A chat model that reads no constraint (``ChatOpenAI``, ``ChatOllama``, ...) gets a structured
reply by :func:`structured_reply`'s fallbacks, in this order: native tool calling, JSON mode, then
a plain reply parsed into the schema and, if it cannot be read, asked once more with the error.

Chains. :class:`Chain` is the Runnable base of the chains. As LangChain's stream contract asks,
``stream`` yields chunks of the output type that add up (``+``) to the output: an answer's text
as it is written, an agent's steps as they are taken, then the rest. ``invoke`` returns their
sum, ``astream_events`` reports each chunk, and in an LCEL sequence (``chain | next_step``) the
next step reads the chunks as they come.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.runnables.config import patch_config, run_in_executor
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

from hearthlm.errors import ConfigError

Input = TypeVar("Input")
Output = TypeVar("Output")
Schema = TypeVar("Schema", bound=BaseModel)

# What a chat model may raise when it lacks a structured-output method.
_UNSUPPORTED = (NotImplementedError, ValueError, TypeError)
# What a reply that does not fit the schema raises.
_UNREADABLE = (OutputParserException, ValidationError, ValueError, TypeError, KeyError)
FALLBACKS = ("function_calling", "json_mode", "parse")


class QuestionInput(TypedDict):
    """A chain's input as a mapping; a plain ``str`` question works too."""

    question: str


def question_text(input: Any) -> str:
    """The question of a chain input: a ``str`` or a mapping with a ``question``.

    Raises:
        ConfigError: the input is neither.
    """
    if isinstance(input, str):
        return input
    if isinstance(input, dict) and isinstance(input.get("question"), str):
        return input["question"]
    raise ConfigError(f"expected a question (str) or {{'question': str}}, got {input!r}")


def unwrap(chat: Any) -> Any:
    """The chat model under any ``.bind(...)`` layers."""
    while isinstance(chat, RunnableBinding):
        chat = chat.bound
    return chat


@runtime_checkable
class ScoresText(Protocol):
    """A chat model that can score text (ChatHearth): the likelihood of continuations, and the
    prompt text its chat template makes. ``can_score`` is False where its backend cannot (a
    server that returns no prompt log-probabilities)."""

    @property
    def can_score(self) -> bool: ...

    def loglikelihood(self, context: str, continuation: str) -> float: ...

    def loglikelihoods(
        self, context: str, continuations: Sequence[str], best_only: bool | int = False
    ) -> list[float]: ...

    def prompt(self, messages: list[BaseMessage]) -> str: ...


def scorer_of(chat: Any) -> ScoresText | None:
    """The model under ``chat``'s ``.bind(...)`` layers if it scores text (see
    :class:`ScoresText`), else None: the check the quote reader and ReAct's first action make,
    so a bound ChatHearth scores as the one under it does."""
    model = unwrap(chat)
    return model if isinstance(model, ScoresText) and model.can_score else None


@runtime_checkable
class TakesConstraints(Protocol):
    """A chat model that reads a ``constraint=`` (a grammar or JSON schema) with each call
    (ChatHearth), and so can say how it decodes tool-call arguments (``argument_mode``:
    "copy", spans of the request chosen by likelihood, or "write"). Only the flag is checked,
    so that checking loads no model."""

    accepts_constraints: bool


def can_constrain(chat: Any) -> bool:
    """Whether ``chat`` (under any ``.bind(...)`` layers) reads a ``constraint=`` with each
    call (:class:`TakesConstraints`)."""
    model = unwrap(chat)
    return isinstance(model, TakesConstraints) and bool(model.accepts_constraints)


def argument_mode(chat: Any) -> str:
    """How ``chat`` (under any ``.bind(...)`` layers) decodes tool-call arguments: "copy" or
    "write"; "write" for a chat model that reads no constraint (it writes them itself)."""
    model = unwrap(chat)
    return str(getattr(model, "argument_mode", "write")) if can_constrain(model) else "write"


def call_options(chat: Any, **options: Any) -> dict[str, Any]:
    """``options`` (a constraint, per-call sampling such as ``max_new_tokens``, ``temperature``,
    ``seed``) for a chat model that reads them with the call; none for another model, which
    keeps the settings it was made with."""
    if not can_constrain(chat):
        return {}
    return {k: v for k, v in options.items() if v is not None}


def structured_reply(
    chat: BaseChatModel | Runnable[Any, Any],
    messages: Sequence[BaseMessage],
    schema: type[Schema],
    config: RunnableConfig | None = None,
    *,
    methods: Sequence[str] = FALLBACKS,
) -> Schema | None:
    """The reply of a chat model that reads no constraint, as a ``schema`` instance.

    Tries, in order, each of ``methods`` the model has: ``function_calling`` (native tool
    calling), ``json_mode``, and ``parse`` (a plain reply with format instructions, parsed;
    when it cannot be read, the model is told why and asked once more). None when every method
    fails.

    Example:
        >>> class Expression(BaseModel):
        ...     expression: str
        >>> structured_reply(ChatOpenAI(), messages, Expression)  # doctest: +SKIP
        Expression(expression='12 * 7')
    """
    for method in methods:
        if method == "parse":
            return _parse_and_retry(chat, messages, schema, config)
        runnable = _structured(chat, schema, method)
        if runnable is None:
            continue  # the model has no such method
        try:
            result = runnable.invoke(list(messages), config)
        except (*_UNSUPPORTED, *_UNREADABLE):
            continue
        try:
            return schema.model_validate(result)
        except ValidationError:
            continue
    return None


def _structured(chat: Any, schema: type[BaseModel], method: str) -> Runnable[Any, Any] | None:
    """``chat.with_structured_output`` by ``method``, or None when the model lacks it.

    LangChain's base class takes no ``method`` and always calls tools; a chat model that
    inherits it and has ``bind_tools`` therefore has native tool calling under no name.
    """
    try:
        return chat.with_structured_output(schema, method=method)
    except _UNSUPPORTED:
        pass
    model = unwrap(chat)
    inherited = type(model).with_structured_output is BaseChatModel.with_structured_output
    has_tools = type(model).bind_tools is not BaseChatModel.bind_tools
    if method == "function_calling" and inherited and has_tools:
        return chat.with_structured_output(schema)
    return None


def _parse_and_retry(
    chat: Any, messages: Sequence[BaseMessage], schema: type[Schema], config: RunnableConfig | None
) -> Schema | None:
    parser: PydanticOutputParser[Schema] = PydanticOutputParser(pydantic_object=schema)
    asked = _with_note(messages, parser.get_format_instructions())
    reply = chat.invoke(asked, config)
    try:
        return parser.invoke(reply, config)
    except _UNREADABLE as exc:
        error = str(exc).splitlines()[0]
    again = [
        *asked,
        AIMessage(str(reply.content)),
        HumanMessage(f"That reply could not be read ({error}). Reply with only the JSON object."),
    ]
    try:
        return parser.invoke(chat.invoke(again, config), config)
    except _UNREADABLE:
        return None


def _with_note(messages: Sequence[BaseMessage], note: str) -> list[BaseMessage]:
    """``messages`` with ``note`` added to the last user message (or as a new one)."""
    out = list(messages)
    if out and isinstance(out[-1], HumanMessage) and isinstance(out[-1].content, str):
        out[-1] = HumanMessage(f"{out[-1].content}\n\n{note}")
    else:
        out.append(HumanMessage(note))
    return out


class Chain(Runnable[Input, Output]):
    """A Runnable whose ``stream`` yields chunks of its output that add up to it.

    Subclasses implement :meth:`_stream`. ``stream``, ``astream``, ``transform`` and
    ``atransform`` run it as one traced run (``astream_events`` sees its start, each chunk,
    and its end with the summed output), ``invoke`` returns the sum, and ``batch``,
    ``ainvoke`` and ``abatch`` follow.
    """

    def _stream(self, input: Input, config: RunnableConfig, **kwargs: Any) -> Iterator[Output]:
        """Chunks of the output, as they are made; ``config`` carries this run's callbacks."""
        raise NotImplementedError

    def stream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Output]:
        """Chunks of the output, as they are made; their sum is the output."""
        yield from self._transform_stream_with_config(iter([input]), self._run, config, **kwargs)

    def transform(
        self, input: Iterator[Input], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Output]:
        """In a sequence: the whole input, then the output's chunks."""
        yield from self._transform_stream_with_config(input, self._run, config, **kwargs)

    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        total = _added(self.stream(input, config, **kwargs))
        if not isinstance(total, self.OutputType):
            raise RuntimeError(f"{type(self).__name__}.stream yielded no {self.OutputType}")
        return total

    async def ainvoke(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Output:
        return await run_in_executor(config, self.invoke, input, config, **kwargs)

    async def astream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Output]:
        """The chunks of :meth:`stream`, each as it is made, without blocking the event loop."""
        async for chunk in self.atransform(_one(input), config, **kwargs):
            yield chunk

    async def atransform(
        self, input: AsyncIterator[Input], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Output]:
        async for chunk in self._atransform_stream_with_config(input, self._arun, config, **kwargs):
            yield chunk

    def _run(
        self,
        inputs: Iterator[Input],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[Output]:
        child = patch_config(config, callbacks=run_manager.get_child())
        yield from self._stream(_added(inputs), child, **kwargs)

    async def _arun(
        self,
        inputs: AsyncIterator[Input],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[Output]:
        whole: Any = None
        async for chunk in inputs:
            whole = _add(whole, chunk)
        child = patch_config(config, callbacks=run_manager.get_child())
        items = self._stream(whole, child, **kwargs)
        done: Any = object()
        while True:
            item = await run_in_executor(child, next, items, done)
            if item is done:
                return
            yield item
            await asyncio.sleep(0)


def _add(total: Any, chunk: Any) -> Any:
    """``total + chunk``, as LangChain adds stream chunks; a chunk that cannot be added to the
    one before replaces it."""
    if total is None:
        return chunk
    try:
        return total + chunk
    except TypeError:
        return chunk


def _added(chunks: Iterable[Any]) -> Any:
    total: Any = None
    for chunk in chunks:
        total = _add(total, chunk)
    return total


async def _one(item: Any) -> AsyncIterator[Any]:
    yield item
