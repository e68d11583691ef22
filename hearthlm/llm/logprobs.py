"""A reply's token log-probabilities, in the form OpenAI's chat API returns them
(``logprobs: true``, ``top_logprobs: k``) and LangChain's ``ChatOpenAI`` keeps in
``response_metadata["logprobs"]``.

Each value is the model's log-probability of the token it produced, from the raw logits it was
sampled from (before temperature, penalties or a grammar narrowed the choice), where the backend
tells them as it samples (llama.cpp, transformers). Otherwise (a remote engine, a tool call
chosen whole) the prompt and the reply's token ids are scored in one pass after the reply, the
scoring that ``/v1/completions`` with ``echo`` serves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hearthlm.errors import ConfigError
from hearthlm.llm.backend import Scored

MAX_TOP_LOGPROBS = 20  # OpenAI's own bound


def requested_logprobs(options: dict[str, Any], can_score: Callable[[], bool]) -> int | None:
    """How many alternatives per token a call's ``logprobs``/``top_logprobs`` options ask for
    (0: only the chosen token's), or None when they ask for none. ``can_score`` is asked only
    when they ask for some: on a server it costs a probe request.

    Raises:
        ConfigError: ``top_logprobs`` out of range or without ``logprobs``, or a backend that
            cannot score text.
    """
    top = options.get("top_logprobs")
    if not options.get("logprobs"):
        if top:
            raise ConfigError("top_logprobs needs logprobs=True with it.")
        return None
    top = int(top or 0)
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ConfigError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {top}.")
    if not can_score():
        raise ConfigError(
            "logprobs need a backend that scores text (llama.cpp, transformers, or a server "
            "that returns prompt log-probabilities); this one does not."
        )
    return top


def reply_logprobs(
    model: Any,
    prompt_ids: list[int],
    reply_ids: list[int],
    top: int,
    scored: Sequence[Scored] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``{"content": [...]}``: for each token of the reply, its text, log-probability and
    UTF-8 bytes, and the ``top`` likeliest tokens at its position with theirs: ``scored``,
    one per reply token, as the backend recorded them while sampling, else scored now.

    ``model`` has ``engine`` and ``token_logprobs`` (a ChatHearth)."""
    if not reply_ids:
        return {"content": []}
    if scored is None:
        _, after_prompt = model.token_logprobs([*prompt_ids, *reply_ids], top)
        scored = after_prompt[len(prompt_ids) - 1 :]
    decode = model.engine.decode
    content = []
    for token, (value, best) in zip(reply_ids, scored, strict=True):
        content.append(
            {
                **_entry(decode([token]), value),
                "top_logprobs": [_entry(decode([t]), v) for t, v in best.items()],
            }
        )
    return {"content": content}


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
