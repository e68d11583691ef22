"""The one module that calls llama.cpp's low-level C API (through llama-cpp-python's ctypes).

Batched decoding needs what the high-level ``Llama`` class does not offer: one context holding
several sequences, a batch that mixes their tokens, per-sequence memory removal, and a sampler
chain per request. Those names have changed twice upstream (``llama_kv_cache_seq_*`` became
``llama_kv_self_seq_*`` and then ``llama_memory_seq_*``), so every call lives here (and every
reach into a ``Llama``'s private model), :func:`check_bindings` names any function or context
setting that is missing when the engine starts, and ``pyproject.toml`` pins the range these
were written against. A missing struct field matters as much as a missing function: ctypes
accepts an assignment to a field a structure does not have, so flash attention or the
per-sequence cache would be dropped without a word.

ctypes releases the GIL for the length of each foreign call, so ``llama_decode`` on the
scheduler thread leaves the rest of the process (an HTTP event loop, say) free to run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from hearthlm.config import SamplingConfig
from hearthlm.errors import ConfigError, GenerationError, ModelLoadError

# Every symbol this module calls: checked once, before a context is made.
REQUIRED = (
    "llama_context_default_params",
    "llama_init_from_model",
    "llama_free",
    "llama_n_ctx_seq",
    "llama_get_memory",
    "llama_memory_seq_rm",
    "llama_memory_seq_cp",
    "llama_memory_clear",
    "llama_batch_init",
    "llama_batch_free",
    "llama_decode",
    "llama_get_logits_ith",
    "llama_get_logits",
    "llama_model_get_vocab",
    "llama_model_n_ctx_train",
    "llama_vocab_n_tokens",
    "llama_vocab_is_eog",
    "llama_sampler_chain_default_params",
    "llama_sampler_chain_init",
    "llama_sampler_chain_add",
    "llama_sampler_init_penalties",
    "llama_sampler_init_grammar",
    "llama_sampler_init_greedy",
    "llama_sampler_init_top_k",
    "llama_sampler_init_typical",
    "llama_sampler_init_top_p",
    "llama_sampler_init_min_p",
    "llama_sampler_init_temp",
    "llama_sampler_init_dist",
    "llama_sampler_clone",
    "llama_sampler_sample",
    "llama_sampler_free",
)
# Every field of llama_context_params that BatchContext sets.
CONTEXT_FIELDS = (
    "n_ctx",
    "n_batch",
    "n_ubatch",
    "n_seq_max",
    "n_threads",
    "n_threads_batch",
    "kv_unified",
    "flash_attn_type",
    "no_perf",
)
SUPPORTED = "llama-cpp-python >=0.3.17,<0.4"
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a seed


def _lib() -> Any:
    import llama_cpp

    return llama_cpp


def check_bindings() -> None:
    """Raise unless llama-cpp-python has every low-level function batched decoding calls.

    Raises:
        ModelLoadError: names the missing functions, the installed version and the range
            hearthlm supports.
    """
    lib = _lib()
    missing = [name for name in REQUIRED if not hasattr(lib, name)]
    params = getattr(lib, "llama_context_params", None)
    fields = {name for name, *_ in getattr(params, "_fields_", ())}
    missing += [f"llama_context_params.{name}" for name in CONTEXT_FIELDS if name not in fields]
    if missing:
        raise ModelLoadError(
            f"llama-cpp-python {getattr(lib, '__version__', '?')} lacks {', '.join(missing)}, "
            f"which batched decoding needs. Install {SUPPORTED}, or set llm.parallel = 1."
        )


def model_of(llm: Any) -> Any:
    """The ``llama_model`` pointer inside a loaded ``llama_cpp.Llama``."""
    return llm._model.model


def trained_context(llm: Any) -> int:
    """The context length a loaded ``llama_cpp.Llama``'s model was trained with."""
    return int(_lib().llama_model_n_ctx_train(model_of(llm)))


def last_logits(llm: Any) -> np.ndarray:
    """A copy of the logits a loaded ``llama_cpp.Llama`` computed last (its last evaluated
    position, which it samples from): (n_vocab,)."""
    pointer = _lib().llama_get_logits(llm._ctx.ctx)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def end_of_generation_ids(llm: Any) -> frozenset[int]:
    """The token ids that end a generation (end of turn, end of text) in a loaded
    ``llama_cpp.Llama``'s vocabulary."""
    lib = _lib()
    vocab = lib.llama_model_get_vocab(model_of(llm))
    return frozenset(t for t in range(llm.n_vocab()) if lib.llama_vocab_is_eog(vocab, t))


class BatchContext:
    """A llama.cpp context of ``n_seq`` sequences of ``n_ctx_seq`` tokens each, over a loaded
    model, with one reusable batch of ``n_batch`` tokens.

    Each sequence has its own cells (``kv_unified`` off: requests rarely share long prefixes,
    and no sequence can starve another of memory). Only the scheduler thread may call it.
    """

    def __init__(
        self,
        model: Any,
        *,
        n_seq: int,
        n_ctx_seq: int,
        n_batch: int,
        threads: int,
        flash_attention: bool,
    ) -> None:
        check_bindings()
        lib = _lib()
        params = lib.llama_context_default_params()
        params.n_ctx = n_seq * n_ctx_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        params.flash_attn_type = 1 if flash_attention else 0  # as Llama(flash_attn=...) sets it
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(model, params)
        if not self._ctx:
            raise ModelLoadError(
                f"llama.cpp could not make a context of {n_seq} x {n_ctx_seq} tokens; lower "
                "llm.parallel or llm.context_size."
            )
        self.n_seq = n_seq
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(self._ctx))
        self.n_batch = n_batch
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        vocab = lib.llama_model_get_vocab(model)
        self.vocab = vocab
        self.n_vocab = int(lib.llama_vocab_n_tokens(vocab))

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Evaluate ``(token, position, sequence, wants_logits)`` items in one ``llama_decode``.

        Raises:
            GenerationError: llama.cpp refused the batch (no free cells, or a fault).
        """
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(items)
        code = _lib().llama_decode(self._ctx, batch)
        if code != 0:
            raise GenerationError(
                f"llama_decode returned {code} for a batch of {len(items)} tokens "
                "(1: no free memory cells; negative: a fault). Lower llm.parallel or shorten "
                "the prompts."
            )

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits of batch item ``index`` (which asked for them): (n_vocab,)."""
        pointer = _lib().llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def forget(self, seq: int, start: int = 0) -> None:
        """Drop sequence ``seq``'s cells from position ``start`` on."""
        _lib().llama_memory_seq_rm(self._memory, seq, start, -1)

    def copy(self, source: int, target: int, length: int) -> None:
        """Give sequence ``target`` the cells of ``source``'s first ``length`` positions, in
        place of its own. Each sequence has a stream of its own, and llama.cpp copies across
        streams whole, on the next ``decode``: the copy costs about as much however short the
        prefix (on the 2-core machine of the benchmarks, as long as evaluating 12 tokens, for
        streams of 8,192 cells)."""
        lib = _lib()
        lib.llama_memory_seq_rm(self._memory, target, 0, -1)
        lib.llama_memory_seq_cp(self._memory, source, target, 0, -1)
        lib.llama_memory_seq_rm(self._memory, target, length, -1)

    def close(self) -> None:
        lib = _lib()
        if self._ctx:
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            self._ctx = None

    @property
    def context(self) -> Any:
        return self._ctx


class Sampler:
    """One request's sampler chain, built as ``Llama`` builds its own so that a greedy reply is
    the in-process backend's reply: penalties, the grammar, then greedy, or top-k, typical,
    top-p, min-p, temperature and a seeded draw."""

    _chain: Any

    def __init__(
        self,
        vocab: Any,
        n_vocab: int,
        sampling: SamplingConfig,
        grammar: Sampler | None = None,
        last_n: int = 64,
    ) -> None:
        lib = _lib()
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        penalties = lib.llama_sampler_init_penalties(
            n_vocab, last_n, sampling.repetition_penalty, 0.0, 0.0
        )
        add(chain, penalties)
        if grammar is not None:
            add(chain, lib.llama_sampler_clone(grammar._chain))
        if sampling.temperature == 0:
            add(chain, lib.llama_sampler_init_greedy())
        else:
            add(chain, lib.llama_sampler_init_top_k(sampling.top_k))
            add(chain, lib.llama_sampler_init_typical(1.0, 1))
            add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(0.0, 1))
            add(chain, lib.llama_sampler_init_temp(sampling.temperature))
            seed = RANDOM_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
            add(chain, lib.llama_sampler_init_dist(seed))
        self._chain = chain

    @classmethod
    def grammar(cls, vocab: Any, gbnf: str) -> Sampler:
        """A grammar sampler alone, parsed once and cloned into each request's chain.

        Raises:
            ConfigError: llama.cpp cannot parse ``gbnf``.
        """
        pointer = _lib().llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not pointer:
            raise ConfigError(f"llama.cpp could not parse this grammar: {gbnf[:300]!r}")
        sampler = cls.__new__(cls)
        sampler._chain = pointer
        return sampler

    def sample(self, context: BatchContext, index: int) -> int:
        """Sample (and accept) the next token from batch item ``index``'s logits."""
        return int(_lib().llama_sampler_sample(self._chain, context.context, index))

    def close(self) -> None:
        if self._chain:
            _lib().llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:  # a grammar prototype evicted from its cache
        with contextlib.suppress(AttributeError, TypeError, ImportError):  # at teardown
            self.close()


__all__ = [
    "BatchContext",
    "Sampler",
    "check_bindings",
    "end_of_generation_ids",
    "last_logits",
    "model_of",
    "trained_context",
]
