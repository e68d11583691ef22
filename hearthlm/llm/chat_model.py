"""``ChatHearth``: the local model as a LangChain chat model, the same over every backend."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolCallChunk,
    UsageMetadata,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr, SecretStr, ValidationError

from hearthlm.config import (
    HearthConfig,
    LLMConfig,
    MaxNewTokens,
    RepetitionPenalty,
    SamplingConfig,
    Seed,
    Temperature,
    TopK,
    TopP,
    config_error_from,
)
from hearthlm.errors import ConfigError, ContextWindowError
from hearthlm.llm.backend import (
    BACKENDS,
    Backend,
    load_backend,
)
from hearthlm.llm.call_options import (
    distinct_tools,
    explicit_constraint,
    template_message,
)
from hearthlm.llm.decoding import Completion, Outcome, reply_deltas
from hearthlm.llm.logprobs import reply_logprobs, requested_logprobs
from hearthlm.llm.planning import Planner, Prepared
from hearthlm.llm.sources import DEFAULT_MODEL_NAME
from hearthlm.llm.structured import structured_output
from hearthlm.llm.text import render_chat
from hearthlm.llm.tools import (
    format_tools,
    parse_tool_call,
    select_tools,
)

_SAMPLING_FIELDS = tuple(SamplingConfig.model_fields)
_LLM_FIELDS = tuple(LLMConfig.model_fields)


class ChatHearth(BaseChatModel):
    """A local model (llama.cpp or transformers backend) as a LangChain chat model.

    Supports ``invoke``/``stream``/``batch`` and their async forms, stop sequences, token usage,
    ``bind_tools`` and ``with_structured_output``. Tool calls and structured output are generated
    under a JSON-schema grammar, so they are always well formed.

    Any reply can be constrained: pass ``constraint=`` with the call or bind it, as a
    :class:`~hearthlm.llm.backend.Constraint`, a GBNF grammar (``str``) or a JSON schema
    (``dict``). It overrides bound tools and structured output. Per-call sampling options
    (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ...) are read the
    same way.

    Example:
        >>> chat = ChatHearth(max_new_tokens=16)  # the packaged SmolLM2 on llama.cpp, greedy
        >>> chat.invoke("Name the capital of France.").content
        'The capital of France is Paris.'
        >>> yes_no = chat.bind(constraint='root ::= "yes" | "no"')  # a GBNF grammar
        >>> yes_no.invoke("Is Paris in France?").content
        'yes'
    """

    # Read by hearthlm's chains (hearthlm.llm.chain.can_constrain): this model honours
    # constraint= with each call.
    accepts_constraints: ClassVar[bool] = True

    backend: str = "llamacpp"
    model: str | None = None
    adapter: Path | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    context_size: int | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    truncation: Literal["error", "drop_oldest"] = "error"
    parallel: int = 1
    prefill_chunk: int = 128
    flash_attention: bool | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    server: Literal["vllm", "llamacpp", "ollama", "hearth", "generic"] = "generic"
    timeout: float = 60.0
    retries: int = 2
    tokenizer: str | None = None

    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    max_new_tokens: MaxNewTokens = 512
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed = None
    max_structured_tokens: int = Field(
        1024,
        ge=16,
        description="Token cap for tool calls and structured replies, which max_new_tokens "
        "must not cut short: a cut JSON object is useless.",
    )
    stop_repetition: bool = Field(
        True,
        description="End a free-text reply once it repeats one phrase three times in a row "
        "(finish_reason 'repetition'), instead of letting it loop to its length cap.",
    )
    tool_decision: Literal["auto", "choose", "write"] = Field(
        "auto",
        description="With several tools bound, or tool_choice 'auto', how a reply to a user "
        "message picks its tool. 'choose': the tool under whose description the message is "
        "most likely (with 'auto', an 'answer directly' option competes), scored by the model "
        "(hearthlm.llm.calls); right for 0.93 of requests on the 135M model, where writing the "
        "name gets 0.45. 'write': the reply opens freely with text or a call and writes the "
        "name under the grammar (better for larger models). 'auto': 'choose' where the backend "
        "can score text (every local one; a server that returns prompt log-probabilities), "
        "else 'write'.",
    )
    tool_arguments: Literal["auto", "copy", "write"] = Field(
        "auto",
        description="How tool-call arguments and structured-output fields are decoded. 'copy': "
        "each free string is a word span, and each number a number, of the user's messages and "
        "tool results (a field no span fits stays free). In a call of one chosen tool the model "
        "scores each field's candidates (and its enum values) and the most likely is fixed; "
        "right by construction for ids, names, cities and dates on a small model. 'write': the "
        "model writes them freely under the schema (better for larger models). 'auto': 'copy' "
        "where the backend can score text, else 'write'.",
    )

    _engine: Backend | None = PrivateAttr(default=None)
    _engine_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        if "max_tokens" in data:  # LangChain's standard name for the reply's token cap
            data.setdefault("max_new_tokens", data.pop("max_tokens"))
        loaded = data.pop("_loaded", None)  # from_backend's engine
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error_from(exc, "ChatHearth") from None
        LLMConfig(**{k: getattr(self, k) for k in _LLM_FIELDS})
        if loaded is None and self.backend not in BACKENDS:
            BACKENDS.get(self.backend)  # the error that lists the known backends
        self._engine = loaded

    @classmethod
    def from_config(cls, config: HearthConfig) -> ChatHearth:
        """A chat model configured by the ``llm`` and ``sampling`` sections of ``config``."""
        return cls(**config.llm.model_dump(), **config.sampling.model_dump())

    @classmethod
    def from_backend(cls, engine: Backend, **sampling: Any) -> ChatHearth:
        """Wrap an already loaded backend, sharing its weights (no second load). The backend
        need not be registered: a plugin's backend class can be tried before it is installed."""
        return cls(backend=engine.name, _loaded=engine, **sampling)

    # -- model facts -------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "hearthlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*_LLM_FIELDS, *_SAMPLING_FIELDS)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Tracing metadata: provider, model name, temperature, token cap and stop sequences."""
        params = LangSmithParams(
            ls_provider="hearthlm",
            ls_model_name=kwargs.get("model")
            or (Path(self.model).name if self.model else DEFAULT_MODEL_NAME),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
        )
        if stop:
            params["ls_stop"] = stop
        return params

    @property
    def llm_config(self) -> LLMConfig:
        return LLMConfig(**{k: getattr(self, k) for k in _LLM_FIELDS})

    @property
    def _planner(self) -> Planner:
        """The prompt and constraint planning of this chat model's own fields (made per use,
        so that a ``model_copy(update=...)`` plans with the copy's fields, not the original's)."""
        return Planner(self)

    @property
    def engine(self) -> Backend:
        """The loaded backend; the model loads on first use."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = load_backend(self.llm_config)
            return self._engine

    def load(self) -> ChatHearth:
        """Load the model now rather than on first use; returns ``self``."""
        _ = self.engine
        return self

    @property
    def context_window(self) -> int:
        """How many tokens prompt and reply may hold together."""
        return self.engine.context_size

    @property
    def can_score(self) -> bool:
        """Whether :meth:`loglikelihoods` works on this backend (every local one does; a
        server must return the log-probabilities of a prompt's tokens)."""
        return bool(self.engine.can_score)

    @property
    def decision_mode(self) -> Literal["choose", "write"]:
        """How a tool is picked: ``tool_decision`` with ``"auto"`` resolved by capability."""
        if self.tool_decision == "auto":
            return "choose" if self.can_score else "write"
        return self.tool_decision

    @property
    def argument_mode(self) -> Literal["copy", "write"]:
        """How arguments are decoded: ``tool_arguments`` with ``"auto"`` resolved by
        capability."""
        if self.tool_arguments == "auto":
            return "copy" if self.can_score else "write"
        return self.tool_arguments

    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text``, counted with the model's own tokenizer."""
        return len(self.engine.tokenize(text))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the full chat prompt, template and generation prompt included."""
        specs = [convert_to_openai_tool(t) for t in tools or []]
        planner = self._planner
        return len(planner.prompt_ids(planner.template_messages(messages, specs, None, True)))

    # -- generation --------------------------------------------------------------------------

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Log-probability of ``continuation`` right after ``context`` (raw text, no chat
        template): how well the model expects one text from the other.

        Example:
            >>> round(chat.loglikelihood("The capital of France is", " Paris"), 2)
            -0.26
        """
        engine = self.engine
        context_ids = engine.tokenize(context)
        continuation_ids = engine.tokenize(continuation)
        if not context_ids or not continuation_ids:
            raise ConfigError("loglikelihood needs a non-empty context and continuation")
        with engine.lock:
            return engine.loglikelihood(context_ids, continuation_ids)

    def loglikelihoods(
        self, context: str, continuations: Sequence[str], best_only: bool | int = False
    ) -> list[float]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``, which is
        evaluated once: how the model ranks alternatives (tool calls are chosen this way). With
        ``best_only`` the backend may skip those that cannot score highest (``-inf``); with a
        number ``k``, those that cannot score among the ``k`` highest.

        Example:
            >>> [round(x, 1) for x in chat.loglikelihoods("Paris is in", [" France", " Peru"])]
            [-5.1, -7.3]
        """
        engine = self.engine
        context_ids = engine.tokenize(context)
        continuation_ids = [engine.tokenize(c) for c in continuations]
        if not context_ids or not all(continuation_ids):
            raise ConfigError("loglikelihoods needs a non-empty context and continuations")
        with engine.lock:
            return engine.loglikelihoods(context_ids, continuation_ids, best_only)

    def complete(
        self, prompt: str | Sequence[int], stop: list[str] | None = None, **kwargs: Any
    ) -> Completion:
        """Continue raw ``prompt`` text (or token ids) with no chat template, as OpenAI's
        ``/v1/completions`` does. Takes the per-call options and ``constraint=`` of a chat
        call; the model's chat tools and formats do not apply.

        Raises:
            ConfigError: the prompt is empty.
            ContextWindowError: it leaves no room to generate.

        Example:
            >>> "".join(chat.complete("The capital of France is", max_new_tokens=2))
            ' Paris.'
        """
        engine = self.engine
        ids = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ConfigError("the prompt is empty; give at least one token to continue.")
        if len(ids) >= self.context_window:
            raise ContextWindowError(
                f"the prompt is {len(ids)} tokens but the context window is "
                f"{self.context_window}. Shorten the prompt."
            )
        prepared = Prepared(ids, explicit_constraint(kwargs), False, 0)
        outcome = Outcome()
        return Completion(
            ids, self._deltas(prepared, self._sampling(kwargs), stop, outcome), outcome
        )

    def token_logprobs(
        self, text: str | Sequence[int], top: int = 0
    ) -> tuple[list[int], list[tuple[float, dict[int, float]]]]:
        """The token ids of ``text`` (raw, no template) and, for each after the first, its
        log-probability and the ``top`` likeliest tokens there (``echo`` with ``logprobs``)."""
        engine = self.engine
        ids = engine.tokenize(text) if isinstance(text, str) else list(text)
        if len(ids) < 2:
            return ids, []
        with engine.lock:
            return ids, engine.token_logprobs(ids, top)

    def _sampling(self, overrides: dict[str, Any]) -> SamplingConfig:
        values = {k: getattr(self, k) for k in _SAMPLING_FIELDS}
        values.update({k: v for k, v in overrides.items() if k in _SAMPLING_FIELDS})
        try:
            return SamplingConfig(**values)
        except ValidationError as exc:
            raise config_error_from(exc, "sampling") from None

    def _deltas(
        self,
        prepared: Prepared,
        sampling: SamplingConfig,
        stop: list[str] | None,
        outcome: Outcome,
        top_logprobs: int | None = None,
    ) -> Iterator[str]:
        """:func:`~hearthlm.llm.decoding.reply_deltas` with this model's length and
        repetition settings."""
        return reply_deltas(
            self.engine,
            prepared,
            sampling,
            stop,
            outcome,
            max_structured_tokens=self.max_structured_tokens,
            stop_repetition=self.stop_repetition,
            top_logprobs=top_logprobs,
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        top = requested_logprobs(kwargs, lambda: self.can_score)
        prepared = self._planner.prepare(messages, kwargs)
        outcome = Outcome()
        held: list[str] = []  # text that may be the start of a tool call
        for delta in self._deltas(prepared, self._sampling(kwargs), stop, outcome, top):
            held.append(delta)
            if prepared.tools_active and outcome.opening in ("", "{"):
                continue  # a tool call is released whole, once it is complete
            chunk = ChatGenerationChunk(message=AIMessageChunk(content="".join(held)))
            held.clear()
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
        text = "".join(held)
        metadata = self._metadata(prepared, outcome, top)
        calls, invalid = parse_tool_call(text) if text else ([], [])
        if calls:
            metadata["finish_reason"] = "tool_calls"
        last = AIMessageChunk(
            content="" if calls else text,
            tool_call_chunks=[
                ToolCallChunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                for i, c in enumerate(calls)
            ],
            invalid_tool_calls=invalid,
            usage_metadata=self._usage(prepared, outcome),
            response_metadata=metadata,
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        top = requested_logprobs(kwargs, lambda: self.can_score)
        prepared = self._planner.prepare(messages, kwargs)
        outcome = Outcome()
        for _ in self._deltas(prepared, self._sampling(kwargs), stop, outcome, top):
            pass
        text = "".join(outcome.text)
        calls, invalid = parse_tool_call(text) if prepared.tools_active else ([], [])
        metadata = self._metadata(prepared, outcome, top)
        if calls:
            metadata["finish_reason"] = "tool_calls"
        message = AIMessage(
            content="" if calls else text,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=self._usage(prepared, outcome),
            response_metadata=metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    # -- prompt building ---------------------------------------------------------------------

    def prompt(self, messages: list[BaseMessage], add_generation_prompt: bool = True) -> str:
        """The prompt text the model reads for ``messages``, chat template applied. A final
        AI message is continued, not closed (a prefilled reply). Without
        ``add_generation_prompt``, the chat as the template closes it, no reply opened."""
        rendered = [template_message(m) for m in messages]
        if add_generation_prompt:
            return self._planner.prompt_text(rendered)
        engine = self.engine
        return render_chat(
            engine.chat_template,
            rendered,
            add_generation_prompt=False,
            bos_token=engine.bos_token,
            eos_token=engine.eos_token,
        )

    def _usage(self, prepared: Prepared, outcome: Outcome) -> UsageMetadata:
        n_in, n_out = len(prepared.prompt_ids), outcome.output_tokens
        return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}

    def _metadata(
        self, prepared: Prepared, outcome: Outcome, top_logprobs: int | None = None
    ) -> dict[str, Any]:
        meta = {
            **self.engine.describe(),
            "model_name": self.engine.model_name,
            "finish_reason": outcome.finish_reason,
        }
        if prepared.dropped_messages:
            meta["dropped_messages"] = prepared.dropped_messages
        if prepared.tools_active:
            meta["tool_decision"] = self.decision_mode
            meta["tool_arguments"] = self.argument_mode
        if prepared.constraint is not None and prepared.fixed is None:
            enforced = self.engine.enforces(prepared.constraint)
            meta["constraint"] = "enforced" if enforced else "not enforced"
        if top_logprobs is not None:  # a backend that streams text gives no ids: its text's
            ids = outcome.token_ids or self.engine.tokenize("".join(outcome.text))
            scored = outcome.scored if len(outcome.scored) == len(ids) else None
            meta["logprobs"] = reply_logprobs(self, prepared.prompt_ids, ids, top_logprobs, scored)
        return meta

    # -- tools and structured output ---------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; replies are then either plain text or one schema-valid tool call.

        Args:
            tools: LangChain tools, pydantic models, typed functions or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default: call a tool or answer), ``"any"``/``"required"``
                (must call one), a tool name (must call that one), or ``"none"``.
        """
        formatted = format_tools(distinct_tools(tools))
        select_tools(formatted, tool_choice)  # validate the choice now, not at first call
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Replies parsed into ``schema`` (a pydantic v2 or v1 class, TypedDict or JSON schema).

        ``json_schema`` constrains the reply to the schema itself; ``function_calling`` makes it a
        forced call of a tool with that schema; ``json_mode`` constrains the reply to a JSON
        object of any shape (the prompt must say which keys), parsed into ``schema`` if given.
        """
        return structured_output(self, schema, include_raw=include_raw, method=method, **kwargs)
