"""The OpenAI-compatible routes: models, chat and text completions, embeddings, and vLLM's
``/tokenize`` and ``/detokenize``.

A chat completion is ChatHearth's reply, so tool calls are chosen as ``bind_tools`` chooses
them (the tool by likelihood, its arguments copied from the request) and structured replies are
decoded under their grammar. ``/v1/completions`` with ``echo`` and ``logprobs`` scores a text,
as lm-evaluation-harness's ``local-completions`` asks, which is how a remote client keeps
hearthlm's choosing path.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
)

from hearthlm.errors import ContextWindowError, HearthError
from hearthlm.llm import ChatHearth
from hearthlm.serve import documents
from hearthlm.serve.constraints import request_options
from hearthlm.serve.errors import APIError, from_library
from hearthlm.serve.formats import chat_chunk, to_messages
from hearthlm.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ScoreRequest,
    TokenizeRequest,
)
from hearthlm.serve.state import Caller, caller, now, state_of
from hearthlm.serve.streaming import DONE, Work, add_up, collect, event_stream, opened, sse

router = APIRouter()


@router.get("/v1/models", tags=["OpenAI"])
def list_models(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    """The chat models (the base model and each configured adapter) and the embedder, each
    with its context length as ``max_model_len``, as vLLM reports it."""
    state = state_of(request)
    base = state.models.base_id
    cards = []
    for model_id, chat in state.models.loaded():
        length = (chat or state.models.base).context_window
        parent = None if model_id == base else base
        cards.append(_card(model_id, length, parent))
    embeddings = state.embeddings
    cards.append(_card(embeddings.name, embeddings.max_tokens, None, kind="embedding"))
    return {"object": "list", "data": cards}


def _card(model_id: str, length: int, parent: str | None, kind: str = "chat") -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "hearthlm",
        "root": model_id,
        "parent": parent,
        "max_model_len": length,
        "type": kind,
    }


# -- chat completions ---------------------------------------------------------------------------


@router.post("/v1/chat/completions", tags=["OpenAI"], response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, who: Caller = Depends(caller)
) -> Response:
    """A chat reply, streamed over SSE with ``stream: true``. With ``collection`` it is a
    chat over that collection's documents, its ``citations`` beside the message, kept in
    the session ``session_id`` names (a new one when absent)."""
    state = state_of(request)
    chat = await state.models.aget(body.model)
    if body.collection is not None:
        return await documents.docs_chat_completion(state, chat, body, request, who)
    messages = to_messages(body.messages)
    options = {
        **body.chat_options(),
        **_tool_options(body),
        **request_options(body, body.response_format),
    }
    if body.logprobs:
        options.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    model_id = body.model or state.models.base_id
    reply_id = f"chatcmpl-{secrets.token_hex(12)}"
    if not body.stream:
        work = Work(state, lambda: [chat.invoke(messages, stop=body.stops(), **options)], request)
        message = (await collect(work))[0]
        return JSONResponse(_chat_response(reply_id, model_id, message))
    work = Work(state, lambda: chat.stream(messages, stop=body.stops(), **options), request)
    chunks = await opened(work)
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return event_stream(_chat_events(reply_id, model_id, chunks, usage))


def _tool_options(body: ChatCompletionRequest) -> dict[str, Any]:
    if not body.tools:
        if body.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice names a tool, but no tools were given.")
        return {}
    specs = []
    for i, tool in enumerate(body.tools):
        parameters = tool.function.parameters
        try:
            validator_for(parameters).check_schema(parameters)
        except SchemaError as exc:
            raise APIError(
                400,
                f"tools[{i}] ({tool.function.name}): its parameters are not a valid JSON "
                f"schema: {exc.message}",
                code="invalid_schema",
                param=f"tools[{i}].function.parameters",
            ) from None
        if parameters.get("type", "object") != "object":
            raise APIError(
                400,
                f"tools[{i}] ({tool.function.name}): parameters must be an object schema.",
                code="invalid_schema",
                param=f"tools[{i}].function.parameters",
            )
        specs.append(tool.model_dump(exclude_none=True))
    options: dict[str, Any] = {"tools": specs}
    if body.tool_choice is not None:
        options["tool_choice"] = body.tool_choice
    return options


def _finish(reason: str) -> tuple[str, str | None]:
    """OpenAI's finish_reason and vLLM's ``stop_reason`` for a ChatHearth finish reason."""
    if reason in ("stop", "length", "tool_calls"):
        return reason, None
    return "stop", reason  # "repetition": the reply looped and was cut


def _tool_calls(message: AIMessage | AIMessageChunk) -> list[dict[str, Any]]:
    calls = []
    for i, call in enumerate(message.tool_calls):
        calls.append(
            {
                "index": i,
                "id": call.get("id") or f"call_{secrets.token_hex(6)}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call["args"], ensure_ascii=False),
                },
            }
        )
    return calls


def _usage(message: AIMessage | AIMessageChunk) -> dict[str, int]:
    usage = message.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
    prompt, completion = usage["input_tokens"], usage["output_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chat_response(reply_id: str, model_id: str, message: AIMessage) -> dict[str, Any]:
    finish, stop_reason = _finish(str(message.response_metadata.get("finish_reason", "stop")))
    calls = _tool_calls(message)
    body: dict[str, Any] = {"role": "assistant", "content": None if calls else message.text}
    if calls:
        body["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return {
        "id": reply_id,
        "object": "chat.completion",
        "created": now(),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": body,
                "finish_reason": finish,
                "stop_reason": stop_reason,
                "logprobs": message.response_metadata.get("logprobs"),
            }
        ],
        "usage": _usage(message),
    }


async def _chat_events(
    reply_id: str, model_id: str, chunks: AsyncIterator[Any], usage: bool
) -> AsyncIterator[str]:
    yield sse(chat_chunk(reply_id, model_id, {"role": "assistant", "content": ""}))
    parts: list[AIMessageChunk] = []  # summed once at the end (see add_up)
    try:
        async for chunk in chunks:
            parts.append(chunk)
            if chunk.text:
                yield sse(chat_chunk(reply_id, model_id, {"content": chunk.text}))
    except HearthError as exc:
        yield sse(from_library(exc).body())
        yield DONE
        return
    if not parts:
        yield DONE
        return
    total = add_up(parts)
    calls = _tool_calls(total)
    if calls:
        yield sse(chat_chunk(reply_id, model_id, {"tool_calls": calls}))
    finish, stop_reason = _finish(str(total.response_metadata.get("finish_reason", "stop")))
    last = chat_chunk(reply_id, model_id, {}, finish, stop_reason=stop_reason)
    # logprobs are read once the reply is made (hearthlm.llm.logprobs): all with the last chunk
    last["choices"][0]["logprobs"] = total.response_metadata.get("logprobs")
    yield sse(last)
    if usage:
        yield sse(
            {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": now(),
                "model": model_id,
                "choices": [],
                "usage": _usage(total),
            }
        )
    yield DONE


# -- text completions ---------------------------------------------------------------------------


@router.post("/v1/completions", tags=["OpenAI"], response_model=None)
async def completions(
    body: CompletionRequest, request: Request, who: Caller = Depends(caller)
) -> Response:
    """Continue a prompt (raw text or token ids, no chat template). With ``echo`` the prompt
    comes back too, and with ``logprobs`` every token's log-probability (the prompt's too,
    with ``echo``) and the ``logprobs`` likeliest tokens at each position."""
    state = state_of(request)
    chat = await state.models.aget(body.model)
    prompts = _prompts(body.prompt)
    if len(prompts) != 1:
        raise APIError(400, "send one prompt per request.", param="prompt")
    prompt = prompts[0]
    if not isinstance(prompt, str):
        _known_ids(prompt, chat.engine.vocab_size, "prompt")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    options = {**body.chat_options(max(max_tokens, 1)), **request_options(body)}
    model_id = body.model or state.models.base_id
    reply_id = f"cmpl-{secrets.token_hex(12)}"
    if body.suffix is not None:
        raise APIError(400, "suffix (filling in the middle) is not served.", param="suffix")
    if body.stream:
        if body.echo or body.logprobs is not None:
            raise APIError(400, "echo and logprobs are served without stream.", param="stream")
        stream = Work(
            state, lambda: _completion_deltas(chat, prompt, body, options, max_tokens), request
        )
        deltas = await opened(stream, merge=None)
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(_completion_events(reply_id, model_id, deltas, usage))
    work = Work(state, lambda: [_completion(chat, prompt, body, options, max_tokens)], request)
    choice, usage = (await collect(work))[0]
    return JSONResponse(
        {
            "id": reply_id,
            "object": "text_completion",
            "created": now(),
            "model": model_id,
            "choices": [choice],
            "usage": usage,
        }
    )


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


def _completion(
    chat: ChatHearth,
    prompt: str | list[int],
    body: CompletionRequest,
    options: dict[str, Any],
    max_tokens: int,
) -> tuple[dict[str, Any], dict[str, int]]:
    engine = chat.engine
    ids = _prompt_ids(engine, prompt)
    text, finish, produced, generated = "", "length", [], 0
    if max_tokens > 0:
        completion = chat.complete(ids, stop=body.stops(), **options)
        text = "".join(completion)
        finish, _ = _finish(completion.finish_reason)
        generated = completion.output_tokens
        # the tokens generated; a backend that streams text (a remote engine) gives none
        produced = completion.token_ids or (engine.tokenize(text) if text else [])
    prompt_text = engine.decode(ids)
    choice: dict[str, Any] = {
        "index": 0,
        "text": (prompt_text if body.echo else "") + text,
        "finish_reason": finish,
        "logprobs": None,
    }
    if body.logprobs is not None:
        choice["logprobs"] = _logprobs(chat, ids, produced, body.echo, body.logprobs)
    usage = {"prompt_tokens": len(ids), "completion_tokens": generated}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return choice, usage


def _logprobs(
    chat: ChatHearth, prompt: list[int], produced: list[int], echo: bool, top: int
) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object: the tokens, each one's log-probability (None for the
    first token of the text), the ``top`` likeliest at each position and the text offsets."""
    engine = chat.engine
    ids = prompt + produced
    _, scored = chat.token_logprobs(ids, top)
    first = 0 if echo else len(prompt)
    tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = 0
    for position in range(len(ids)):
        piece = engine.decode([ids[position]])
        if position >= first:
            tokens.append(piece)
            offsets.append(offset)
            if position == 0:
                logprobs.append(None)
                tops.append(None)
            else:
                value, best = scored[position - 1]
                logprobs.append(value)
                tops.append({engine.decode([t]): v for t, v in best.items()} if top else None)
        offset += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _completion_deltas(
    chat: ChatHearth,
    prompt: str | list[int],
    body: CompletionRequest,
    options: dict[str, Any],
    max_tokens: int,
) -> Iterator[tuple[str, str | None, dict[str, int] | None]]:
    """The text as it is made, then the finish reason and the usage."""
    ids = _prompt_ids(chat.engine, prompt)
    finish, generated = "length", 0
    if max_tokens > 0:
        completion = chat.complete(ids, stop=body.stops(), **options)
        for delta in completion:
            yield delta, None, None
        finish, generated = _finish(completion.finish_reason)[0], completion.output_tokens
    usage = {"prompt_tokens": len(ids), "completion_tokens": generated}
    yield "", finish, {**usage, "total_tokens": len(ids) + generated}


async def _completion_events(
    reply_id: str,
    model_id: str,
    deltas: AsyncIterator[tuple[str, str | None, dict[str, int] | None]],
    include_usage: bool,
) -> AsyncIterator[str]:
    head = {"id": reply_id, "object": "text_completion", "model": model_id}
    try:
        async for text, finish, usage in deltas:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            yield sse({**head, "created": now(), "choices": [choice]})
            if usage is not None and include_usage:
                yield sse({**head, "created": now(), "choices": [], "usage": usage})
    except HearthError as exc:
        yield sse(from_library(exc).body())
    yield DONE


# -- embeddings and tokens ----------------------------------------------------------------------


@router.post("/v1/loglikelihoods", tags=["Scoring"])
async def loglikelihoods(
    body: ScoreRequest, request: Request, who: Caller = Depends(caller)
) -> dict[str, Any]:
    """The log-probability of each continuation right after one shared context (raw text or
    token ids, no chat template), the context evaluated once: how hearthlm's chains choose a
    tool, its arguments or a quote, served to a remote ``ChatHearth(backend="openai",
    server="hearth")``. With ``best_only``, continuations that cannot score highest come back
    as ``null`` (the best one is exact)."""
    state = state_of(request)
    chat = await state.models.aget(body.model)
    engine = chat.engine

    def ids(text: str | list[int], param: str) -> list[int]:
        if isinstance(text, str):
            return engine.tokenize(text)
        return _known_ids(list(text), engine.vocab_size, param)

    context = ids(body.context, "context")
    continuations = [ids(c, "continuations") for c in body.continuations]
    if not context or not all(continuations):
        raise APIError(400, "context and every continuation need a token.", param="context")
    longest = len(context) + max(len(c) for c in continuations)
    if longest > chat.context_window:
        raise from_library(
            ContextWindowError(
                f"context and continuation hold {longest} tokens but the context window is "
                f"{chat.context_window}."
            )
        )

    def score() -> list[list[float]]:
        with engine.lock:
            return [engine.loglikelihoods(context, continuations, body.best_only)]

    scores = (await collect(Work(state, score, request)))[0]
    return {
        "object": "loglikelihoods",
        "model": body.model or state.models.base_id,
        "loglikelihoods": [s if math.isfinite(s) else None for s in scores],
        "usage": {"prompt_tokens": len(context) + sum(len(c) for c in continuations)},
    }


@router.post("/v1/embeddings", tags=["OpenAI"])
async def embeddings(
    body: EmbeddingRequest, request: Request, who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Vectors of the configured embedder for a string or a list of strings, as ``float``
    lists or ``base64`` (little-endian float32), as OpenAI encodes them."""
    state = state_of(request)
    embedder = state.embeddings
    if body.model not in (None, "", embedder.name):
        raise APIError(
            404,
            f"the embedding model {body.model!r} does not exist; this server embeds with "
            f"{embedder.name!r}.",
            code="model_not_found",
            param="model",
        )
    texts = _texts(body.input, embedder)
    if not texts or any(not t for t in texts):
        raise APIError(400, "input must not be empty.", param="input")
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise APIError(
            400, f"this embedder gives {embedder.dimension} dimensions.", param="dimensions"
        )
    work = Work(state, lambda: [embedder.embed_documents(texts)], request)
    vectors = (await collect(work))[0]
    data = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if body.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(embedder.tokenizer.encode(t)) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": embedder.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _texts(given: Any, embedder: Any) -> list[str]:
    if isinstance(given, str):
        return [given]
    if given and all(isinstance(t, int) for t in given):
        given = [given]
    if given and all(isinstance(t, list) for t in given):
        tokenizer = embedder.tokenizer
        return [tokenizer.decode(_known_ids(ids, len(tokenizer), "input")) for ids in given]
    return list(given)


@router.post("/tokenize", tags=["Tokens"])
def tokenize(
    body: TokenizeRequest, request: Request, who: Caller = Depends(caller)
) -> dict[str, Any]:
    """vLLM's ``/tokenize``: a prompt's token ids, or chat messages' under the template, with
    their count and the model's ``max_model_len``."""
    chat = state_of(request).models.get(body.model)
    engine = chat.engine
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give prompt or messages, not both.", param="prompt")
    if body.messages is not None:
        text = chat.prompt(to_messages(body.messages), body.add_generation_prompt)
    else:
        text = body.prompt or ""
    ids = engine.tokenize(text)
    result: dict[str, Any] = {
        "count": len(ids),
        "max_model_len": chat.context_window,
        "tokens": ids,
    }
    if body.return_token_strs:
        result["token_strs"] = [engine.decode([t]) for t in ids]
    return result


@router.post("/detokenize", tags=["Tokens"])
def detokenize(
    body: DetokenizeRequest, request: Request, who: Caller = Depends(caller)
) -> dict[str, Any]:
    """vLLM's ``/detokenize``: the text of token ids."""
    engine = state_of(request).models.get(body.model).engine
    return {"prompt": engine.decode(_known_ids(body.tokens, engine.vocab_size, "tokens"))}


def _known_ids(ids: list[int], vocab: int | None, param: str) -> list[int]:
    """``ids``, refused with a 400 unless each is a token of a vocabulary of ``vocab`` tokens
    (None: one the server cannot tell): llama.cpp fails the batch an unknown id is decoded in,
    other clients' requests with it."""
    if vocab is not None and any(not 0 <= t < vocab for t in ids):
        raise APIError(400, f"token ids must be in [0, {vocab}).", param=param)
    return ids


def _prompt_ids(engine: Any, prompt: str | list[int]) -> list[int]:
    """A completion's prompt as token ids: raw text is tokenized with no template."""
    return engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
