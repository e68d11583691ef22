"""Continuous batching on llama.cpp: many requests, one model, one ``llama_decode`` a step.

One scheduler thread owns a context of ``llm.parallel`` sequences, as llama.cpp's own server
owns its slots. Callers on any thread submit a generation or a scoring session and read its
results from a queue. Each step the scheduler

1. drops the sequences whose caller closed them or whose cancel event is set, and admits waiting
   requests into free slots (a slot whose cells hold the prompt or that it continues, so a
   follow-up request re-evaluates only what is new; else an empty slot, so that another
   conversation's cache survives, given a copy of the longest prefix any slot holds, such as
   the system prompt, when that saves evaluating enough tokens);
2. builds one batch, its sequences in slot order: the next token of every decoding sequence,
   and prompt tokens (first come, first served), at most ``prefill_chunk`` of them while others
   are decoding, so a long prompt does not freeze the streams already running;
3. calls ``llama_decode`` once, and samples each decoding sequence with its own sampler chain
   (its settings, seed and grammar), or hands a scoring session the logits it asked for.

Scoring (``loglikelihoods``, for the tool choice and the quote reader) runs on a slot of its
own, so it shares the batches but never touches another sequence's cells. Greedy replies equal
the in-process backend's for a lone request on a fresh engine, under the same
``flash_attention`` (which an unset ``llm.flash_attention`` turns on here and off there);
batched with others, or reusing cached cells that another batch computed, llama.cpp's kernels
may round differently, which can change a token only where the two likeliest are nearly tied
(llama.cpp's server says the same of its ``cache_prompt``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.errors import ContextWindowError, GenerationError
from hearthlm.llm.backend import Constraint, GrammarCache, current_cancel
from hearthlm.llm.grammar import constraint_gbnf
from hearthlm.llm.llama_batch import BatchContext, Sampler
from hearthlm.llm.scoring import (
    SCORING_WINDOW,
    common_prefix,
    log_softmax,
    score_continuations,
    scored_token,
)

_END = object()  # a generation's last queue item
# A prefix another slot holds is copied rather than evaluated when it is at least this many
# tokens, or a 512th of a sequence's cells if that is more: llama.cpp copies a sequence's
# whole stream (BatchContext.copy), which for 8,192 cells costs about as long as evaluating
# 12 tokens on the 2-core machine of the benchmarks.
MIN_COPIED_PREFIX = 16


@dataclass(eq=False)
class _Sequence:
    """A request in the scheduler: a generation (``sampler`` set) or a scoring session."""

    prompt: list[int]
    sampler: Sampler | None = None
    cancel: threading.Event | None = None
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # tokens to evaluate, from ``pos`` on
    pos: int = 0
    all_rows: bool = False  # scoring: logits of every pending token, not only the last
    rows: list[Any] = field(default_factory=list)
    prefilled: bool = False  # generation: the prompt is in; ``pending`` is the sampled token
    request: tuple[list[int], int, bool] | None = None  # scoring: (tokens, start, all_rows)
    closed: bool = False  # the caller is gone
    top: int | None = None  # generation: each token comes with its log-probability and these

    @property
    def stopped(self) -> bool:
        return self.closed or (self.cancel is not None and self.cancel.is_set())


class Scheduler:
    """The scheduler thread and its context (see the module docstring)."""

    def __init__(
        self, context: BatchContext, stop_ids: frozenset[int], prefill_chunk: int = 128
    ) -> None:
        self.context = context
        self.stop_ids = stop_ids
        self.prefill_chunk = prefill_chunk
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._history: list[list[int]] = [[] for _ in range(context.n_seq)]  # tokens in cells
        self._used = [0.0] * context.n_seq  # when each slot was last released
        self._free = set(range(context.n_seq))
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.copied_tokens = 0  # prompt tokens copied from another slot, not evaluated
        self.steps = 0
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="hearth-batch", daemon=True)
        self._thread.start()

    # -- called from any thread ---------------------------------------------------------------

    def submit(self, sequence: _Sequence) -> None:
        if not self._running:
            raise GenerationError("the batched engine is closed; load the model again.")
        self._commands.put(sequence)

    def wake(self) -> None:
        self._commands.put(None)

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self._active),
            "waiting": len(self._waiting),
            "slots": self.context.n_seq,
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "copied_tokens": self.copied_tokens,
            "steps": self.steps,
        }

    def close(self) -> None:
        """Stop the thread: every request in flight ends, then the context is freed."""
        if self._running:
            self._running = False
            self._commands.put(None)
            self._thread.join(timeout=30)

    # -- the scheduler thread -----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._running:
                self._take_commands(block=not self._active and not self._waiting)
                self._drop_stopped()
                self._admit()
                self._start_evaluations()
                if self._active:
                    self._step()
        finally:
            for sequence in [*self._active, *self._waiting]:
                sequence.out.put(GenerationError("the batched engine was closed mid-request"))
                _close(sequence)
            self.context.close()

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return
        while True:
            if isinstance(command, _Sequence):
                self._waiting.append(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _drop_stopped(self) -> None:
        for sequence in [s for s in self._waiting if s.stopped]:
            self._waiting.remove(sequence)
            sequence.out.put(_cancelled(sequence))
            _close(sequence)
        for sequence in [s for s in self._active if s.stopped]:
            if not sequence.closed:  # cancelled: its caller is still reading
                sequence.out.put(_cancelled(sequence))
            self._release(sequence)

    def _admit(self) -> None:
        while self._waiting and self._free:
            sequence = self._waiting.popleft()
            slot, shared, donor = self._best_slot(sequence.prompt)
            self._free.discard(slot)
            sequence.slot = slot
            if sequence.sampler is not None:
                shared = min(shared, len(sequence.prompt) - 1)  # the last token gives logits
            if donor is not None:
                self.context.copy(donor, slot, shared)
                self.copied_tokens += shared
            else:
                self.context.forget(slot, shared)
            self._history[slot] = sequence.prompt[:shared]
            if sequence.sampler is not None:
                sequence.pending = sequence.prompt[shared:]
                sequence.pos = shared
                self.prompt_tokens += len(sequence.pending)
            else:
                sequence.out.put(shared)  # a scoring session starts with what is cached
            self._active.append(sequence)

    def _start_evaluations(self) -> None:
        """Scoring sessions that asked for an evaluation: drop their cells from its start."""
        for sequence in self._active:
            if sequence.request is None:
                continue
            tokens, start, all_rows = sequence.request
            sequence.request = None
            self.context.forget(sequence.slot, start)
            del self._history[sequence.slot][start:]
            sequence.pending, sequence.pos, sequence.all_rows = list(tokens), start, all_rows
            sequence.rows = []
            self.prompt_tokens += len(tokens)

    def _best_slot(self, prompt: list[int]) -> tuple[int, int, int | None]:
        """The free slot to run ``prompt`` in, how many of its first tokens will be in that
        slot's cells, and the slot to copy them from (None: they are the slot's own).

        A slot is worth reusing when its cells hold all of the prompt (the same prompt again),
        or when the prompt shares at least half of what they hold (a follow-up turn; an empty
        slot). Among those, the longest shared prefix wins. Otherwise the slot released longest
        ago is overwritten. A slot whose prompt merely starts with the same system prompt is
        not taken while an empty one is free: that would throw away another conversation's
        cached turns, which its follow-up would then evaluate again. The system prompt is
        copied instead, from whichever slot (running or free) holds the longest prefix of the
        prompt, when that is :data:`MIN_COPIED_PREFIX` tokens more than the chosen slot holds.
        """
        held = [common_prefix(history, prompt) for history in self._history]

        def rank(slot: int) -> tuple[bool, int, float]:
            n = held[slot]
            worth = n >= len(prompt) - 1 or 2 * n >= len(self._history[slot])
            return worth, n if worth else 0, -self._used[slot]

        best = max(self._free, key=rank)
        donor = max(range(len(held)), key=held.__getitem__)
        enough = max(MIN_COPIED_PREFIX, self.context.n_ctx_seq // 512)
        if held[donor] - held[best] >= enough:
            return best, held[donor], donor
        return best, held[best], None

    def _step(self) -> None:
        decoding = [s for s in self._active if s.prefilled and s.pending]
        takes = [(s, s.pending[:1]) for s in decoding]  # (sequence, its tokens in this batch)
        budget = self.context.n_batch - len(takes)
        if decoding:
            budget = min(budget, self.prefill_chunk)
        for sequence in self._active:  # prompt tokens: first come, first served
            if sequence.prefilled or not sequence.pending or budget <= 0:
                continue
            # A prompt's last token goes alone, in a later step, as on the in-process backend.
            head = (
                len(sequence.pending) - 1 if sequence.sampler and len(sequence.pending) > 1 else 0
            )
            take = sequence.pending[: min(budget, head) if head else budget]
            budget -= len(take)
            takes.append((sequence, take))
        # The batch lists its sequences in slot order: llama.cpp decodes it 1.5x faster than
        # the same tokens shuffled (benchmarks/bench_engine.py), and requests that come back to
        # a cached prompt land in their old slots in any order.
        items: list[tuple[int, int, int, bool]] = []
        readers: list[tuple[_Sequence, int, bool]] = []  # (sequence, batch index, last of it)
        for sequence, take in sorted(takes, key=lambda pair: pair[0].slot):
            finishing = len(take) == len(sequence.pending)
            for i, token in enumerate(take):
                last = finishing and i == len(take) - 1
                wants = sequence.all_rows or last
                items.append((token, sequence.pos + i, sequence.slot, wants))
                if wants:
                    readers.append((sequence, len(items) - 1, last))
        if not items:
            self._take_commands(block=True)  # scoring sessions between evaluations
            return
        try:
            self.context.decode(items)
        except GenerationError as exc:
            for sequence in {id(s): s for s, _, _ in readers}.values():
                sequence.out.put(exc)
                self._release(sequence)
            return
        self.steps += 1
        self._advance(items)
        for sequence, index, last in readers:
            self._read(sequence, index, last)

    def _advance(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Record what the batch put in each slot's cells."""
        counts: dict[int, int] = {}
        for _, _, slot, _ in items:
            counts[slot] = counts.get(slot, 0) + 1
        for sequence in self._active:
            n = counts.get(sequence.slot, 0)
            if n:
                self._history[sequence.slot].extend(sequence.pending[:n])
                sequence.pending = sequence.pending[n:]
                sequence.pos += n

    def _read(self, sequence: _Sequence, index: int, last: bool) -> None:
        if sequence.sampler is None:  # scoring: rows as asked
            sequence.rows.append(self.context.logits(index))
            if last:
                rows, sequence.rows = sequence.rows, []
                sequence.out.put(rows)
            return
        token = sequence.sampler.sample(self.context, index)
        sequence.prefilled = True
        if token in self.stop_ids or sequence.pos >= self.context.n_ctx_seq:
            sequence.out.put(_END)
            self._release(sequence)
            return
        self.generated_tokens += 1
        sequence.pending = [token]
        if sequence.top is None:
            sequence.out.put(token)
        else:
            sequence.out.put((token, scored_token(self.context.logits(index), token, sequence.top)))

    def _release(self, sequence: _Sequence) -> None:
        if sequence in self._active:
            self._active.remove(sequence)
            self._free.add(sequence.slot)
            self._used[sequence.slot] = time.monotonic()
        _close(sequence)


def _close(sequence: _Sequence) -> None:
    if sequence.sampler is not None:
        sequence.sampler.close()
        sequence.sampler = None


class BatchedEngine:
    """Generation and scoring on a :class:`Scheduler`, callable from many threads at once,
    which share one model and one context of ``config.parallel`` sequences of
    ``context_size`` tokens. The llama.cpp backend runs on it when ``llm.parallel`` is above 1
    (``hearth serve``'s engine)."""

    def __init__(
        self, model: Any, stop_ids: frozenset[int], config: LLMConfig, context_size: int
    ) -> None:
        context = BatchContext(
            model,
            n_seq=config.parallel,
            n_ctx_seq=context_size,
            n_batch=512,
            threads=config.threads or os.cpu_count() or 1,
            flash_attention=config.flash_attention is not False,  # unset: on
        )
        self.context_size = min(context_size, context.n_ctx_seq)
        self.scheduler = Scheduler(context, stop_ids, config.prefill_chunk)
        self._prototypes = GrammarCache()
        self._penalty_window = config.context_size or 8192

    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None = None,
        top: int | None = None,
    ) -> Iterator[Any]:
        """The generated token ids; with ``top``, each as ``(id, (logprob, top tokens))``,
        read from the logits it was sampled from."""
        self._check(prompt_ids)
        grammar = self._prototypes.get(constraint, self._grammar_sampler) if constraint else None
        context = self.scheduler.context
        sampler = Sampler(context.vocab, context.n_vocab, sampling, grammar, self._penalty_window)
        sequence = _Sequence(list(prompt_ids), sampler=sampler, cancel=current_cancel(), top=top)
        self.scheduler.submit(sequence)
        try:
            while True:
                item = sequence.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            sequence.closed = True
            self.scheduler.wake()

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool | int = False
    ) -> list[float]:
        import numpy as np

        self._check(context, *continuations)
        room = SCORING_WINDOW - max((len(c) for c in continuations), default=0)
        context = context[-room:]
        with self._scoring(context) as evaluate:
            end = len(context)
            first = log_softmax(np.asarray(evaluate(context, 0, False), dtype=np.float64))[0]

            def rows_after(path: list[int], kept: int) -> Any:
                rows = evaluate(path[kept:], end + kept, True)
                return log_softmax(np.asarray(rows, dtype=np.float64))

            return score_continuations(first, rows_after, continuations, best_only)

    def rows(self, ids: list[int]) -> Any:
        """The logits after each token of ``ids`` but the last: (len(ids) - 1, vocab).

        Raises:
            ContextWindowError: ``ids`` is longer than a sequence.
        """
        import numpy as np

        self._check(ids)
        if len(ids) > self.context_size:
            raise ContextWindowError(
                f"the text to score is {len(ids)} tokens; a sequence holds {self.context_size}."
            )
        with self._scoring(ids) as evaluate:
            return np.asarray(evaluate(ids[:-1], 0, True), dtype=np.float64)

    @contextlib.contextmanager
    def _scoring(self, context: list[int]) -> Iterator[Any]:
        """A slot held for one scoring call; yields ``evaluate(tokens, start, all_rows)``,
        which evaluates ``tokens`` from position ``start`` (dropping the slot's cells from
        there) and returns their logits rows: every row, or only the last."""
        session = _Sequence(list(context), cancel=current_cancel())
        self.scheduler.submit(session)
        cached = _take(session)  # how much of the context the slot's cells already hold

        def evaluate(tokens: list[int], start: int, all_rows: bool) -> Any:
            nonlocal cached
            skip = 0 if all_rows else max(0, min(cached - start, len(tokens) - 1))
            cached = 0
            session.request = (tokens[skip:], start + skip, all_rows)
            self.scheduler.wake()
            return _take(session)

        try:
            yield evaluate
        finally:
            session.closed = True
            self.scheduler.wake()

    def _check(self, *token_lists: list[int]) -> None:
        """Refuse token ids outside the vocabulary before they reach a batch: llama.cpp fails
        the whole batch on one, and with it every other request decoded in it."""
        size = self.scheduler.context.n_vocab
        for ids in token_lists:
            bad = [t for t in ids if not 0 <= t < size]
            if bad:
                raise GenerationError(f"token id {bad[0]} is not in the vocabulary [0, {size}).")

    def _grammar_sampler(self, constraint: Constraint) -> Sampler:
        return Sampler.grammar(self.scheduler.context.vocab, constraint_gbnf(constraint))

    def close(self) -> None:
        """Stop the scheduler; requests in flight end with an error."""
        self.scheduler.close()
        self._prototypes = GrammarCache()  # their samplers are freed with them


def _cancelled(sequence: _Sequence) -> Any:
    """What a cancelled sequence's caller reads last: a generation ends where it stopped, and
    a scoring session, which has no partial answer, raises (its caller would otherwise wait
    for rows that no slot will compute)."""
    return _END if sequence.sampler is not None else GenerationError("the request was cancelled")


def _take(sequence: _Sequence) -> Any:
    item = sequence.out.get()
    if isinstance(item, BaseException):
        raise item
    return item
