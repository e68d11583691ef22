"""One reply decoded: a backend's tokens as text deltas, under the reply's stop sequences,
length budgets, repetition guard and cancellation, with what the reply came to (tokens, finish
reason, token ids and their log-probabilities)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from hearthlm.config import SamplingConfig
from hearthlm.llm.backend import Backend, Piece, Scored, cancelled
from hearthlm.llm.call_options import TEXT_ONLY
from hearthlm.llm.planning import Prepared
from hearthlm.llm.text import IncrementalDetokenizer, RepetitionGuard, StopScanner


@dataclass
class Outcome:
    """Filled in while a reply streams; read once it ends."""

    output_tokens: int = 0
    finish_reason: str = "stop"
    opening: str = ""  # first non-whitespace character of the reply; "{" means a tool call
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # from a backend that yields ids
    scored: list[Scored] = field(default_factory=list)  # their log-probabilities, if asked


@dataclass
class Completion:
    """A raw completion as it streams (:meth:`~hearthlm.llm.ChatHearth.complete`): iterate
    over it for text deltas; once it ends, ``finish_reason`` and ``output_tokens`` say how."""

    prompt_ids: list[int]
    _deltas: Iterator[str]
    _outcome: Outcome

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    @property
    def finish_reason(self) -> str:
        return self._outcome.finish_reason

    @property
    def output_tokens(self) -> int:
        return self._outcome.output_tokens

    @property
    def token_ids(self) -> list[int]:
        """The ids of the tokens generated (empty from a backend that streams text)."""
        return self._outcome.token_ids


def reply_deltas(
    engine: Backend,
    prepared: Prepared,
    sampling: SamplingConfig,
    stop: list[str] | None,
    outcome: Outcome,
    *,
    max_structured_tokens: int,
    stop_repetition: bool,
    top_logprobs: int | None = None,
) -> Iterator[str]:
    """Text deltas of one reply; ``outcome`` records the token count and finish reason
    (and, with ``top_logprobs``, each token's log-probability where the backend can tell
    it as it samples). A structured reply or a tool call may run to
    ``max_structured_tokens`` (a cut JSON object is useless); free text stops once it
    loops where ``stop_repetition`` says so."""
    if prepared.fixed is not None:  # a tool call chosen whole: nothing to generate
        outcome.token_ids = engine.tokenize(prepared.fixed)
        outcome.output_tokens = len(outcome.token_ids)
        outcome.opening = prepared.fixed[:1]
        outcome.text.append(prepared.fixed)
        yield prepared.fixed
        return
    room = engine.context_size - len(prepared.prompt_ids)
    constraint = prepared.constraint
    structured_budget = min(max(sampling.max_new_tokens, max_structured_tokens), room)
    budget = min(sampling.max_new_tokens, room)
    if constraint and constraint.json_schema is not None and not constraint.allow_text:
        budget = structured_budget
    scanner = StopScanner(stop)
    # Free text stops once it loops; JSON is left to its grammar, which bounds every string.
    free_text = constraint is None or constraint.allow_text or constraint.grammar == TEXT_ONLY
    guard = RepetitionGuard() if stop_repetition and free_text else None
    with engine.lock:
        # An optional tool call may grow to the structured budget once it opens with "{".
        cap = structured_budget if constraint and constraint.allow_text else budget
        pieces = _pieces(engine, prepared, sampling, stop, cap, top_logprobs)
        try:
            for piece in pieces:
                outcome.output_tokens += piece.tokens
                outcome.token_ids += piece.ids
                outcome.scored += piece.scored
                engine.generated_tokens += piece.tokens
                text = scanner.push(piece.text)
                if text:
                    outcome.text.append(text)
                    if not outcome.opening:
                        outcome.opening = "".join(outcome.text).lstrip()[:1]
                        if outcome.opening == "{" and constraint and constraint.allow_text:
                            budget = structured_budget  # it became a tool call
                    yield text
                if scanner.stopped:
                    break
                if cancelled():
                    outcome.finish_reason = "cancelled"
                    break
                if guard and outcome.opening != "{" and guard.push(text):
                    outcome.finish_reason = "repetition"
                    break
                if outcome.output_tokens >= budget:
                    outcome.finish_reason = "length"
                    break
        finally:
            pieces.close()
    if cancelled():  # a batched backend may have ended the sequence itself
        outcome.finish_reason = "cancelled"
    tail = scanner.flush()
    if tail:
        outcome.text.append(tail)
        yield tail


def _pieces(
    engine: Backend,
    prepared: Prepared,
    sampling: SamplingConfig,
    stop: list[str] | None,
    max_tokens: int,
    top_logprobs: int | None = None,
) -> Generator[Piece, None, None]:
    """The reply as text pieces: a remote backend streams them, a local one yields token ids,
    detokenized here one token a piece (with its log-probability, when ``top_logprobs`` asks
    and the backend tells it as it samples)."""
    if engine.streams_text:
        yield from engine.generate_text(
            prepared.prompt_ids, sampling, prepared.constraint, stop, max_tokens
        )
        return
    detokenizer = IncrementalDetokenizer(engine.decode)
    ids, constraint = prepared.prompt_ids, prepared.constraint
    recorded = top_logprobs is not None and engine.logprobs_while_generating
    tokens: Iterator[Any] = (
        engine.generate_logprobs(ids, sampling, constraint, top_logprobs or 0)
        if recorded
        else engine.generate(ids, sampling, constraint)
    )
    try:
        for item in tokens:
            token, scored = item if recorded else (item, None)
            yield Piece(detokenizer.push(token), ids=(token,), scored=(scored,) if scored else ())
    finally:
        close = getattr(tokens, "close", None)
        if close:
            close()
