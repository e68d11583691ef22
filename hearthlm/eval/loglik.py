"""Log-likelihoods of continuations on the transformers backend, batched.

Requests that share a beginning (every question of an MMLU subject starts with the same few-shot
block) are grouped: the shared tokens run through the model once, and only each request's own tail
is batched on top of that cache. The arithmetic is the same as scoring every request on its own;
only the order of float additions can differ, so scores agree at any batch size to about 1e-5.
Tails are right-padded, and under the causal mask padding never reaches a real token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hearthlm.config import LLMConfig
from hearthlm.errors import ContextWindowError, EvalError
from hearthlm.llm.hf_backend import TransformersBackend

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Request:
    """Score ``continuation`` given ``context``; an empty context scores the text from its first
    token on, conditioned on the end-of-text token (as lm-evaluation-harness does)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Score:
    """The log-likelihood of one continuation given its context, the number of continuation
    tokens it sums over, and whether greedy decoding would have produced it."""

    logprob: float  # sum over the continuation's tokens
    tokens: int
    greedy: bool | None  # every continuation token was the argmax; None: a server's, not known

    @property
    def cross_entropy(self) -> float:
        """Mean negative log-likelihood per continuation token (nats)."""
        return -self.logprob / max(self.tokens, 1)


class _Scorer:
    """What the scorers share: lm-evaluation-harness's context/continuation split and
    perplexity over windows. A scorer sets ``max_length`` and ``_eot`` and defines
    ``_tokenize``, ``_decode`` and ``score``."""

    max_length: int
    _eot: int

    def _tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def score(
        self, requests: Sequence[Request], progress: Callable[[int], None] | None = None
    ) -> list[Score]:
        raise NotImplementedError

    def _checked(self, requests: Sequence[Request]) -> list[tuple[list[int], list[int]]]:
        encoded = [self.encode(r) for r in requests]
        for index, (context, continuation) in enumerate(encoded):
            if not continuation:
                raise EvalError(f"request {index} has an empty continuation: {requests[index]}")
            if len(context) + len(continuation) > self.max_length:
                raise ContextWindowError(
                    f"request {index} is {len(context) + len(continuation)} tokens, more than the "
                    f"model's {self.max_length}; use fewer shots or a shorter template."
                )
        return encoded

    def encode(self, request: Request) -> tuple[list[int], list[int]]:
        """Context and continuation token ids, split the way lm-evaluation-harness splits them:
        trailing spaces of the context move to the continuation, the pair is tokenized whole, and
        the continuation is what follows the context's own tokens."""
        tokenize = self._tokenize
        context, continuation = request.context, request.continuation
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        if not context:
            ids = tokenize(continuation)
            return [self._eot], ids
        whole = tokenize(context + continuation)
        context_ids = tokenize(context)
        return whole[: len(context_ids)], whole[len(context_ids) :]

    def perplexity(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[Score]:
        """Per-text scores of the whole text, in windows of the model's context when longer."""
        requests, owners = [], []
        for index, text in enumerate(texts):
            for window in self._windows(text):
                requests.append(window)
                owners.append(index)
        scores = self.score(requests, progress)
        totals: dict[int, list[Score]] = {}
        for owner, score in zip(owners, scores, strict=True):
            totals.setdefault(owner, []).append(score)
        return [
            Score(
                logprob=sum(s.logprob for s in parts),
                tokens=sum(s.tokens for s in parts),
                greedy=None
                if any(s.greedy is None for s in parts)
                else all(bool(s.greedy) for s in parts),
            )
            for parts in (totals[i] for i in range(len(texts)))
        ]

    def _windows(self, text: str) -> Iterator[Request]:
        """Disjoint windows; each later window is conditioned on the text before it (up to the
        context size), so every token is scored exactly once."""
        ids = self._tokenize(text)
        if len(ids) <= self.max_length - 1:
            yield Request("", text)
            return
        decode = self._decode
        step = self.max_length // 2
        for start in range(0, len(ids), step):
            context = ids[max(0, start - (self.max_length - step)) : start]
            yield Request(decode(context), decode(ids[start : start + step]))


class LoglikScorer(_Scorer):
    """Batched continuation log-likelihoods for a model source plus an optional adapter.

    Example:
        >>> scorer = LoglikScorer.load(LLMConfig(backend="transformers"))  # doctest: +SKIP
        >>> scorer.score([Request("The capital of France is", " Paris")])  # doctest: +SKIP
    """

    def __init__(
        self, backend: TransformersBackend, batch_size: int = 8, max_batch_tokens: int = 8192
    ) -> None:
        if backend.soft_prompt is not None:
            raise EvalError(
                "log-likelihood scoring of prompt-tuning adapters is not supported; "
                "score them with generation tasks, or merge a LoRA adapter instead."
            )
        if batch_size < 1:
            raise EvalError(f"batch_size must be 1 or more, got {batch_size}")
        self.backend = backend
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_length = backend.context_size
        self._eot = self._end_of_text_id()
        self._cached_prefix: tuple[tuple[int, ...], Any] | None = None

    @classmethod
    def load(cls, config: LLMConfig, batch_size: int = 8) -> LoglikScorer:
        backend = TransformersBackend.load(config.model_copy(update={"backend": "transformers"}))
        return cls(backend, batch_size)

    def _tokenize(self, text: str) -> list[int]:
        return self.backend.tokenize(text)

    def _decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)

    def score(
        self,
        requests: Sequence[Request],
        progress: Callable[[int], None] | None = None,
    ) -> list[Score]:
        """One :class:`Score` per request, in order. ``progress(n)`` is told after each batch."""
        encoded = self._checked(requests)
        # One forward per distinct (context, continuation): requests with the same context and a
        # one-token continuation (the answer letters of a question) share a single row.
        rows: list[list[int]] = []  # context + continuation minus its last token
        contexts: list[int] = []  # context length of each row
        members: list[list[int]] = []
        single: dict[tuple[int, ...], int] = {}
        for index, (context, continuation) in enumerate(encoded):
            if len(continuation) == 1:
                key = tuple(context)
                if key in single:
                    members[single[key]].append(index)
                    continue
                single[key] = len(rows)
            rows.append(context + continuation[:-1])
            contexts.append(len(context))
            members.append([index])
        results: list[Score | None] = [None] * len(requests)
        import torch

        with torch.inference_mode():
            for shared, group in _groups(rows, contexts):
                for batch in self._batches(group, shared, rows):
                    self._score_batch(encoded, rows, contexts, members, shared, batch, results)
                    if progress:
                        progress(sum(len(members[r]) for r in batch))
        return [r for r in results if r is not None]

    def _score_batch(
        self,
        encoded: list[tuple[list[int], list[int]]],
        rows: list[list[int]],
        contexts: list[int],
        members: list[list[int]],
        shared: int,
        batch: list[int],
        results: list[Score | None],
    ) -> None:
        cache = self._prefix_cache(rows[batch[0]][:shared])
        tails = [rows[r][shared:] for r in batch]
        width = max(map(len, tails))
        padded = [t + [self._eot] * (width - len(t)) for t in tails]
        # Tail position p - 1 predicts tail token p; a continuation starts at tail position
        # ``first`` (>= 1: the shared part always leaves each context its last token).
        firsts = [contexts[r] - shared for r in batch]
        keep = width - (min(firsts) - 1)  # only the positions some continuation needs
        if shared:
            cache.batch_repeat_interleave(len(batch))
        logits = self._forward(self._tensor(padded), cache, keep)  # (batch, keep, vocab)
        offset = width - keep
        for row, first in enumerate(firsts):
            for index in members[batch[row]]:
                continuation = encoded[index][1]
                at = [p - 1 - offset for p in range(first, first + len(continuation))]
                picked = logits[row, at].float().log_softmax(dim=-1)  # (n, vocab)
                target = self._tensor([continuation])[0]
                chosen = picked.gather(-1, target[:, None])[:, 0]
                results[index] = Score(
                    logprob=float(chosen.sum()),
                    tokens=len(continuation),
                    greedy=bool((picked.argmax(-1) == target).all()),
                )

    def _prefix_cache(self, ids: list[int]) -> Any:
        """A KV cache holding ``ids`` (the few-shot block), computed once per group."""
        from transformers import DynamicCache

        key = tuple(ids)
        if self._cached_prefix is None or self._cached_prefix[0] != key:
            cache = DynamicCache()
            if ids:
                self._forward(self._tensor([ids]), cache, 1)
            self._cached_prefix = (key, cache)
        return copy.deepcopy(self._cached_prefix[1])

    def _batches(self, group: list[int], shared: int, rows: list[list[int]]) -> Iterator[list[int]]:
        """Rows longest first (little padding), up to ``batch_size`` of them and no more than
        ``max_batch_tokens`` padded tokens."""
        ordered = sorted(group, key=lambda r: -len(rows[r]))
        batch: list[int] = []
        for r in ordered:
            width = len(rows[batch[0]] if batch else rows[r]) - shared
            if batch and (
                len(batch) == self.batch_size or (len(batch) + 1) * width > self.max_batch_tokens
            ):
                yield batch
                batch = []
            batch.append(r)
        if batch:
            yield batch

    def _forward(self, ids: torch.Tensor, cache: Any, keep: int = 0) -> torch.Tensor:
        """Logits of the last ``keep`` positions (all when 0); ``cache`` grows in place."""
        inputs = {"input_ids": ids, self.backend._cache_kwarg: cache, "use_cache": True}
        return self.backend.model(**inputs, logits_to_keep=keep).logits

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        import torch

        return torch.tensor(rows, device=self.backend.device)

    def _end_of_text_id(self) -> int:
        tokenizer = self.backend.tokenizer
        token = tokenizer.eos_token_id
        if token is None:
            token = tokenizer.bos_token_id
        if token is None:
            raise EvalError("the model has no end-of-text token to condition an empty context on")
        return int(token)


class RemoteScorer(_Scorer):
    """Continuation log-likelihoods through a server that scores (the ``openai`` backend):
    the requests that share a context go in one call, which evaluates it once.

    Raises:
        EvalError: the server cannot score; the message says why and which servers can.
    """

    def __init__(self, chat: Any) -> None:
        engine = chat.engine
        if not chat.can_score:
            raise EvalError(
                f"the {engine.kind} server at {engine.url} cannot score text "
                f"({engine.scoring_reason}), and multiple-choice and perplexity tasks score. "
                "Run them through vLLM or hearth serve, or in process; generation tasks run on "
                "any server."
            )
        self.engine = engine
        self.max_length = engine.context_size
        self._eot = engine.tokenizer.eos_id

    def _tokenize(self, text: str) -> list[int]:
        return list(self.engine.tokenize(text))

    def _decode(self, ids: list[int]) -> str:
        return str(self.engine.decode(ids))

    def score(
        self, requests: Sequence[Request], progress: Callable[[int], None] | None = None
    ) -> list[Score]:
        encoded = self._checked(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (context_ids, _) in enumerate(encoded):
            groups.setdefault(tuple(context_ids), []).append(index)
        results: list[Score | None] = [None] * len(requests)
        for shared, members in groups.items():
            continuations = [encoded[i][1] for i in members]
            scores = self.engine.loglikelihoods(list(shared), continuations)
            for index, value in zip(members, scores, strict=True):
                results[index] = Score(float(value), len(encoded[index][1]), None)
            if progress:
                progress(len(members))
        return [r for r in results if r is not None]


def _groups(rows: list[list[int]], contexts: list[int]) -> Iterator[tuple[int, list[int]]]:
    """Rows grouped by their first 32 tokens: (shared token count, row indices).

    The shared part is the longest common prefix of the group's rows, kept at least one token
    short of every context, so each row runs its last context token itself.
    """
    keyed: dict[tuple[int, ...], list[int]] = {}
    for index, row in enumerate(rows):
        keyed.setdefault(tuple(row[:32]), []).append(index)
    for members in keyed.values():
        first = rows[members[0]]
        shared = min(contexts[i] for i in members) - 1
        for index in members[1:]:
            other = rows[index]
            n = 0
            while n < shared and first[n] == other[n]:
                n += 1
            shared = n
        yield max(shared, 0), members
