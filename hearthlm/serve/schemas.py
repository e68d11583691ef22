"""The request bodies the server reads, in OpenAI's (and vLLM's) field names.

Fields a client may send that hearthlm does not act on are refused, not ignored, where ignoring
would change the answer silently: ``n`` above 1, penalties it does not apply, the fields of
:data:`UNAPPLIED` with other than their neutral value, ``suffix``, and vLLM's ``guided_*``
constraint fields, which vLLM itself has removed and now ignores, so that a request that sends
them would get an unconstrained reply."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hearthlm.serve.errors import APIError

# vLLM's constraint fields before 0.12; they now do nothing there, silently.
REMOVED_CONSTRAINTS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
)

# Fields of OpenAI's, vLLM's and llama.cpp's servers that shape a reply and that hearthlm does not
# apply, each with the values that leave a reply as it is (sent by clients that fill in every
# field).
UNAPPLIED: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "min_tokens": (None, 0),
    "min_p": (None, 0, 0.0),
    "ignore_eos": (None, False),
    "stop_token_ids": (None, []),
    "bad_words": (None, []),
    "logits_processors": (None, []),
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _no_removed_fields(self) -> _Body:
        for name in REMOVED_CONSTRAINTS:
            if name in (self.model_extra or {}):
                raise APIError(
                    400,
                    f"{name} is not supported (vLLM removed it in 0.12 and ignores it); use "
                    "response_format, or structured_outputs with json, regex, choice or "
                    "grammar.",
                    code="unsupported_parameter",
                    param=name,
                )
        return self


class FunctionCall(BaseModel):
    """A call an assistant message made."""

    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """One entry of an assistant message's ``tool_calls``."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message; ``content`` is text or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"message content part of type {part.get('type')!r} is not supported; "
                    "send text parts only.",
                    code="invalid_value",
                    param="messages",
                )
            parts.append(part["text"])
        return "".join(parts)


class FunctionSpec(BaseModel):
    """A tool's function: its name, description and JSON-schema parameters."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of ``tools``."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(BaseModel):
    """``stream_options``."""

    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = "reply"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: exactly one of its constraints."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class Sampling(_Body):
    """The sampling fields chat and text completions share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    max_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    structured_outputs: StructuredOutputs | None = None
    grammar: str | None = None  # llama.cpp server's field
    json_schema: dict[str, Any] | None = None  # llama.cpp server's field
    user: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> Sampling:
        if self.n != 1:
            raise APIError(400, "n must be 1: one choice per request.", param="n")
        for name, neutral in UNAPPLIED.items():
            if (self.model_extra or {}).get(name) not in neutral:
                raise APIError(
                    400,
                    f"{name} is not supported: the reply would not follow it.",
                    code="unsupported_parameter",
                    param=name,
                )
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise APIError(
                    400,
                    f"{name} is not supported; use repetition_penalty.",
                    code="unsupported_parameter",
                    param=name,
                )
        return self

    def stops(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def chat_options(self, max_tokens: int | None = None) -> dict[str, Any]:
        """The ChatHearth per-call options the sampling fields give (``max_tokens``: the
        caller's reply cap, in place of the request's).

        Raises:
            APIError: 400, a reply cap below 1.
        """
        options: dict[str, Any] = {}
        for name in ("temperature", "top_p", "seed", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.top_k is not None:
            options["top_k"] = max(self.top_k, 0)  # vLLM's -1 is "off", ChatHearth's 0
        limit = max_tokens if max_tokens is not None else self.max_tokens
        if isinstance(self, ChatCompletionRequest) and self.max_completion_tokens is not None:
            limit = self.max_completion_tokens
        if limit is not None:
            if limit < 1:
                raise APIError(400, "max_tokens must be at least 1.", param="max_tokens")
            options["max_new_tokens"] = limit
        return options


class ChatCompletionRequest(Sampling):
    """``POST /v1/chat/completions``; ``collection`` and ``session_id`` make it a docs chat."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    collection: str | None = None
    session_id: str | None = None

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatCompletionRequest:
        if not any(m.text().strip() or m.tool_calls for m in self.messages):
            raise APIError(
                400, "every message is empty: send some text to reply to.", param="messages"
            )
        if self.top_logprobs and not self.logprobs:
            raise APIError(
                400, "top_logprobs needs logprobs: true.", param="top_logprobs"
            )  # fmt: skip
        return self

    def shaping_fields(self) -> list[str]:
        """The fields given that shape the reply beyond its sampling: a docs chat, whose reply
        is a cited answer, cannot honour them."""
        shaping = ("tools", "response_format", "structured_outputs", "grammar", "json_schema")
        given = [name for name in shaping if getattr(self, name)]
        if self.tool_choice not in (None, "none", "auto"):
            given.append("tool_choice")
        return given + ["logprobs"] * self.logprobs


class CompletionRequest(Sampling):
    """``POST /v1/completions``: a prompt (text or token ids), ``echo`` and ``logprobs``."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None


class ScoreRequest(_Body):
    """``POST /v1/loglikelihoods``: continuations scored after one shared context."""

    model: str | None = None
    context: str | list[int]
    continuations: list[str] | list[list[int]] = Field(min_length=1, max_length=1024)
    best_only: bool | int = False


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class TokenizeRequest(BaseModel):
    """vLLM's ``POST /tokenize``: a prompt, or chat messages rendered by the template."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True
    # hearthlm adds no special token to a raw prompt (nor does /v1/completions when it reads
    # one), and the chat template writes its own: either value gives the ids the model reads.
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    """vLLM's ``POST /detokenize``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


class AskRequest(BaseModel):
    """``POST /v1/collections/{name}/ask``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=20_000)
    stream: bool = False
    model: str | None = None


class AgentRunRequest(BaseModel):
    """``POST /v1/agent/runs``: the task, the tools by name and the run's limits."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=20_000)
    tools: list[str] = Field(default_factory=lambda: ["calculator"])
    collection: str | None = None
    model: str | None = None
    max_steps: int | None = Field(None, ge=1, le=20)
    max_seconds: float | None = Field(None, gt=0, le=600)
    max_tokens: int | None = Field(None, ge=1, le=32_000)
    stream: bool = True
