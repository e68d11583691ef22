"""The ``openai`` backend: the same chains on a model that a server runs (vLLM, llama.cpp's
``llama-server``, Ollama, ``hearth serve``, or any OpenAI-compatible server).

What makes a small model right happens around generation, so it stays here: the prompt is built
in this process (chat template, tool instructions, a prefilled reply) with the served model's
tokenizer, and sent as a raw completion. The request then carries the constraint in the fields
that its server reads (:func:`constraint_fields`), and scoring
(:meth:`OpenAIBackend.loglikelihoods`) asks ``/v1/completions`` for the log-probabilities of the
prompt's own tokens (``echo`` with ``logprobs``, as lm-evaluation-harness's ``local-completions``
does). A server that cannot take a constraint or score says so: the chat model reads
:attr:`OpenAIBackend.can_score` and :meth:`OpenAIBackend.enforces`, takes its writing paths
where they say no, and says which path ran in the reply's metadata.

The transport is the ``openai`` client (connection pooling, timeouts, retries with backoff of
requests that failed before their reply began), and ``httpx`` with tenacity for Ollama's own
``/api/generate``, the one Ollama route that takes a raw prompt and a JSON schema.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, Literal, TypeVar

import httpx

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.errors import BackendError, ConfigError, ContextWindowError, ModelLoadError
from hearthlm.llm.backend import Backend, Constraint, Piece
from hearthlm.llm.grammar import constraint_gbnf
from hearthlm.llm.sources import resolve_model
from hearthlm.llm.text import CHATML_TEMPLATE

ServerKind = Literal["vllm", "llamacpp", "ollama", "hearth", "generic"]
# Kinds that read a GBNF grammar (vLLM through structured_outputs, the others as `grammar`).
GRAMMAR_KINDS = frozenset({"vllm", "llamacpp", "hearth"})
# The window used on Ollama unless llm.context_size says otherwise: each request sends it as
# num_ctx, and Ollama allocates (and reloads the model for) a KV cache that long; a model's
# trained length (131,072 for Llama 3.1) would take gigabytes for a window no chain here fills.
OLLAMA_CONTEXT = 8192
# A sentence whose tokens the load step compares with the server's tokenizer.
_PROBE = "The capital of France is Paris, and 1234 * 5678 = 7006652."
# Words without sense, said three times: a model that reads the first time predicts the third
# far better, so a server whose echoed log-probabilities are right scores the third time
# several nats a token above the first. One that pairs each token with the distribution after
# it (llama_cpp.server does) scores them alike.
_REPEATS = 3
_PATTERN = "red green blue seven apple river"
_T = TypeVar("_T")


def constraint_fields(kind: ServerKind, constraint: Constraint | None) -> dict[str, Any] | None:
    """The request fields that carry ``constraint`` to a ``kind`` server, or None when it
    cannot take it (Ollama and generic servers read JSON schemas, not grammars).

    vLLM reads ``structured_outputs`` (its ``guided_*`` fields were removed in 0.12 and are
    ignored with HTTP 200, so they are never sent); llama.cpp's servers and ``hearth serve``
    read a GBNF ``grammar``, given the same strict GBNF the in-process backend decodes under;
    Ollama reads ``format``; a generic server ``response_format``.

    Example:
        >>> constraint_fields("vllm", Constraint(json_schema={"type": "object"}))
        {'structured_outputs': {'json': {'type': 'object'}}}
    """
    if constraint is None:
        return {}
    if not carries(kind, constraint):
        return None
    schema_only = _schema_only(constraint)
    if kind == "vllm":
        if schema_only:
            return {"structured_outputs": {"json": constraint.json_schema}}
        return {"structured_outputs": {"grammar": constraint_gbnf(constraint)}}
    if kind in GRAMMAR_KINDS:
        return {"grammar": constraint_gbnf(constraint)}
    if kind == "ollama":
        return {"format": constraint.json_schema}
    spec = {"name": "reply", "schema": constraint.json_schema, "strict": True}
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


def carries(kind: ServerKind, constraint: Constraint | None) -> bool:
    """Whether a ``kind`` server can hold generation to ``constraint``: every kind takes a JSON
    schema, only vLLM, llama.cpp's servers and hearth serve a grammar."""
    return constraint is None or kind in GRAMMAR_KINDS or _schema_only(constraint)


def _schema_only(constraint: Constraint) -> bool:
    return constraint.json_schema is not None and not constraint.allow_text


def sampling_fields(kind: ServerKind, sampling: SamplingConfig) -> dict[str, Any]:
    """Sampling options as ``kind`` names them, with every default that would change a greedy
    reply set back (llama.cpp's servers apply ``min_p`` 0.05 and ``llama_cpp.server`` a
    repetition penalty of 1.1 unless told otherwise)."""
    fields: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    if kind == "llamacpp":
        fields.update(top_k=sampling.top_k, min_p=0.0, repeat_penalty=sampling.repetition_penalty)
    elif kind in ("vllm", "hearth"):
        fields.update(top_k=sampling.top_k or -1, repetition_penalty=sampling.repetition_penalty)
    elif kind == "ollama":
        fields.update(top_k=sampling.top_k, repeat_penalty=sampling.repetition_penalty)
    return fields


class _Tokenizer:
    """The served model's tokenizer and chat template, loaded here without weights."""

    def __init__(self, name: str | None) -> None:
        source = resolve_model(name)
        self.name = source.name
        if source.is_gguf:
            from llama_cpp import Llama

            from hearthlm.llm.llamacpp_backend import free_at_exit, token_text

            try:
                vocab = free_at_exit(
                    Llama(model_path=str(source.path), vocab_only=True, n_ctx=64, verbose=False)
                )
            except (ValueError, RuntimeError) as exc:
                raise ModelLoadError(
                    f"could not read the tokenizer in {source.path}: {exc}"
                ) from exc
            meta = vocab.metadata
            self.chat_template = meta.get("tokenizer.chat_template") or CHATML_TEMPLATE
            arch = meta.get("general.architecture", "llama")
            self.trained_context = int(meta.get(f"{arch}.context_length", 2048))
            self.bos = token_text(vocab, vocab.token_bos())
            self.eos = token_text(vocab, vocab.token_eos())
            self.eos_id = vocab.token_eos()
            self.encode: Callable[[str], list[int]] = lambda text: list(
                vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            )
            self.decode: Callable[[list[int]], str] = lambda ids: bytes(
                vocab.detokenize(ids)
            ).decode("utf-8", errors="replace")
            self.render: Callable[[list[int]], str] = lambda ids: bytes(
                vocab.detokenize(ids, special=True)
            ).decode("utf-8", errors="replace")
            return
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(source.path))
        self.chat_template = hf.chat_template or CHATML_TEMPLATE
        self.trained_context = int(min(hf.model_max_length, 1 << 20))
        self.bos, self.eos = hf.bos_token or "", hf.eos_token or ""
        self.eos_id = hf.eos_token_id
        self.encode = lambda text: list(hf.encode(text, add_special_tokens=False))
        self.decode = lambda ids: str(hf.decode(ids, skip_special_tokens=True))
        self.render = lambda ids: str(hf.decode(ids, skip_special_tokens=False))


class OpenAIBackend(Backend):
    """A model on an OpenAI-compatible server (``llm.backend = "openai"``).

    Example:
        >>> chat = ChatHearth(backend="openai", base_url="http://gpu-box:8000/v1",
        ...                   server="vllm", model="Qwen/Qwen3-8B", tokenizer="/models/Qwen3-8B")
        ... # doctest: +SKIP
    """

    name = "openai"
    streams_text = True

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.lock = contextlib.nullcontext()  # the server queues and batches requests itself
        if not config.base_url:
            raise ConfigError(
                "the openai backend needs llm.base_url, the server's address, e.g. "
                "http://localhost:8000/v1 (vLLM, llama-server, hearth serve) or "
                "http://localhost:11434 (Ollama)."
            )
        self.kind: ServerKind = config.server
        self.root = _root(config.base_url)
        self.url = self.root if self.kind == "ollama" else f"{self.root}/v1"
        self.timeout = config.timeout
        self.retries = config.retries
        key = config.api_key.get_secret_value() if config.api_key else None
        self.api_key = (
            key or os.environ.get("HEARTH_LLM__API_KEY") or os.environ.get("OPENAI_API_KEY")
        )
        self.tokenizer = _Tokenizer(config.tokenizer)
        self.chat_template = self.tokenizer.chat_template
        self.bos_token, self.eos_token = self.tokenizer.bos, self.tokenizer.eos
        eos = self.tokenizer.eos_id
        self.stop_token_ids = frozenset() if eos is None else frozenset({eos})
        self.token_prompts = self.kind in ("vllm", "hearth")  # llamacpp: probed at load
        self.tokenizer_checked = False
        self.scoring_reason = ""
        self._http = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {},
        )
        self._client: Any = None
        if self.kind != "ollama":
            import openai

            self._client = openai.OpenAI(
                base_url=self.url,
                api_key=self.api_key or "none",
                timeout=self.timeout,
                max_retries=self.retries,
            )
        self.model_name, served_context = self._find_model(config.model)
        if self.kind == "ollama" and served_context:
            served_context = min(served_context, OLLAMA_CONTEXT)
        self.context_size = config.context_size or served_context or self.tokenizer.trained_context

    @classmethod
    def load(cls, config: LLMConfig) -> OpenAIBackend:
        backend = cls(config)
        backend._check_tokenizer()
        if backend.kind == "llamacpp":
            backend.token_prompts = backend._takes_token_prompts()
        return backend

    # -- tokens ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _prompt(self, ids: list[int]) -> list[int] | str:
        """The prompt as the server takes it: token ids where it can (exact), else text."""
        return list(ids) if self.token_prompts else self.tokenizer.render(ids)

    # -- generation --------------------------------------------------------------------------

    def enforces(self, constraint: Constraint | None) -> bool:
        return carries(self.kind, constraint)

    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None = None,
    ) -> Iterator[int]:
        raise NotImplementedError(
            "the openai backend streams text, not token ids; use generate_text (ChatHearth does)"
        )

    def generate_text(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None,
        stop: list[str] | None,
        max_tokens: int,
    ) -> Iterator[Piece]:
        fields = constraint_fields(self.kind, constraint) or {}
        if self.kind == "ollama":
            yield from self._ollama_stream(prompt_ids, sampling, fields, stop, max_tokens)
            return
        body = sampling_fields(self.kind, sampling)
        standard = {k: body.pop(k) for k in ("temperature", "top_p", "seed") if k in body}
        with self._errors():
            stream = self._client.completions.create(
                model=self.model_name,
                prompt=self._prompt(prompt_ids),
                max_tokens=max_tokens,
                stop=stop[:4] if stop else None,  # OpenAI's limit; the chat model scans the rest
                stream=True,
                stream_options={"include_usage": True},
                extra_body={**body, **fields},
                **standard,
            )
        yield from self._pieces(stream)

    def _pieces(self, stream: Any) -> Iterator[Piece]:
        count, finish, usage = 0, None, None
        try:
            with self._errors():
                for chunk in stream:
                    if getattr(chunk, "usage", None) is not None:
                        usage = chunk.usage.completion_tokens
                    for choice in chunk.choices or []:
                        if choice.text:
                            count += 1
                            yield Piece(choice.text)
                        finish = choice.finish_reason or finish
        finally:
            stream.close()
        yield from self._ended(count, finish is not None, usage)

    def _ended(self, count: int, finished: bool, reported: int | None) -> Iterator[Piece]:
        """The end of a stream of ``count`` pieces: a cut-off one (no finish reason, or no
        ``done``) raises; where the server reported more tokens than pieces (a piece may hold
        several), a piece of no text carries the difference."""
        if not finished:
            raise BackendError(
                f"the reply from {self.url} was cut off after {count} pieces, without a "
                "finish reason. The server may have stopped it for another request "
                "(llama_cpp.server does unless started with --interrupt_requests false)."
            )
        if reported is not None and reported > count:
            yield Piece("", reported - count)

    def _ollama_stream(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        fields: dict[str, Any],
        stop: list[str] | None,
        max_tokens: int,
    ) -> Iterator[Piece]:
        options = sampling_fields("ollama", sampling)
        options.update(num_predict=max_tokens, num_ctx=self.context_size)
        if stop:
            options["stop"] = stop
        body = {
            "model": self.model_name,
            "prompt": self.tokenizer.render(prompt_ids),
            "raw": True,  # the prompt is already templated here
            "stream": True,
            "options": options,
            **fields,
        }
        count, done = 0, None
        url = f"{self.root}/api/generate"
        reply = self._retrying(lambda: self._send(self._http.build_request("POST", url, json=body)))
        try:
            with self._errors():
                for line in reply.iter_lines():
                    if not line.strip():
                        continue
                    event = _json(line, self.url)
                    if "error" in event:
                        raise BackendError(f"Ollama at {self.url} failed: {event['error']}")
                    if event.get("response"):
                        count += 1
                        yield Piece(event["response"])
                    if event.get("done"):
                        done = event
                        break
        finally:
            reply.close()
        reported = int(done.get("eval_count") or 0) if done is not None else None
        yield from self._ended(count, done is not None, reported)

    # -- scoring -----------------------------------------------------------------------------

    @cached_property
    def can_score(self) -> bool:  # type: ignore[override]
        """Whether the server returns the log-probabilities of a prompt's tokens (``echo``
        with ``logprobs``): probed once, with one short request."""
        if self.kind == "ollama":
            self.scoring_reason = "Ollama returns no log-probabilities of a prompt's tokens"
            return False
        once = self.tokenize(" " + _PATTERN)
        try:
            scores = self._prompt_logprobs(self.tokenize(_PATTERN) + once * (_REPEATS - 1))
        except (BackendError, ContextWindowError) as exc:
            self.scoring_reason = str(exc)
            return False
        if not scores or not all(math.isfinite(s) and s <= 0 for s in scores):
            self.scoring_reason = f"{self.url} returned no usable prompt log-probabilities"
            return False
        first, last = scores[: len(once) - 1], scores[-len(once) :]
        if sum(last) / len(last) - sum(first) / len(first) < 3.0:
            self.scoring_reason = (
                "its echoed log-probabilities are not those of the prompt's tokens (each "
                "token is scored by the distribution after it, as llama_cpp.server does)"
            )
            return False
        return True

    def _unable(self) -> None:
        if not self.can_score:
            raise NotImplementedError(
                f"the {self.kind} server at {self.url} cannot score text: "
                f"{self.scoring_reason}. Use a server that can (vLLM, llama-server, "
                "llama_cpp.server, hearth serve), or the writing paths "
                "(tool_decision='write', tool_arguments='write')."
            )

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        return self.loglikelihoods(context, [continuation])[0]

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool | int = False
    ) -> list[float]:
        self._unable()
        if self.kind == "hearth":  # its own route: the context evaluated once, as in process
            return self._hearth_scores(context, continuations, best_only)
        scores = []
        for continuation in continuations:
            ids = [*context, *continuation]
            if self.token_prompts:
                scores.append(sum(self._prompt_logprobs(ids)[-len(continuation) :]))
            else:
                cut = len(self.tokenizer.render(list(context)))
                scores.append(sum(self._text_logprobs(self.tokenizer.render(ids), cut)))
        return scores

    def _hearth_scores(
        self, context: list[int], continuations: list[list[int]], best_only: bool | int
    ) -> list[float]:
        body = {
            "model": self.model_name,
            "context": list(context),
            "continuations": [list(c) for c in continuations],
            "best_only": best_only,
        }
        reply = self._retrying(lambda: self._fetch("POST", "/v1/loglikelihoods", body))
        scores = reply.get("loglikelihoods") if isinstance(reply, dict) else None
        if not isinstance(scores, list) or len(scores) != len(continuations):
            raise BackendError(f"{self.url}/loglikelihoods answered without one score each")
        return [-math.inf if s is None else float(s) for s in scores]

    def token_logprobs(self, ids: list[int], top: int = 0) -> list[tuple[float, dict[int, float]]]:
        self._unable()
        logprobs = self._echo(ids, top)
        values = logprobs.token_logprobs[1 : len(ids)]
        tops = (logprobs.top_logprobs or [])[1 : len(ids)]
        rows = []
        for i, value in enumerate(values):
            best: dict[int, float] = {}
            for text, score in (tops[i] or {}).items() if i < len(tops) else ():
                token = self.tokenize(text)
                if len(token) == 1:
                    best[token[0]] = float(score)
            rows.append((float(value), best))
        return rows

    def _echo(self, prompt_ids: list[int], top: int, text: str | None = None) -> Any:
        with self._errors():
            reply = self._client.completions.create(
                model=self.model_name,
                prompt=text if text is not None else self._prompt(prompt_ids),
                max_tokens=1,  # vLLM takes no 0; lm-evaluation-harness sends 1 too
                echo=True,
                logprobs=top,
                temperature=0.0,
            )
        choices = getattr(reply, "choices", None)
        if choices is None:
            raise BackendError(f"{self.url} answered a completion in an unexpected shape")
        logprobs = choices[0].logprobs if choices else None
        if logprobs is None or not logprobs.token_logprobs:
            raise BackendError(f"{self.url} returned no log-probabilities for an echoed prompt")
        return logprobs

    def _prompt_logprobs(self, ids: list[int]) -> list[float]:
        """The log-probability of each prompt token after the first, given those before it."""
        if not self.token_prompts:
            return self._text_logprobs(self.tokenizer.render(ids), 0)
        values = self._echo(ids, 0).token_logprobs
        if len(values) < len(ids) or any(v is None for v in values[1 : len(ids)]):
            raise BackendError(
                f"{self.url} echoed {len(values)} log-probabilities for a "
                f"prompt of {len(ids)} tokens"
            )
        return [float(v) for v in values[1 : len(ids)]]

    def _text_logprobs(self, text: str, cut: int) -> list[float]:
        """Log-probabilities of the server's tokens of ``text`` (after the first) that begin
        at or after character ``cut`` (a server that reads text prompts tokenizes them)."""
        logprobs = self._echo([], 0, text=text)
        offsets = logprobs.text_offset or []
        values = logprobs.token_logprobs
        if len(offsets) != len(values):
            raise BackendError(f"{self.url} returned log-probabilities without text offsets")
        # the first token has no log-probability: nothing comes before it
        kept = [v for i, (v, at) in enumerate(zip(values, offsets, strict=True))
                if i > 0 and cut <= at < len(text)]  # fmt: skip
        if not kept or any(v is None for v in kept):
            raise BackendError(f"{self.url} returned no log-probabilities after offset {cut}")
        return [float(v) for v in kept]

    # -- facts and probes --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "server": self.kind,
            "base_url": self.url,
            "tokenizer": self.tokenizer.name,
            "tokenizer_checked": self.tokenizer_checked,
        }

    def close(self) -> None:
        self._http.close()
        if self._client is not None:
            self._client.close()

    def _find_model(self, wanted: str | None) -> tuple[str, int | None]:
        """The served model's id and, where the server reports it, its context length."""
        if self.kind == "ollama":
            tags = self._retrying(lambda: self._fetch("GET", "/api/tags"))
            cards = [{"id": m.get("name") or m.get("model")} for m in tags.get("models", [])]
        else:
            cards = self._retrying(lambda: self._fetch("GET", "/v1/models")).get("data", [])
        ids = [str(c.get("id")) for c in cards]
        if wanted is None and not ids:
            raise BackendError(f"{self.url} serves no model.")
        name = wanted or ids[0]
        if name not in ids:
            raise ConfigError(
                f"the server at {self.url} has no model {name!r}; it serves "
                f"{', '.join(ids) or 'none'}. Set llm.model to one of them."
            )
        card = cards[ids.index(name)]
        context = card.get("max_model_len") or card.get("meta", {}).get("n_ctx_train")
        if context is None and self.kind == "llamacpp":
            props = self._optional("GET", "/props", None)
            settings = (props or {}).get("default_generation_settings", {})
            context = settings.get("n_ctx") or (props or {}).get("n_ctx")
        if context is None and self.kind == "ollama":
            shown = self._optional("POST", "/api/show", {"model": name}) or {}
            info = shown.get("model_info", {})
            context = next((v for k, v in info.items() if k.endswith(".context_length")), None)
        return name, int(context) if context else None

    def _check_tokenizer(self) -> None:
        """Compare the local tokenizer with the server's, where the server has a route for it
        (a mismatch would send other text than the chat model built, and score other tokens)."""
        vllm = ("/tokenize", {"model": self.model_name, "prompt": _PROBE,
                              "add_special_tokens": False})  # fmt: skip
        table: dict[str, list[tuple[str, dict[str, Any]]]] = {
            "vllm": [vllm],
            "hearth": [vllm],
            "llamacpp": [
                ("/tokenize", {"content": _PROBE}),
                ("/extras/tokenize", {"input": _PROBE}),
            ],
        }
        routes = table.get(self.kind, [])
        ours = self.tokenize(_PROBE)
        for path, body in routes:
            reply = self._optional("POST", path, body)
            if reply is None or "tokens" not in reply:
                continue
            theirs = [t for t in reply["tokens"] if not isinstance(t, dict)]
            if theirs[: len(theirs) - len(ours)] and theirs[len(theirs) - len(ours) :] == ours:
                theirs = theirs[len(theirs) - len(ours) :]  # a BOS token the server added
            if theirs != ours:
                raise ConfigError(
                    f"the server at {self.url} tokenizes text differently from the local "
                    f"tokenizer ({self.tokenizer.name}). Set llm.tokenizer to the served "
                    "model's GGUF file or Hugging Face folder."
                )
            self.tokenizer_checked = True
            return

    def _takes_token_prompts(self) -> bool:
        """Whether the server reads a prompt given as token ids (llama-server does;
        llama_cpp.server reads text only)."""
        import openai

        try:
            self._client.with_options(max_retries=0).completions.create(
                model=self.model_name, prompt=self.tokenize("Hi"), max_tokens=1, temperature=0.0
            )
        except openai.APIStatusError as exc:
            # 400 or 422 where the prompt is validated; llama_cpp.server answers 500
            if exc.status_code in (400, 422, 500) and "prompt" in str(exc.message):
                return False
            raise self._translate(exc) from exc
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        return True

    def _fetch(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON reply of ``method path`` under the server's root; an error status raises
        (for :meth:`_retrying` to retry or :meth:`_errors` to name)."""
        reply = self._http.request(method, f"{self.root}{path}", json=body)
        reply.raise_for_status()
        return _json(reply.text, self.url)

    def _optional(self, method: str, path: str, body: Any) -> Any:
        """A route that not every server has: its JSON, or None where it is missing."""
        try:
            reply = self._http.request(method, f"{self.root}{path}", json=body)
        except httpx.HTTPError:
            return None
        if reply.status_code >= 400:
            return None
        try:
            return reply.json()
        except ValueError:
            return None

    def _send(self, request: httpx.Request) -> httpx.Response:
        """``request`` sent, its reply left open to stream; an error status raises."""
        reply = self._http.send(request, stream=True)
        if reply.status_code >= 400:
            reply.read()
            reply.close()
            raise httpx.HTTPStatusError(reply.text, request=request, response=reply)
        return reply

    def _retrying(self, call: Callable[[], _T]) -> _T:
        """``call`` retried with exponential backoff while the failure is transient (no
        connection, a timeout, 408, 429 or 5xx), up to ``llm.retries`` times."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=0.25, max=4.0),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        with self._errors():
            return retrying(call)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Transport and server failures as :class:`BackendError` naming the server."""
        import openai

        try:
            yield
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        except httpx.HTTPStatusError as exc:
            raise self._status_error(exc.response.status_code, exc.response.text) from exc
        except httpx.TimeoutException as exc:
            raise self._down(f"no answer within {self.timeout:g} s (llm.timeout)") from exc
        except httpx.TransportError as exc:
            raise self._down(str(exc) or type(exc).__name__) from exc

    def _translate(self, exc: Exception) -> Exception:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return self._down(f"no answer within {self.timeout:g} s (llm.timeout)")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            # the client's own httpx (httpx or httpx2) names them alike
            if type(cause).__name__ in ("RemoteProtocolError", "ReadError"):
                return BackendError(f"the reply from {self.url} was cut off: {cause}")
            return self._down(str(cause) or "connection failed")
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc.status_code, exc.message)
        return BackendError(f"{self.url} answered in an unexpected shape: {exc}")

    def _status_error(self, status: int, message: str) -> Exception:
        text = " ".join(str(message).split())[:300]
        lowered = text.lower()
        if status == 400 and ("context" in lowered or "too long" in lowered):
            return ContextWindowError(
                f"the {self.kind} server at {self.url} refused a prompt that does not fit its "
                f"context: {text}. Set llm.context_size to the server's context length."
            )
        if status in (401, 403):
            return BackendError(f"{self.url} refused the key ({status}): set llm.api_key.")
        return BackendError(f"the {self.kind} server at {self.url} answered {status}: {text}")

    def _down(self, why: str) -> BackendError:
        return BackendError(
            f"the {self.kind} server at {self.url} could not be reached: {why}. Is it running, "
            "and is llm.base_url right?"
        )


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (408, 429) or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _json(text: str, url: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BackendError(f"{url} sent a body that is not JSON: {text[:120]!r}") from exc


def _root(base_url: str) -> str:
    """The server's root address: ``base_url`` without a trailing ``/v1``."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
